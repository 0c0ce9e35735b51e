"""Errors a user can cause end as one clean message: exit code 2, no traceback, the file,
row or key named and what to do, and nothing created that should not be.

Each case runs the real ``workbench`` command (in-process through typer's runner; one
through a subprocess, to see the real stderr) on real files damaged the way they get
damaged: a stray Latin-1 byte, a truncated zip or SQLite file, a cut-off safetensors file.
"""

from __future__ import annotations

import csv
import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.conftest import mmsa_split
from workbench.cli import app
from workbench.data.synth import SynthSpec, write

runner = CliRunner()


def fails(*args: str) -> str:
    """Run ``workbench ARGS``; assert one clean error (exit 2, no traceback); its output."""
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert "Traceback" not in r.output
    assert r.output.startswith("error: ") or "\nerror: " in r.output, r.output
    return " ".join(r.output.split())  # rich may wrap; compare words


@pytest.fixture
def synth(tmp_path):
    manifest = write(tmp_path / "synth", SynthSpec(n=12, seed=1))
    return manifest, tmp_path / "synth" / "features.npz"


# ------------------------------------------------------------------ data files


def test_a_manifest_with_a_non_utf8_byte_names_its_line_and_data_encoding(synth, tmp_path):
    manifest, _ = synth
    lines = manifest.read_bytes().split(b"\n")
    lines[4] = lines[4].replace(b",", b"\xe9,", 1)  # one Latin-1 'é' in line 5
    manifest.write_bytes(b"\n".join(lines))
    out = fails("data", "validate", manifest)
    assert f"{manifest}:5:" in out and "b'\\xe9'" in out and "not valid utf-8" in out
    assert "data.encoding=latin-1" in out
    r = runner.invoke(app, ["data", "validate", str(manifest), "encoding=latin-1"])
    assert r.exit_code == 0, r.output  # the option the message names reads the file
    rows = [json.dumps(r, ensure_ascii=False) for r in csv.DictReader(manifest.open(encoding="latin-1"))]
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_bytes("\n".join(rows).encode("latin-1"))
    assert f"{jsonl}:4:" in fails("data", "validate", jsonl)
    assert "data.encoding='utf-9'" in fails("data", "validate", jsonl, "encoding=utf-9")


@pytest.mark.parametrize("damage", ["truncated", "bad_crc", "not_a_zip"])
def test_a_damaged_npz_feature_file_is_named(synth, damage):
    manifest, features = synth
    raw = bytearray(features.read_bytes())
    if damage == "truncated":
        raw = raw[: len(raw) // 2]
    elif damage == "bad_crc":
        raw[120:180] = b"\0" * 60
    else:
        raw = bytearray(b"id,audio\n1,2\n")
    features.write_bytes(bytes(raw))
    out = fails("data", "validate", manifest, f"features={features}")
    assert f"{features}: not a readable .npz feature file" in out
    assert "numpy.savez" in out and "data.features" in out


def _pickle(tmp_path, mutate) -> str:
    data = {s: mmsa_split(4, seed=i, prefix=s[:2]) for i, s in enumerate(("train", "valid", "test"))}
    mutate(data)
    path = tmp_path / "d.pkl"
    path.write_bytes(pickle.dumps(data, protocol=4))
    return str(path)


def test_mmsa_labels_that_are_strings_name_the_entry_and_the_fix(tmp_path):
    def scores(d):
        d["valid"]["regression_labels"] = np.array(["0.5", "1", "positive", "-2"])

    out = fails("data", "validate", _pickle(tmp_path, scores))
    assert "[valid]: regression_labels must be numbers" in out
    assert "entry 2 (id 'va0$_$2') is 'positive'" in out

    def classes(d):
        for part in d.values():
            del part["regression_labels"]
            part["classification_labels"] = np.array(["neg", "pos", "pos", "neg"])

    pkl = _pickle(tmp_path, classes)
    cls = ["task=classification", "metric_set=classification"]
    out = fails("data", "validate", pkl, *cls, "class_names=[negative,positive]")
    assert "classification_labels must be numbers" in out and "data.class_names" in out
    # class names the config lists are read as their index
    r = runner.invoke(app, ["data", "validate", pkl, *cls, "class_names=[neg,pos]"])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("mod", ["audio", "vision"])
def test_nonfinite_features_name_their_modality_and_data_nonfinite_zero(tmp_path, mod):
    def nan(d):
        d["train"][mod][1, 0, 0] = np.nan

    pkl = _pickle(tmp_path, nan)
    out = fails("data", "validate", pkl)
    assert f"{mod} features contain NaN or inf" in out and "data.nonfinite=zero" in out
    other = {"audio": "vision", "vision": "audio"}[mod]
    assert other not in out.split("nonfinite:")[1]
    assert runner.invoke(app, ["data", "validate", pkl, "nonfinite=zero"]).exit_code == 0


# ------------------------------------------------------------------ config keys


def _teacher_yaml(tmp_path, base_url: str = "http://127.0.0.1:9/v1", **kw):
    import yaml

    path = tmp_path / "fault_teacher.yaml"
    path.write_text(yaml.safe_dump({"backend": "openai_compat", "model": "fake", "api":
                                    "completions", "base_url": base_url, "max_retries": 0, **kw}))
    return path


def test_an_unknown_override_key_is_blamed_on_the_override_not_the_file(synth, tmp_path):
    import yaml

    manifest, features = synth
    teacher = _teacher_yaml(tmp_path)
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(manifest), "features": str(features)}))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"data": str(data), "teacher": str(teacher),
                                      "cache": {"dir": str(tmp_path / "c")}}))
    runs = {
        "retry": ("cache", "retry", tmp_path / "c", "--teacher", teacher),
        "run": ("cache", "run", "--config", recipe),
        "distill": ("distill", "--config", "configs/distill/synth_demo.yaml"),
    }
    for name, args in runs.items():
        key = "train.epoch" if name == "distill" else "teacher.timeout"
        out = fails(*args, f"{key}=3")
        assert f"command-line override '{key}=3': unknown key" in out, (name, out)
        assert "fault_teacher.yaml" not in out and "recipe.yaml" not in out, (name, out)
        assert "did you mean" in out, (name, out)
    # a bad value an override gave is the override's too; a key the file gave is the file's
    out = fails(*runs["retry"], "teacher.temperature=-1")
    assert "command-line override 'teacher.temperature=-1'" in out
    out = fails("data", "validate", data, "data.modalites=[text]")
    assert "command-line override 'data.modalites=[text]'" in out and "did you mean 'modalities'" in out
    data.write_text(yaml.safe_dump({"path": str(manifest), "modalites": ["text"]}))
    out = fails("data", "validate", data, "name=x")
    assert f"{data}: unknown key 'modalites'" in out and "command-line" not in out
    assert not (tmp_path / "c").exists()


# ------------------------------------------------------------------ cache files


@pytest.fixture(scope="module")
def good_cache(tmp_path_factory):
    """A real cache (the caching job against the fake server), its data and teacher YAML."""
    import yaml

    from tests.support.fake_openai import FakeOpenAI

    tmp = tmp_path_factory.mktemp("good_cache")
    manifest = write(tmp / "synth", SynthSpec(n=12, seed=2))
    data = tmp / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(manifest),
                                    "features": str(tmp / "synth" / "features.npz")}))
    with FakeOpenAI() as server:
        teacher = _teacher_yaml(tmp, server.base_url, api_key_env="WB_TEST_KEY")
        r = runner.invoke(app, ["cache", "run", "--teacher", str(teacher), "--data", str(data),
                                "--cache", str(tmp / "cache"), "--template",
                                "sentiment_polarity"], env={"WB_TEST_KEY": "k"})
    assert r.exit_code == 0, r.output
    return {"dir": tmp / "cache", "data": data, "teacher": teacher}


def _damage(src, dst, how: str):
    """Copy the cache ``src`` to ``dst`` with its database damaged ``how``."""
    import shutil
    import sqlite3

    shutil.copytree(src, dst)
    db = dst / "cache.sqlite"
    raw = bytearray(db.read_bytes())
    if how == "not_a_database":
        raw = bytearray(np.random.default_rng(0).bytes(len(raw)))
    elif how == "truncated":
        raw = raw[: len(raw) // 3]
    else:  # "malformed": the outputs table's root page overwritten, the schema intact
        with sqlite3.connect(db) as c:
            root = c.execute("SELECT rootpage FROM sqlite_master WHERE name='outputs'").fetchone()[0]
            size = c.execute("PRAGMA page_size").fetchone()[0]
        c.close()
        raw[(root - 1) * size + 8: root * size] = np.random.default_rng(1).bytes(size - 8)
    db.write_bytes(bytes(raw))
    return dst


@pytest.mark.parametrize("how", ["not_a_database", "truncated", "malformed"])
def test_a_damaged_cache_sqlite_is_named_by_every_cache_command(good_cache, tmp_path, how):
    bad = _damage(good_cache["dir"], tmp_path / "bad", how)
    db = bad / "cache.sqlite"
    def files():  # SQLite's own -wal / -shm beside the database aside
        return sorted(p.name for p in bad.rglob("*") if not p.name.endswith(("-wal", "-shm")))

    before = files()
    run = ("cache", "run", "--teacher", good_cache["teacher"], "--data", good_cache["data"],
           "--cache", bad, "--template", "sentiment_polarity")
    commands = {
        "status": ("cache", "status", bad),
        "export": ("cache", "export", bad, "--out", tmp_path / "out.parquet"),
        "retry": ("cache", "retry", bad, "--teacher", good_cache["teacher"]),
        "merge from": ("cache", "merge", tmp_path / "merged", bad),
        "merge into": ("cache", "merge", bad, good_cache["dir"]),
        "run": run,
    }
    for name, args in commands.items():
        r = runner.invoke(app, [str(a) for a in args], env={"WB_TEST_KEY": "k"})
        out = " ".join(r.output.split())
        assert r.exit_code == 2 and "Traceback" not in out, (name, r.output, r.exception)
        assert f"error: {db}:" in out and "damaged or is not a workbench cache" in out, (name, out)
        assert ".recover" in out and "move it aside" in out, (name, out)
    assert not (tmp_path / "out.parquet").exists() and not (tmp_path / "merged").exists()
    if how != "malformed":  # a file that does not open: the job writes nothing beside it
        assert files() == before


def test_a_damaged_cache_through_the_real_command_line(good_cache, tmp_path):
    bad = _damage(good_cache["dir"], tmp_path / "bad", "not_a_database")
    r = subprocess.run([sys.executable, "-m", "workbench.cli", "cache", "status", str(bad)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr + r.stdout
    assert r.stderr.startswith(f"error: {bad / 'cache.sqlite'}: file is not a database")


def test_cache_pointing_at_a_file_is_named_and_left_alone(good_cache, tmp_path):
    afile = tmp_path / "cache"
    afile.write_text("not a directory\n")
    commands = [
        ("cache", "run", "--teacher", good_cache["teacher"], "--data", good_cache["data"],
         "--cache", afile, "--template", "sentiment_polarity"),
        ("cache", "status", afile),
        ("cache", "export", afile, "--out", tmp_path / "o.parquet"),
        ("cache", "merge", afile, good_cache["dir"]),
        ("cache", "merge", tmp_path / "m", afile),
    ]
    for args in commands:
        out = fails(*args)
        assert f"{afile} is a file, not a cache directory" in out, (args, out)
    assert afile.read_text() == "not a directory\n" and not (tmp_path / "m").exists()


def test_an_unset_api_key_fails_before_the_cache_is_created(good_cache, tmp_path, monkeypatch):
    monkeypatch.delenv("WB_TEST_KEY", raising=False)
    args = ("cache", "run", "--teacher", good_cache["teacher"], "--data", good_cache["data"],
            "--template", "sentiment_polarity", "--cache")
    out = fails(*args, tmp_path / "new" / "cache")
    assert "teacher.api_key_env='WB_TEST_KEY'" in out and "export WB_TEST_KEY=" in out
    assert not (tmp_path / "new").exists()
    # a cache that holds every answer needs no key: nothing is sent
    r = runner.invoke(app, [str(a) for a in (*args, good_cache["dir"])])
    assert r.exit_code == 0 and "no teacher calls" in r.output, r.output


# ------------------------------------------------------------------ checkpoints


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from tests.support.checkpoints import tiny_checkpoints

    return tiny_checkpoints(tmp_path_factory)["a"]  # a LoRA student


@pytest.mark.parametrize("part", ["model.safetensors", "adapter/adapter_model.safetensors"])
def test_a_truncated_checkpoint_file_is_named_by_eval_and_predict(checkpoint, tmp_path, part):
    import shutil

    ck = tmp_path / "checkpoint-best"
    shutil.copytree(checkpoint, ck)
    weights = ck / part
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    for args in (("eval", ck, "--out", tmp_path / "eval"),
                 ("predict", ck, "--out", tmp_path / "p.csv")):
        out = fails(*args, "--device", "cpu")
        assert f"{weights} (" in out and "is not a readable safetensors file" in out, out
        assert "truncated or damaged" in out and "copy it again" in out
    assert not (tmp_path / "eval").exists() and not (tmp_path / "p.csv").exists()
