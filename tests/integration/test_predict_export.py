"""`workbench predict` and `workbench export` through typer's CliRunner on the tiny trained
checkpoints of tests/support/checkpoints.py (MiniLM + LoRA), the export loaded in a
subprocess where PEFT cannot be imported, ``--int8`` / ``--onnx`` exports served by
``workbench predict`` through PyTorch and ONNX Runtime, and bench/student_speed.py."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from students.checkpoint import load_checkpoint
from students.collate import Collator
from students.export import load_exported
from students.inference import predict
from students.robustness import drop_modalities
from tests.support.checkpoints import tiny_checkpoints
from tests.support.distill import tiny_data
from workbench.cli import app
from workbench.config import DataConfig, load_config
from workbench.data import load_dataset
from workbench.data.schema import Sample
from workbench.data.synth import SynthSpec, write

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]
runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    return tiny_checkpoints(tmp_path_factory)


@pytest.fixture(scope="module")
def dataset(ck):
    return load_dataset(load_config(DataConfig, ck["data_yaml"]))


@pytest.fixture(scope="module")
def model_a(ck):
    model, _, _ = load_checkpoint(ck["a"])
    return model


def run(*args: str):
    return runner.invoke(app, list(args))


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- predict


def test_predict_every_split_to_csv(ck, dataset, model_a, tmp_path):
    out = tmp_path / "preds.csv"
    r = run("predict", str(ck["a"].parent), "--split", "all", "--out", str(out),
            "--device", "cpu", "--batch-size", "5", "--threads", "1")
    assert r.exit_code == 0, r.output
    assert "wrote 48 predictions" in r.output
    rows = _rows(out)
    assert list(rows[0]) == ["id", "split", "score", "polarity", "class7", "text_avail",
                             "audio_avail", "vision_avail", "label"]
    samples = [s for sp in dataset.splits for s in dataset.samples(sp)]
    assert [(r["id"], r["split"]) for r in rows] == [(s.id, s.split) for s in samples]
    # each score is the model's prediction for that sample on its own (no batch effects,
    # rows not shuffled by predict's length sorting)
    collate = Collator.for_model(model_a)
    with torch.no_grad():
        ref = torch.cat([model_a(collate([s])).pred for s in samples]).numpy()
    scores = np.array([float(r["score"]) for r in rows])
    np.testing.assert_allclose(scores, ref, rtol=1e-4, atol=1e-5)
    for row, score in zip(rows, scores, strict=True):
        assert int(row["class7"]) == int(np.round(np.clip(score, -3, 3)))
        assert row["polarity"] == ["negative", "neutral", "positive"][
            int(np.round(np.clip(score, -1, 1))) + 1]
    audio = [int(r["audio_avail"]) for r in rows]
    assert audio == [int(s.audio is not None) for s in samples]
    assert 0 < sum(audio) < len(rows)  # the synthetic data leaves some audio out
    assert [int(r["vision_avail"]) for r in rows] == [int(s.vision is not None) for s in samples]
    assert all(r["text_avail"] == "1" for r in rows)
    assert [float(r["label"]) for r in rows] == pytest.approx([s.label for s in samples])


def test_predict_jsonl_without_a_modality(ck, dataset, model_a, tmp_path):
    out = tmp_path / "p.jsonl"
    r = run("predict", str(ck["a"]), "--out", str(out), "--device", "cpu",
            "--missing-modality", "audio")
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    samples = dataset.samples("test")
    assert [r["id"] for r in rows] == [s.id for s in samples]
    assert {r["split"] for r in rows} == {"test"} and {r["audio_avail"] for r in rows} == {0}
    assert all(isinstance(r["score"], float) and isinstance(r["class7"], int) for r in rows)
    got = np.array([r["score"] for r in rows])
    dropped = predict(model_a, samples, 8, masking=drop_modalities(("audio",)))
    complete = predict(model_a, samples, 8)
    np.testing.assert_allclose(got, dropped, rtol=1e-4, atol=1e-5)
    has_audio = np.array([s.audio is not None for s in samples])
    assert has_audio.any() and np.abs(got - complete)[has_audio].max() > 1e-5


def test_predict_errors_are_clear(ck, tmp_path):
    out = str(tmp_path / "p.csv")
    r = run("predict", str(tmp_path / "missing"), "--out", out)
    assert r.exit_code == 2 and "does not exist" in r.output
    r = run("predict", str(ck["a"]), "--out", str(tmp_path / "p.parquet"))
    assert r.exit_code == 2 and ".csv or .jsonl" in r.output
    r = run("predict", str(ck["a"]), "--out", out, "--split", "dev", "--device", "cpu")
    assert r.exit_code == 2 and "split 'dev' is not in dataset" in r.output
    assert "'test': 3" in r.output
    r = run("predict", str(ck["runs"]), "--out", out)
    assert r.exit_code == 2 and "holds 2 checkpoints" in r.output
    # another dataset of the same kind: refused, unless --new-data
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(tiny_data(tmp_path / "other", n=30, seed=5)))
    r = run("predict", str(ck["a"]), "--data", str(other), "--out", out, "--device", "cpu")
    assert r.exit_code == 2 and "is not the dataset" in r.output and "--new-data" in r.output
    r = run("predict", str(ck["a"]), "--data", str(other), "--out", out, "--device", "cpu",
            "--new-data", "--split", "all")
    assert r.exit_code == 0, r.output
    assert len(_rows(Path(out))) == 30
    # other features: refused even with --new-data
    manifest = write(tmp_path / "wide", SynthSpec(n=20, audio_dim=4, vision_dim=5))
    wide = {"name": "synth", "path": str(manifest),
            "features": str(tmp_path / "wide" / "features.npz"),
            "feature_keys": {"audio": "audio", "vision": "vision"},
            "modalities": ["text", "audio", "vision"]}
    (tmp_path / "wide.yaml").write_text(yaml.safe_dump(wide))
    r = run("predict", str(ck["a"]), "--data", str(tmp_path / "wide.yaml"), "--out", out,
            "--new-data")
    assert r.exit_code == 2 and "audio vector d=4 (checkpoint: vector d=6)" in r.output


def test_predict_and_validate_unlabelled_rows(ck, tmp_path):
    """New utterances without labels (an empty label column, or none at all): validated
    with --unlabeled, predicted with --new-data; the label column is empty."""
    fields = tiny_data(tmp_path / "new", n=30, seed=6)
    manifest = Path(fields["path"])
    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows[::2]:
        r["label"] = ""
    with manifest.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    new = tmp_path / "new.yaml"
    new.write_text(yaml.safe_dump(fields))
    r = run("data", "validate", str(new))
    assert r.exit_code == 2 and "label_missing" in r.output and "--unlabeled" in r.output
    r = run("data", "validate", str(new), "--unlabeled")
    assert r.exit_code == 0, r.output
    out = tmp_path / "p.csv"
    r = run("predict", str(ck["a"]), "--data", str(new), "--out", str(out), "--device", "cpu",
            "--new-data", "--split", "all")
    assert r.exit_code == 0, r.output
    got = _rows(out)
    assert len(got) == 30 and list(got[0])[-1] == "label"
    empty = {r["id"]: r["label"] == "" for r in rows}
    assert {g["id"]: g["label"] == "" for g in got} == empty and any(empty.values())
    # no label column at all
    no_col = {**fields, "label_column": "absent"}
    (tmp_path / "nocol.yaml").write_text(yaml.safe_dump(no_col))
    r = run("predict", str(ck["a"]), "--data", str(tmp_path / "nocol.yaml"), "--out", str(out),
            "--device", "cpu", "--new-data", "--split", "all")
    assert r.exit_code == 0, r.output
    assert {g["label"] for g in _rows(out)} == {""} and all(g["score"] for g in _rows(out))


# ---------------------------------------------------------------------------- export


@pytest.fixture(scope="module")
def boosted(ck, tmp_path_factory):
    """A copy of checkpoint ``a`` whose LoRA B matrices are scaled up, so that the adapter
    changes the predictions clearly (one epoch at a small rate barely moves them)."""
    root = tmp_path_factory.mktemp("boosted")
    copy = root / "checkpoint-best"
    shutil.copytree(ck["a"], copy)
    path = copy / "adapter" / "adapter_model.safetensors"
    weights = load_file(str(path))
    g = torch.Generator().manual_seed(0)
    weights = {k: torch.randn(v.shape, generator=g) * 0.2 if "lora_B" in k else v
               for k, v in weights.items()}
    assert any("lora_B" in k for k in weights)
    save_file(weights, str(path), metadata={"format": "pt"})
    return copy


@pytest.fixture(scope="module")
def exported(boosted, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "student"
    r = run("export", str(boosted), "--out", str(out))
    assert r.exit_code == 0, r.output
    assert "LoRA adapter merged" in r.output
    return out


def _probe(dataset) -> list[Sample]:
    """Test samples plus one without audio and vision and one with empty text."""
    base = dataset.samples("test")
    return [*base, Sample(id="bare", text="", split="test"),
            Sample(id="no-audio", text="it was fine", split="test", vision=base[0].vision)]


def test_exported_model_equals_the_checkpoint(boosted, exported, dataset, tmp_path):
    for name in ("export.json", "model.safetensors", "text_encoder/config.json",
                 "text_encoder/model.safetensors", "text_encoder/tokenizer.json"):
        assert (exported / name).is_file(), name
    assert not [k for k in load_file(str(exported / "text_encoder" / "model.safetensors"))
                if "lora" in k]
    model, _, _ = load_checkpoint(boosted)
    merged = load_exported(exported)
    samples = _probe(dataset)
    batch = Collator.for_model(model)(samples)
    assert batch["audio_avail"][-2:].tolist() == [0.0, 0.0]
    with torch.no_grad():
        want = model(batch)
        got = merged(Collator.for_model(merged)(samples))
        with model.text.model.disable_adapter():
            base = model(batch)
    torch.testing.assert_close(got.pred, want.pred)
    torch.testing.assert_close(got.bin_logits, want.bin_logits)
    torch.testing.assert_close(got.fused, want.fused)
    assert (base.pred - want.pred).abs().max() > 1e-3  # without the merge this would fail
    spec = json.loads((exported / "export.json").read_text())
    assert spec["source"]["checkpoint"] == str(boosted.resolve())
    assert spec["text_encoder"]["lora"]["r"] == 2
    r = run("export", str(boosted), "--out", str(exported))
    assert r.exit_code == 2 and "not empty" in r.output


NO_PEFT = """
import sys
sys.modules["peft"] = None  # any `import peft` now raises ImportError
import numpy as np, torch
torch.set_num_threads(1)
from students.collate import Collator
from students.export import load_exported
from workbench.config import DataConfig, load_config
from workbench.data import load_dataset
model = load_exported(sys.argv[1])
samples = load_dataset(load_config(DataConfig, sys.argv[2])).samples("test")
with torch.no_grad():
    pred = model(Collator.for_model(model)(samples)).pred
loaded = sorted(k for k, v in sys.modules.items() if k.startswith("peft") and v is not None)
assert not loaded, loaded
np.save(sys.argv[3], pred.numpy())
"""


def test_export_loads_without_peft(boosted, exported, ck, dataset, tmp_path):
    out = tmp_path / "pred.npy"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", NO_PEFT, str(exported), str(ck["data_yaml"]),
                           str(out)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model, _, _ = load_checkpoint(boosted)
    want = predict(model, dataset.samples("test"), 64)
    np.testing.assert_allclose(np.load(out), want, rtol=1e-5, atol=1e-6)


def test_int8_and_onnx_exports_serve_through_predict(boosted, ck, dataset, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (the onnx extra)")
    pytest.importorskip("onnxscript", reason="onnxscript is not installed (the onnx extra)")
    from students.serving import OrtStudent

    out = tmp_path / "exp"
    r = run("export", str(boosted), "--out", str(out), "--onnx", "--int8")
    assert r.exit_code == 0, r.output
    assert "int8 in PyTorch on valid" in r.output and "int8 in ONNX Runtime" in r.output
    spec = json.loads((out / "export.json").read_text())
    section = spec["int8"]
    assert section["layers"] > 20 and section["onnx_file"] == "model.int8.onnx"
    n_valid = len(dataset.samples("valid"))
    for acc in (section["accuracy"], section["onnx_accuracy"]):
        assert acc["split"] == "valid" and acc["samples"] == n_valid
        assert set(acc["delta"]) == set(acc["float32"]) and np.isfinite(acc["delta"]["mae"])
        assert acc["delta"]["mae"] == pytest.approx(acc["int8"]["mae"] - acc["float32"]["mae"])
    model, _, _ = load_checkpoint(boosted)
    samples = _probe(dataset)
    want = predict(model, samples, 4)
    # ONNX Runtime, float32: the checkpoint's predictions within 1e-4
    np.testing.assert_allclose(predict(OrtStudent(out), samples, 4), want, atol=1e-4, rtol=0)
    # int8 in both runtimes: quantized (not the float model), still near it
    int8_pt = predict(load_exported(out), samples, 4)
    assert 0 < np.abs(int8_pt - want).max() < 0.5
    assert not isinstance(load_exported(out).text_proj[0], torch.nn.Linear)
    # workbench predict serves the export: int8 ONNX as exported, and the CSV says so
    csv_out = tmp_path / "ort.csv"
    r = run("predict", str(out), "--runtime", "onnx", "--out", str(csv_out))
    assert r.exit_code == 0, r.output
    assert "onnxruntime" in r.output
    rows = _rows(csv_out)
    test = dataset.samples("test")
    assert [row["id"] for row in rows] == [s.id for s in test]
    ort8 = predict(OrtStudent(out, int8=True), test, 64)
    np.testing.assert_allclose([float(row["score"]) for row in rows], ort8, atol=1e-6)
    r = run("predict", str(ck["a"]), "--runtime", "onnx", "--out", str(csv_out))
    assert r.exit_code == 2 and "export it first" in r.output


def test_student_speed_bench_times_every_path(ck, capsys, monkeypatch):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (the onnx extra)")
    pytest.importorskip("onnxscript", reason="onnxscript is not installed (the onnx extra)")
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import student_speed

    res = student_speed.main(["--checkpoint", str(ck["a"]), "--n", "8", "--runs", "3",
                              "--threads", "1", "--batch-size", "4"])
    out = capsys.readouterr().out
    paths = {"adapter", "merged", "int8", "ort", "ort-int8", "bare-pt", "bare-ort", "bare-ort-split"}
    token_paths = {"merged-tok", "ort-tok", "bare-ort-tok"}  # batch throughput only
    assert set(res["results"][1]) == paths | token_paths
    for name, m in res["results"][1].items():
        assert m["samples_per_s"] > 0
        assert name in token_paths or 0 < m["p50_ms"] <= m["p95_ms"]
    pad = res["padding"]
    assert pad["tok"]["real_tokens"] == pad["fixed"]["real_tokens"] > 0
    assert pad["tok"]["padded_tokens"] <= pad["fixed"]["padded_tokens"]
    assert "real / " in out and "token batches" in out
    assert res["max_abs_diff"]["merged"] < 1e-4 and res["max_abs_diff"]["ort"] < 1e-4
    assert res["max_abs_diff"]["int8"] > 0
    assert res["flops"] > 0 and res["rates_gflops"][1] > 0
    assert "compute bound" in out and out.count("goal") == 7 and "bare-ort" in out
