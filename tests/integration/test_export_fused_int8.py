"""`workbench export --onnx [--int8]` on a tiny trained checkpoint (MiniLM + LoRA): the
served model.onnx has its text encoder fused at the kernel level (ONNX Runtime's Attention,
SkipLayerNormalization, BiasGelu) and `workbench predict --runtime onnx` serves it with the
checkpoint's predictions within 1e-4; --int8 records the speed it measured beside the CPU's
features (issue 26, items 2 and 3)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from students.checkpoint import load_checkpoint
from students.inference import predict
from tests.support.checkpoints import tiny_checkpoints
from workbench.cli import app
from workbench.config import DataConfig, load_config
from workbench.data import load_dataset

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]
runner = CliRunner()


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    for mod in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(mod, reason=f"{mod} is not installed (the onnx extra)")
    return tiny_checkpoints(tmp_path_factory)


def _ops(path) -> dict[str, int]:
    import onnx

    from students.export.fuse import op_counts

    return op_counts(onnx.load(str(path)))


def test_fused_onnx_export_is_what_predict_serves(ck, tmp_path):
    out = tmp_path / "exp"
    r = runner.invoke(app, ["export", str(ck["a"]), "--out", str(out), "--onnx"])
    assert r.exit_code == 0, r.output
    spec = json.loads((out / "export.json").read_text())
    model, _, _ = load_checkpoint(ck["a"])
    layers = model.text.model.config.num_hidden_layers
    fusion = spec["onnx"]["fusion"]
    assert fusion["fused"]["Attention"] == layers and fusion["check_max_abs_diff"] <= 1e-5
    # fused, then split again: ORT's CPU SkipLayerNormalization is slower than Add + LayerNorm
    assert fusion["split"]["SkipLayerNormalization"] == 2 * layers
    ops = _ops(out / spec["onnx"]["file"])
    assert ops["Attention"] == layers and ops["BiasGelu"] == layers
    assert "SkipLayerNormalization" not in ops and ops["LayerNormalization"] >= 2 * layers
    csv_out = tmp_path / "ort.csv"
    r = runner.invoke(app, ["predict", str(out), "--runtime", "onnx", "--out", str(csv_out)])
    assert r.exit_code == 0, r.output
    with csv_out.open() as f:
        rows = list(csv.DictReader(f))
    test = load_dataset(load_config(DataConfig, ck["data_yaml"])).samples("test")
    assert [row["id"] for row in rows] == [s.id for s in test]
    want = predict(model, test, 64)
    np.testing.assert_allclose([float(row["score"]) for row in rows], want, atol=1e-4, rtol=0)
    # --no-fuse: the same TorchScript graph, unfused, says so
    plain = tmp_path / "plain"
    r = runner.invoke(app, ["export", str(ck["a"]), "--out", str(plain), "--onnx", "--no-fuse"])
    assert r.exit_code == 0, r.output
    spec = json.loads((plain / "export.json").read_text())
    fusion = spec["onnx"]["fusion"]
    assert (fusion["fused"], fusion["reason"]) == ({}, "not asked (fuse=False)")
    assert fusion["compact_attention"] >= 2  # the fusion's attention is traced compact either way
    assert "Attention" not in _ops(plain / "model.onnx")


def test_int8_export_records_measured_speed_and_cpu(ck, tmp_path):
    from students.export.int8 import cpu_features

    out = tmp_path / "exp"
    r = runner.invoke(app, ["export", str(ck["a"]), "--out", str(out), "--onnx", "--int8"])
    assert r.exit_code == 0, r.output
    section = json.loads((out / "export.json").read_text())["int8"]
    assert section["cpu"] == cpu_features()
    n_valid = len(load_dataset(load_config(DataConfig, ck["data_yaml"])).samples("valid"))
    for key, where in (("speed", "PyTorch"), ("onnx_speed", "ONNX Runtime")):
        speed = section[key]
        assert speed["measured"] is True and speed["samples"] == n_valid
        assert speed["speedup"] == pytest.approx(
            speed["int8_samples_per_s"] / speed["fp32_samples_per_s"])
        assert f"int8 speed in {where}: {speed['speedup']:.2f} x fp32" in " ".join(
            r.output.split())
    card = " ".join((out / "README.md").read_text().split())  # the model card says it too
    assert f"int8 speed in PyTorch: {section['speed']['speedup']:.2f} x fp32" in card
    assert section["cpu"]["summary"] in card
    # the int8 ONNX model is quantized from the fused graph
    ops = _ops(out / section["onnx_file"])
    assert ops["Attention"] >= 1 and ops.get("DynamicQuantizeMatMul", 0) + ops.get(
        "MatMulInteger", 0) > 0, ops
