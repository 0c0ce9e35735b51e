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
