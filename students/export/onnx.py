"""``model.onnx`` for an export directory: the student with positional tensor inputs
(:class:`OnnxStudent`), exported by ``torch.onnx.export`` with dynamic batch, token and
frame axes, its text encoder fused at the kernel level.

The text encoder runs with the eager attention implementation and the graph is written by
the TorchScript exporter (``dynamo=False``): that is the graph ONNX Runtime's transformer
optimizer recognises (the dynamo export's attention it does not match, and fuses nothing).
:func:`~students.export.fuse.fuse_text_encoder` then fuses the encoder (``Attention``,
``SkipLayerNormalization``, ``BiasGelu``, ``EmbedLayerNormalization``); the fused graph is
served only where it gives the model's outputs within :data:`FUSE_TOLERANCE` on two
batches of different sizes, and ``export.json``'s ``onnx.fusion`` says what was fused (or
why nothing was). Two more steps keep the graph small: the ``SkipLayerNormalization``
nodes are split back into ``Add`` + ``LayerNormalization`` (ORT's CPU kernel for them is the
slower, :mod:`students.export.fuse`), and the student's ``nn.MultiheadAttention`` modules
are traced as :class:`~students.export.compact.CompactAttention` (the same function in a
few nodes, not ~100 of shape checks each). Where the TorchScript graph itself does not follow other batch shapes (it
holds the frame count or batch size of the fusion's attention over sequence features
fixed), the dynamo export is served, unfused. ``model.onnx`` is the served graph."""

from __future__ import annotations

import importlib.util
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from students.export.common import (
    ONNX_FILE,
    ExportError,
    batch_keys,
    quiet_loggers,
    read_export,
    write_export_spec,
)
from students.export.compact import compact_attention
from students.export.files import load_exported
from students.export.fuse import DISABLED_OPTIMIZERS
from students.model import StudentModel

log = logging.getLogger(__name__)
FUSE_TOLERANCE = 1e-5  # largest |ONNX - PyTorch| output change on the check batches


def require_onnx() -> None:
    """Raise a clear error unless the packages ``torch.onnx.export`` needs are installed."""
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(f"--onnx needs {' and '.join(missing)}, which are not installed: "
                          f"pip install {' '.join(missing)} (the workbench does not depend on "
                          "them); or export without --onnx")


class OnnxStudent(nn.Module):
    """The student with positional tensor inputs (:func:`batch_keys`) and tensor outputs
    (``pred``, plus ``bin_logits`` for a regression student with a bin head)."""

    def __init__(self, model: StudentModel) -> None:
        super().__init__()
        self.model = model
        self.keys = batch_keys(model)
        self.with_bins = model.task == "regression" and model.bin_head is not None

    def output_names(self) -> list[str]:
        return ["pred", "bin_logits"] if self.with_bins else ["pred"]

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(dict(zip(self.keys, tensors, strict=True)))
        return (out.pred, out.bin_logits) if self.with_bins else (out.pred,)


def _example_batch(model: StudentModel, n: int = 2) -> dict[str, Any]:
    """``n`` made-up samples of different text lengths and frame counts, collated."""
    from students.collate import collate
    from workbench.data.schema import Sample

    samples = []
    for i in range(n):
        feats: dict[str, Any] = {}
        for m in model.modalities:
            dim = model.info.feature_dims[m]
            shape = (dim,) if model.feature_kind[m] == "vector" else (3 + i, dim)
            feats[m] = torch.randn(*shape, generator=torch.Generator().manual_seed(i)).numpy()
        samples.append(Sample(id=f"onnx{i}", text="an example sentence " * (i + 1),
                              split="test", **feats))
    return collate(samples, model.tokenizer, model.info, model.cfg.max_text_len)


def export_onnx(export_dir: str | Path, opset: int = 17, fuse: bool = True) -> Path:
    """Write ``model.onnx`` for an export directory (batch, token and frame axes dynamic),
    with the text encoder fused where ONNX Runtime's optimizer can fuse it (``fuse``);
    record its inputs, outputs and fusion in ``export.json``.

    The TorchScript graph is checked on a second batch of other sizes against the model;
    where it does not follow (a traced shape held fixed: the fusion's attention over frame
    sequences), the dynamo export (no fusion) is served instead and ``onnx.fusion.reason``
    says so."""
    import onnx

    require_onnx()
    p = Path(export_dir)
    spec = read_export(p)
    model = load_exported(p, int8=False)
    if model.prompt is not None:
        raise ExportError("a prompted network tokenizes descriptions inside forward; ONNX "
                          "export supports plain students only")
    encoder = model.text.model
    if hasattr(encoder, "set_attn_implementation"):
        encoder.set_attn_implementation("eager")  # the attention pattern ORT fuses
    wrapper = OnnxStudent(model).eval()
    batch = _example_batch(model)
    checks = [batch, _example_batch(model, 3)]
    with torch.no_grad():
        wants = [[t.numpy() for t in wrapper(*(b[k] for k in wrapper.keys))] for b in checks]
    # the outputs above are the model's own; the graph is traced from compact attention
    compacted = compact_attention(model)
    target = p / ONNX_FILE
    exporter = "torch.onnx TorchScript (dynamo=False), eager attention"
    if importlib.util.find_spec("onnxruntime") is None:
        # the TorchScript graph is only served once checked in ONNX Runtime
        fusion = {"fused": {}, "reason": "onnxruntime is not installed (it checks and fuses "
                                         "the graph): served the dynamo export, unfused; pip "
                                         "install onnxruntime and export again to fuse"}
        _export_dynamo(wrapper, model, batch, target, opset)
        return _record(p, spec, wrapper, batch, opset, "torch.onnx dynamo", fusion)
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "unfused.onnx"
        _export_torchscript(wrapper, model, batch, plain, opset)
        graph = onnx.load(str(plain))
        traced = _max_diff(graph, checks, wants, wrapper.keys)
        if not traced <= FUSE_TOLERANCE:
            fusion = {"fused": {}, "reason": (
                f"the TorchScript graph gives other outputs at other batch shapes "
                f"(max |diff| {traced:.2e}); served the dynamo export, unfused")}
            exporter = "torch.onnx dynamo"
            _export_dynamo(wrapper, model, batch, target, opset)
        else:
            fusion = _fuse(graph, encoder, checks, wants, wrapper.keys) if fuse else \
                {"fused": {}, "reason": "not asked (fuse=False)"}
            onnx.save(fusion.pop("model", graph), str(target))
    fusion["compact_attention"] = compacted
    return _record(p, spec, wrapper, batch, opset, exporter, fusion)


def _record(p: Path, spec: dict[str, Any], wrapper: OnnxStudent, batch: dict[str, Any],
            opset: int, exporter: str, fusion: dict[str, Any]) -> Path:
    """``export.json``'s ``onnx`` section for the ``model.onnx`` just written."""
    target = p / ONNX_FILE
    if exporter == "torch.onnx dynamo":
        opset = max(opset, 18)  # what _export_dynamo wrote
    spec["onnx"] = {"file": ONNX_FILE, "inputs": wrapper.keys,
                    "outputs": wrapper.output_names(), "opset": opset, "exporter": exporter,
                    "dtypes": {k: str(batch[k].dtype).removeprefix("torch.")
                               for k in wrapper.keys},
                    "fusion": fusion}
    write_export_spec(p, spec)
    log.info("wrote %s (%s)", target, ", ".join(f"{n} {k}" for k, n in fusion["fused"].items())
             or f"not fused: {fusion.get('reason')}")
    return target


def _export_torchscript(wrapper: OnnxStudent, model: StudentModel, batch: dict[str, Any],
                        target: Path, opset: int) -> None:
    axes: dict[str, dict[int, str]] = {}
    for k in wrapper.keys:
        axes[k] = {0: "batch"}
        modality = k.removesuffix("_keep")
        if k in ("input_ids", "attention_mask", "token_type_ids"):
            axes[k][1] = "tokens"
        elif batch[k].dim() >= 2 and model.feature_kind.get(modality) == "sequence":
            axes[k][1] = f"{modality}_frames"
    with torch.no_grad(), warnings.catch_warnings(), quiet_loggers("torch.onnx"):
        warnings.simplefilter("ignore")  # TracerWarnings of transformers' mask code
        torch.onnx.export(wrapper, tuple(batch[k] for k in wrapper.keys), str(target),
                          input_names=wrapper.keys, output_names=wrapper.output_names(),
                          dynamic_axes=axes, opset_version=opset, dynamo=False, verbose=False)


def _export_dynamo(wrapper: OnnxStudent, model: StudentModel, batch: dict[str, Any],
                   target: Path, opset: int) -> None:
    auto = torch.export.Dim.AUTO
    shapes: list[dict[int, Any]] = []
    for k in wrapper.keys:
        dims = {0: auto}
        frames = batch[k].dim() >= 2 and (
            model.feature_kind.get(k.removesuffix("_keep")) == "sequence")
        if k in ("input_ids", "attention_mask", "token_type_ids") or frames:
            dims[1] = auto
        shapes.append(dims)
    with torch.no_grad(), quiet_loggers("onnxscript", "onnx_ir", "torch.onnx"):
        torch.onnx.export(wrapper, tuple(batch[k] for k in wrapper.keys), str(target),
                          input_names=wrapper.keys, output_names=wrapper.output_names(),
                          dynamic_shapes=(tuple(shapes),), opset_version=max(opset, 18),
                          dynamo=True, external_data=False, verbose=False)


def _fuse(graph: Any, encoder: nn.Module, checks: list[dict[str, Any]], wants: list[Any],
          keys: list[str]) -> dict[str, Any]:
    """The fusion record of :func:`export_onnx`, with the fused graph under ``"model"``
    where it was made and gives the model's outputs on ``checks``."""
    from students.export.fuse import BERT_LIKE, fuse_text_encoder

    cfg = getattr(encoder, "config", None)
    kind = getattr(cfg, "model_type", None)
    if kind not in BERT_LIKE:
        return {"fused": {}, "reason": f"text encoder type {kind!r} is not BERT-like "
                                       f"({', '.join(BERT_LIKE)}); served unfused"}
    fused, record = fuse_text_encoder(graph, cfg.num_attention_heads, cfg.hidden_size)
    record["tool"] = "onnxruntime.transformers.optimizer.optimize_model (model_type=bert)"
    if fused is graph:
        return record
    diff = _max_diff(fused, checks, wants, keys)
    record["check_max_abs_diff"] = diff
    if not diff <= FUSE_TOLERANCE:
        record["reason"] = (f"the fused graph's outputs differ from the model's by {diff:.2e} "
                            f"(> {FUSE_TOLERANCE:g}) on the check batches; served unfused")
        record["fused"] = {}
        return record
    record["model"] = fused
    return record


def _max_diff(graph: Any, checks: list[dict[str, Any]], wants: list[Any],
              keys: list[str]) -> float:
    """Largest |output - want| of ``graph`` in ONNX Runtime over the check batches (inf
    where it fails to run them)."""
    try:
        return max(float(abs(a - b).max()) for batch, want in zip(checks, wants, strict=True)
                   for a, b in zip(_run(graph, {k: batch[k].numpy() for k in keys}), want,
                                   strict=True))
    except Exception as e:  # noqa: BLE001 - a graph that cannot run these shapes
        log.debug("ONNX graph check failed: %s", e)
        return float("inf")


def _run(graph: Any, feeds: dict[str, Any]) -> list[Any]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(graph.SerializeToString(), sess_options=opts,
                                   providers=["CPUExecutionProvider"],
                                   disabled_optimizers=DISABLED_OPTIMIZERS)
    return session.run(None, feeds)
