"""The pieces of `workbench predict` (class columns, availability, files) and of
`workbench export` on students built in code with the real MiniLM: merged LoRA, a 4-bit /
8-bit base exported dequantized, a prompted network, ONNX (when onnx is installed).

The CLI on trained checkpoints is in tests/integration/test_predict_export.py.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math

import numpy as np
import pytest
import torch

from eval.predict import (
    PredictError,
    PredictOptions,
    modality_available,
    output_format,
    parse_drop,
    prediction_columns,
    regression_classes,
    write_rows,
)
from students.collate import Collator, StudentItem, TeacherSignal
from students.export import (
    EXPORT_FILE,
    ExportError,
    export_model,
    load_exported,
    read_export,
    require_onnx,
)
from students.model import build_student
from workbench.config import LoraConfig, StudentConfig
from workbench.data.schema import Media, Sample
from workbench.data.store import DataInfo
from workbench.metrics import clipped_acc, sims_metrics

pytestmark = pytest.mark.usefixtures("one_thread")

VEC = DataInfo(name="tiny", task="regression", metric_set="mosi", label_range=(-3.0, 3.0),
               class_names=[], modalities=["text", "audio"], feature_dims={"audio": 3},
               feature_kind={"audio": "vector"})
SEQ = DataInfo(name="seq", task="regression", metric_set="mosi", label_range=(-3.0, 3.0),
               class_names=[], modalities=["text", "audio", "vision"],
               feature_dims={"audio": 4, "vision": 3},
               feature_kind={"audio": "sequence", "vision": "vector"})
BINS = [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0]


# --------------------------------------------------------------------------- predict


def test_modality_available_reads_the_data():
    z = np.zeros(3, dtype=np.float32)
    seq = np.zeros((4, 2), dtype=np.float32)
    seq[3] = 1.0  # a non-zero frame past the real length does not count
    cases = [
        (Sample(id="a", text="fine", split="t", audio=np.ones(3, np.float32)), "text", True),
        (Sample(id="b", text="  ", split="t"), "text", False),
        (Sample(id="c", text="", split="t"), "text", False),
        (Sample(id="d", text="x", split="t", audio=np.ones(3, np.float32)), "audio", True),
        (Sample(id="e", text="x", split="t", audio=z), "audio", False),
        (Sample(id="f", text="x", split="t"), "audio", False),
        (Sample(id="g", text="x", split="t", audio=seq, audio_length=3), "audio", False),
        (Sample(id="h", text="x", split="t", audio=seq, audio_length=4), "audio", True),
        (Sample(id="i", text="x", split="t", audio=seq, audio_length=0), "audio", False),
        (Sample(id="j", text="x", split="t", media=Media(frames=["f.jpg"])), "vision", True),
        (Sample(id="k", text="x", split="t", vision=np.zeros((0, 3), np.float32)), "vision",
         False),
    ]
    for sample, m, want in cases:
        assert modality_available(sample, m) is want, (sample.id, m)


def test_regression_classes_follow_the_metrics():
    s = np.array([-3.4, -0.6, -0.5, 0.49, 0.5, 0.51, 1.5, 2.5, 3.7])
    cols = regression_classes(s, "mosi")
    assert cols["polarity"] == ["negative", "negative", "neutral", "neutral", "neutral",
                                "positive", "positive", "positive", "positive"]
    assert cols["class7"] == [-3, -1, 0, 0, 0, 1, 2, 2, 3]  # half to even, as acc7
    # the columns agree with the metrics: acc7 / acc3 of two score vectors
    rng = np.random.default_rng(0)
    p, y = rng.uniform(-4, 4, 200), np.round(rng.uniform(-3, 3, 200), 1)
    cp, cy = regression_classes(p, "mosi"), regression_classes(y, "mosi")
    assert np.mean(np.array(cp["class7"]) == cy["class7"]) == clipped_acc(p, y, 3.0)
    assert np.mean(np.array(cp["polarity"]) == cy["polarity"]) == clipped_acc(p, y, 1.0)
    sims = regression_classes(np.array([-1.0, -0.7, -0.69, -0.1, 0.0, 0.1, 0.11, 0.7, 0.71,
                                        2.0]), "sims")
    assert sims["polarity"] == ["negative"] * 4 + ["neutral"] * 2 + ["positive"] * 4
    assert sims["class5"] == [-2, -2, -1, -1, 0, 0, 1, 1, 2, 2]
    p, y = rng.uniform(-1.2, 1.2, 100), rng.uniform(-1, 1, 100)
    sp, sy = regression_classes(p, "sims"), regression_classes(y, "sims")
    assert np.mean(np.array(sp["polarity"]) == sy["polarity"]) == pytest.approx(
        sims_metrics(p, y)["acc3"])
    assert np.mean(np.array(sp["class5"]) == sy["class5"]) == pytest.approx(
        sims_metrics(p, y)["acc5"])


def test_classification_columns_are_names_and_probabilities():
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 3.0]])
    cols = prediction_columns(logits, "classification", "classification", ["neg", "neu", "pos"])
    assert cols["class"] == ["neg", "pos"] and cols["class_id"] == [0, 2]
    probs = np.array([cols["prob_neg"], cols["prob_neu"], cols["prob_pos"]]).T
    np.testing.assert_allclose(probs.sum(1), 1.0)
    np.testing.assert_allclose(probs[0], np.exp(logits[0]) / np.exp(logits[0]).sum())
    reg = prediction_columns(np.array([0.7, -2.2]), "regression", "mosi", [])
    assert list(reg) == ["score", "polarity", "class7"] and reg["class7"] == [1, -2]


def test_rows_to_csv_and_jsonl(tmp_path):
    rows = [{"id": "a", "split": "test", "score": 0.25, "label": None},
            {"id": "b,c", "split": "test", "score": float("nan"), "label": 1.5}]
    cols = ["id", "split", "score", "label"]
    got = list(csv.DictReader(write_rows(rows, cols, tmp_path / "sub" / "p.csv").open()))
    assert got == [{"id": "a", "split": "test", "score": "0.25", "label": ""},
                   {"id": "b,c", "split": "test", "score": "", "label": "1.5"}]
    lines = (tmp_path / "p.jsonl").parent.joinpath("p.jsonl")
    write_rows(rows, cols, lines)
    back = [json.loads(x) for x in lines.read_text().splitlines()]
    assert back[0] == {"id": "a", "split": "test", "score": 0.25, "label": None}
    assert back[1]["score"] is None and back[1]["label"] == 1.5
    assert not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(PredictError, match=r"\.csv or \.jsonl"):
        output_format(tmp_path / "p.parquet")


def test_options_and_missing_modality_parsing():
    assert parse_drop(None) == () and parse_drop(["none"]) == ()
    assert parse_drop(["vision,audio", "audio"]) == ("audio", "vision")
    with pytest.raises(Exception, match="name modalities from"):
        parse_drop(["smell"])
    with pytest.raises(PredictError, match="batch-size"):
        PredictOptions(batch_size=0)
    with pytest.raises(PredictError, match="use auto, cpu"):
        PredictOptions(device="tpu").resolved_device()
    if not torch.cuda.is_available():
        with pytest.raises(PredictError, match="CUDA is not available"):
            PredictOptions(device="cuda").resolved_device()


# ---------------------------------------------------------------------------- export


def _student(info: DataInfo, seed: int = 0, **cfg) -> torch.nn.Module:
    """A small MiniLM + LoRA student whose adapter is far from its zero start (lora_B
    random), so that a lost adapter would show in the outputs."""
    base = dict(hidden=16, heads=2, bottleneck_tokens=2, max_text_len=16, dropout=0.0,
                lora=LoraConfig(r=2, alpha=4, dropout=0.0))
    model = build_student(StudentConfig(**{**base, **cfg}), info, BINS).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def _samples(info: DataInfo, n: int = 5) -> list[Sample]:
    """Texts of different lengths; sample 1 has no audio, sample 2 empty text and (for
    sequences) a single frame."""
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        feats = {}
        for m in info.feature_dims:
            d = info.feature_dims[m]
            if info.feature_kind[m] == "vector":
                feats[m] = rng.normal(size=d).astype(np.float32)
            else:
                feats[m] = rng.normal(size=(6, d)).astype(np.float32)
                feats[f"{m}_length"] = [6, 4, 1, 3, 5, 2, 6][i % 7]
        if i == 1:
            feats["audio"] = None
            feats.pop("audio_length", None)
        text = "" if i == 2 else " ".join(["a rather moving film"] * (i + 1))
        out.append(Sample(id=f"s{i}", text=text, split="test", **feats))
    return out


def _outputs(model, items):
    with torch.no_grad():
        return model(Collator.for_model(model)(items))


def _assert_same(a, b) -> None:
    torch.testing.assert_close(a.pred, b.pred)
    torch.testing.assert_close(a.bin_logits, b.bin_logits)
    torch.testing.assert_close(a.fused, b.fused)


def test_export_round_trip_prompted_network(tmp_path):
    model = _student(VEC, prompted=True, prompt_fusion="film")
    items = [StudentItem(s, TeacherSignal(description="" if i == 0 else f"calm speaker {i}"))
             for i, s in enumerate(_samples(VEC))]
    ref = _outputs(model, items)
    with model.text.model.disable_adapter():
        base = _outputs(model, items)
    assert (ref.pred - base.pred).abs().max() > 1e-3  # the adapter matters
    export_model(model, tmp_path / "exp")
    _assert_same(_outputs(model, items), ref)  # the model itself keeps its adapter
    spec = read_export(tmp_path / "exp")
    assert spec["kind"] == "prompted" and spec["text_encoder"]["made_by"] == "merged_lora"
    assert spec["student"]["text_encoder"] == "text_encoder"
    assert spec["student"]["prompt_encoder"] == "prompt_encoder"
    for sub in ("text_encoder", "prompt_encoder"):
        assert (tmp_path / "exp" / sub / "model.safetensors").is_file()
    loaded = load_exported(tmp_path / "exp")
    assert not any("lora" in n for n, _ in loaded.named_parameters())
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
    _assert_same(_outputs(loaded, items), ref)
    with pytest.raises(ExportError, match="not empty"):
        export_model(model, tmp_path / "exp")
    (tmp_path / "exp" / EXPORT_FILE).unlink()
    with pytest.raises(ExportError, match="not a student export"):
        load_exported(tmp_path / "exp")


@pytest.mark.parametrize("quantize,atol", [("4bit", 1e-5), ("8bit", 3e-2)])
def test_quantized_base_is_exported_dequantized(tmp_path, quantize, atol):
    pytest.importorskip("bitsandbytes", reason="the quant extra is not installed")
    model = _student(VEC, quantize=quantize)
    samples = _samples(VEC, 4)
    ref = _outputs(model, samples)
    with model.text.model.disable_adapter():
        base = _outputs(model, samples)
    assert (ref.pred - base.pred).abs().max() > 1e-2  # the adapter matters
    export_model(model, tmp_path / "exp")
    spec = read_export(tmp_path / "exp")
    assert spec["text_encoder"]["dequantized_from"] == quantize
    assert spec["student"]["quantize"] == "none"
    cfg = json.loads((tmp_path / "exp" / "text_encoder" / "config.json").read_text())
    assert "quantization_config" not in cfg
    loaded = load_exported(tmp_path / "exp")
    kinds = {type(m).__name__ for m in loaded.text.modules()}
    assert not kinds & {"Linear8bitLt", "Linear4bit"}
    got = _outputs(loaded, samples)
    # 4-bit dequantizes its weight and multiplies in float32 (equal to rounding); 8-bit
    # LLM.int8 also rounds activations to int8, the float export does not (close).
    torch.testing.assert_close(got.pred, ref.pred, atol=atol, rtol=0)
    assert (got.pred - base.pred).abs().max() > (got.pred - ref.pred).abs().max()


def test_onnx_needs_onnx_installed(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr("students.export.importlib.util.find_spec",
                        lambda name, *a: None if name == "onnx" else real(name, *a))
    with pytest.raises(ExportError, match="pip install onnx"):
        require_onnx()


def test_onnx_export_matches_the_model(tmp_path):
    for mod in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(mod, reason=f"{mod} is not installed (the ONNX export is optional; "
                                        "pip install onnx onnxscript onnxruntime to test it)")
    import onnxruntime as ort

    from students.export import export_onnx

    model = _student(SEQ)
    export_model(model, tmp_path / "exp")
    export_onnx(tmp_path / "exp")
    spec = read_export(tmp_path / "exp")
    assert spec["onnx"]["outputs"] == ["pred", "bin_logits"]
    loaded = load_exported(tmp_path / "exp")
    sess = ort.InferenceSession(str(tmp_path / "exp" / spec["onnx"]["file"]))
    # other batch sizes, text lengths and frame counts than the export's example
    for n in (1, 5):
        samples = _samples(SEQ, n)
        batch = Collator.for_model(loaded)(samples)
        with torch.no_grad():
            ref = loaded(batch)
        pred, bins = sess.run(None, {k: batch[k].numpy() for k in spec["onnx"]["inputs"]})
        np.testing.assert_allclose(pred, ref.pred.numpy(), atol=1e-5, rtol=1e-4)
        np.testing.assert_allclose(bins, ref.bin_logits.numpy(), atol=1e-5, rtol=1e-4)
        assert not math.isnan(float(pred.sum()))
