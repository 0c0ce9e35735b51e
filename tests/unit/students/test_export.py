"""`workbench export` on students built in code with the real MiniLM: merged LoRA, a 4-bit
/ 8-bit base exported dequantized, a prompted network, ONNX (when onnx is installed)."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
import torch

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
from tests.support.students import BINS, SEQ, VEC
from workbench.config import LoraConfig, StudentConfig
from workbench.data.schema import Sample
from workbench.data.store import DataInfo

pytestmark = pytest.mark.usefixtures("one_thread")





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
    monkeypatch.setattr("importlib.util.find_spec",
                        lambda name, *a: None if name == "onnx" else real(name, *a))
    with pytest.raises(ExportError, match="pip install onnx"):
        require_onnx()


@pytest.mark.parametrize("info,compact", [(VEC, True), (SEQ, True), (SEQ, False)],
                         ids=["vector", "sequence", "sequence-plain-attention"])
def test_onnx_export_matches_the_model(tmp_path, monkeypatch, info, compact):
    """The text encoder is fused at the kernel level (one Attention per MiniLM layer), for
    utterance vectors and frame sequences alike: the fusion's attention is traced as
    CompactAttention (its two nn.MultiheadAttention modules swapped). Traced as
    nn.MultiheadAttention, the TorchScript graph of a frame-sequence student holds the
    attention's shapes fixed: the dynamo export is served, unfused, and says why. All give
    the model's outputs at other batch sizes, text lengths and frame counts."""
    for mod in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(mod, reason=f"{mod} is not installed (the ONNX export is optional; "
                                        "pip install onnx onnxscript onnxruntime to test it)")
    import onnxruntime as ort

    import students.export.onnx as export_onnx_module
    from students.export import export_onnx

    if not compact:
        monkeypatch.setattr(export_onnx_module, "compact_attention", lambda model: 0)
    model = _student(info)
    export_model(model, tmp_path / "exp")
    export_onnx(tmp_path / "exp")
    spec = read_export(tmp_path / "exp")
    assert spec["onnx"]["outputs"] == ["pred", "bin_logits"]
    layers = model.text.model.config.num_hidden_layers
    fusion = spec["onnx"]["fusion"]
    ops = _op_types(tmp_path / "exp" / spec["onnx"]["file"])
    if compact:
        assert fusion["compact_attention"] == 2 * len(model.fusion.modalities)  # gather + scatter
        assert fusion["fused"]["Attention"] == layers, fusion
        assert fusion["split"]["SkipLayerNormalization"] == 2 * layers  # fused, then split again
        assert fusion["fused"]["BiasGelu"] == layers and fusion["check_max_abs_diff"] <= 1e-5
        assert ops["Attention"] == layers and ops["EmbedLayerNormalization"] == 1
        assert "SkipLayerNormalization" not in ops
        assert spec["onnx"]["exporter"].startswith("torch.onnx TorchScript")
    else:
        assert fusion["fused"] == {} and "other batch shapes" in fusion["reason"]
        assert "Attention" not in ops and spec["onnx"]["exporter"] == "torch.onnx dynamo"
    loaded = load_exported(tmp_path / "exp")
    sess = ort.InferenceSession(str(tmp_path / "exp" / spec["onnx"]["file"]))
    # other batch sizes, text lengths and frame counts than the export's example
    for n in (1, 5):
        samples = _samples(info, n)
        batch = Collator.for_model(loaded)(samples)
        with torch.no_grad():
            ref = loaded(batch)
        pred, bins = sess.run(None, {k: batch[k].numpy() for k in spec["onnx"]["inputs"]})
        np.testing.assert_allclose(pred, ref.pred.numpy(), atol=1e-5, rtol=1e-4)
        np.testing.assert_allclose(bins, ref.bin_logits.numpy(), atol=1e-5, rtol=1e-4)
        assert not math.isnan(float(pred.sum()))


def _op_types(path) -> dict[str, int]:
    import onnx

    from students.export.fuse import op_counts

    return op_counts(onnx.load(str(path)))


def test_onnx_fusion_that_changes_outputs_is_not_served(tmp_path, monkeypatch):
    """A fused graph is served only where it gives the model's outputs: where its check
    fails the export keeps the unfused graph and says why."""
    for mod in ("onnx", "onnxruntime"):
        pytest.importorskip(mod, reason=f"{mod} is not installed (the ONNX export is optional)")
    from students.export import export_onnx
    from students.export import onnx as export_onnx_module

    calls = []
    real = export_onnx_module._max_diff

    def fused_graph_off(*args):  # the traced graph's check passes, the fused one's fails
        calls.append(args[0])
        return real(*args) if len(calls) == 1 else 1.0

    monkeypatch.setattr(export_onnx_module, "_max_diff", fused_graph_off)
    export_model(_student(VEC), tmp_path / "exp")
    export_onnx(tmp_path / "exp")
    fusion = read_export(tmp_path / "exp")["onnx"]["fusion"]
    assert fusion["fused"] == {} and "served unfused" in fusion["reason"]
    assert fusion["check_max_abs_diff"] == 1.0 and len(calls) == 2
    ops = _op_types(tmp_path / "exp" / "model.onnx")
    assert "Attention" not in ops and ops["Softmax"] >= 6


def test_onnx_export_without_onnxruntime_serves_the_dynamo_graph(tmp_path, monkeypatch):
    """Without ONNX Runtime nothing can check or fuse the TorchScript graph: the dynamo
    export is written, unfused, and export.json says why."""
    for mod in ("onnx", "onnxscript"):
        pytest.importorskip(mod, reason=f"{mod} is not installed (the ONNX export is optional)")
    from students.export import export_onnx

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    export_model(_student(VEC), tmp_path / "exp")
    export_onnx(tmp_path / "exp")
    spec = read_export(tmp_path / "exp")["onnx"]
    assert spec["exporter"] == "torch.onnx dynamo" and spec["opset"] == 18
    assert spec["fusion"]["fused"] == {} and "onnxruntime is not installed" in \
        spec["fusion"]["reason"]
    assert "Attention" not in _op_types(tmp_path / "exp" / "model.onnx")


def test_fusion_needs_a_bert_style_encoder():
    """A graph without a BERT-style text encoder is returned unchanged, with the reason."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    from students.export.fuse import fuse_text_encoder

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="/model/head/Relu")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph)
    onnx.checker.check_model(model)
    out, record = fuse_text_encoder(model, num_heads=12, hidden_size=384)
    assert out is model and record["fused"] == {}
    assert "no BERT-style encoder layer" in record["reason"]


AVX2_ONLY = """processor\t: 0
model name\t: Intel(R) Xeon(R) CPU E5-2680 v4
flags\t\t: fpu sse2 avx fma avx2 bmi2
"""
VNNI = """model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: avx avx2 avx512f avx512bw avx512_vnni avx_vnni amx_tile amx_int8
"""


def test_cpu_features_name_what_int8_speed_depends_on():
    from students.export.int8 import cpu_features

    old = cpu_features(AVX2_ONLY)
    assert old["avx2"] is True and old["avx512"] == [] and old["vnni"] == [] and old["amx"] == []
    assert old["summary"] == ("Intel(R) Xeon(R) CPU E5-2680 v4: AVX2, no AVX-512, no VNNI, "
                              "no AMX")
    new = cpu_features(VNNI)
    assert new["avx512"] == ["avx512_vnni", "avx512bw", "avx512f"]
    assert new["vnni"] == ["avx512_vnni", "avx_vnni"] and new["amx"] == ["amx_int8", "amx_tile"]
    assert "AVX-512, avx512_vnni+avx_vnni, AMX" in new["summary"]
    unknown = cpu_features("model name\t: some cpu\n")
    assert unknown["avx2"] is None and unknown["source"] is None
    assert "unknown" in unknown["summary"]
    here = cpu_features()  # this machine's /proc/cpuinfo (or lscpu)
    assert here["source"] in ("/proc/cpuinfo", "lscpu", None)


def test_int8_speed_is_only_claimed_where_measured(tmp_path):
    """mark_int8 records the CPU's features always and a speed-up only when timed: without
    a timing the ratio is None and the text says "not measured"."""
    from students.export import mark_int8
    from students.export.int8 import cpu_features, speed_text, time_int8

    model = _student(VEC)
    export_model(model, tmp_path / "exp")
    section = mark_int8(tmp_path / "exp")
    assert section["speed"] == {"measured": False, "speedup": None, "note": "not measured"}
    assert section["onnx_speed"] is None  # no ONNX model, no ONNX speed field
    assert section["cpu"] == cpu_features()
    assert read_export(tmp_path / "exp")["int8"]["speed"]["speedup"] is None
    text = speed_text(section["speed"], section["cpu"], "PyTorch")
    assert "not measured" in text and " x fp32" not in text

    fp32, int8 = load_exported(tmp_path / "exp", int8=False), load_exported(tmp_path / "exp")
    batches = [Collator.for_model(fp32)(_samples(VEC, 3)) for _ in range(2)]
    speed = time_int8(fp32, int8, batches, rounds=1)
    assert speed["measured"] and speed["samples"] == 6 and speed["threads"] >= 1
    assert speed["speedup"] == pytest.approx(
        speed["int8_samples_per_s"] / speed["fp32_samples_per_s"])
    section = mark_int8(tmp_path / "exp", speed=speed)
    assert read_export(tmp_path / "exp")["int8"]["speed"] == speed
    text = speed_text(section["speed"], section["cpu"], "PyTorch")
    assert f"{speed['speedup']:.2f} x fp32" in text and section["cpu"]["summary"] in text
    with pytest.raises(ValueError, match="at least one batch"):
        time_int8(fp32, int8, [])


@pytest.mark.parametrize("bias", [True, False])
def test_split_skip_layer_norm_gives_the_fused_nodes_outputs(bias):
    """A SkipLayerNormalization (with and without its bias; its input+skip+bias sum read
    downstream) written back as Add nodes and a LayerNormalization: the same outputs in
    ONNX Runtime, no SkipLayerNormalization left, and a session with the runtime fusion
    turned off keeps it that way."""
    ort = pytest.importorskip("onnxruntime")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from students.export.fuse import DISABLED_OPTIMIZERS, op_counts, split_skip_layer_norm

    d = 16
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(d).astype(np.float32), n)
             for n in ("gamma", "beta", "bias")]
    ins = ["x", "s", "gamma", "beta", *(["bias"] if bias else [])]
    nodes = [helper.make_node("SkipLayerNormalization", ins, ["y", "", "", "sum"], domain="com.microsoft",
                              epsilon=1e-5, name="sln"),
             helper.make_node("Mul", ["sum", "y"], ["z"])]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, None, d]) for n in ("x", "s", "y", "z")]
    model = helper.make_model(helper.make_graph(nodes, "g", io[:2], io[2:], inits),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    split, n = split_skip_layer_norm(model)
    assert n == 1 and "SkipLayerNormalization" not in op_counts(split)
    assert op_counts(model)["SkipLayerNormalization"] == 1  # the input is not changed
    feeds = {k: rng.standard_normal((2, 5, d)).astype(np.float32) for k in ("x", "s")}
    opts = ort.SessionOptions()
    want = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feeds)
    got = ort.InferenceSession(split.SerializeToString(), opts, providers=["CPUExecutionProvider"],
                               disabled_optimizers=DISABLED_OPTIMIZERS).run(None, feeds)
    for a, b in zip(want, got, strict=True):
        assert np.abs(a - b).max() <= 1e-5


def test_compact_attention_computes_what_multihead_attention_does():
    """Same parameters, same outputs and attention maps (per head and averaged), padded keys
    ignored; an attn_mask call goes to the module itself; modules it cannot copy (not batch
    first) are left as they are."""
    from students.export.compact import CompactAttention, compact_attention

    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(32, 4, dropout=0.1, batch_first=True).eval()
    q, k = torch.randn(3, 4, 32), torch.randn(3, 7, 32)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[0, 5:], pad[2, 1:] = True, True
    compact = CompactAttention(mha)
    for kw in (dict(key_padding_mask=pad, need_weights=False),
               dict(key_padding_mask=pad, need_weights=True, average_attn_weights=False),
               dict(need_weights=True), dict(attn_mask=torch.rand(4, 7) > 0.7)):
        want, got = mha(q, k, k, **kw), compact(q, k, k, **kw)
        torch.testing.assert_close(got[0], want[0], atol=1e-6, rtol=0)
        assert (got[1] is None) == (want[1] is None)
        if want[1] is not None:
            torch.testing.assert_close(got[1], want[1], atol=1e-6, rtol=0)
    model = torch.nn.ModuleDict({"a": torch.nn.MultiheadAttention(32, 4, batch_first=True),
                                 "b": torch.nn.MultiheadAttention(32, 4)})
    assert compact_attention(model) == 1
    assert isinstance(model["a"], CompactAttention) and type(model["b"]) is torch.nn.MultiheadAttention
