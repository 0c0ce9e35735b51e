"""``model.onnx`` for an export directory: the student with positional tensor inputs
(:class:`OnnxStudent`), exported by ``torch.onnx.export`` (dynamo) with dynamic batch,
token and frame axes."""

from __future__ import annotations

import importlib.util
import logging
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
from students.export.files import load_exported
from students.model import StudentModel

log = logging.getLogger(__name__)


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


def _example_batch(model: StudentModel) -> dict[str, Any]:
    from students.collate import collate
    from workbench.data.schema import Sample

    samples = []
    for i in range(2):
        feats: dict[str, Any] = {}
        for m in model.modalities:
            dim = model.info.feature_dims[m]
            shape = (dim,) if model.feature_kind[m] == "vector" else (3 + i, dim)
            feats[m] = torch.randn(*shape, generator=torch.Generator().manual_seed(i)).numpy()
        samples.append(Sample(id=f"onnx{i}", text="an example sentence " * (i + 1),
                              split="test", **feats))
    return collate(samples, model.tokenizer, model.info, model.cfg.max_text_len)


def export_onnx(export_dir: str | Path, opset: int = 18) -> Path:
    """Write ``model.onnx`` for an export directory (batch, token and frame axes dynamic);
    record its inputs and outputs in ``export.json``."""
    require_onnx()
    p = Path(export_dir)
    spec = read_export(p)
    model = load_exported(p, int8=False)
    if model.prompt is not None:
        raise ExportError("a prompted network tokenizes descriptions inside forward; ONNX "
                          "export supports plain students only")
    wrapper = OnnxStudent(model).eval()
    batch = _example_batch(model)
    args = tuple(batch[k] for k in wrapper.keys)
    auto = torch.export.Dim.AUTO
    shapes: list[dict[int, Any]] = []
    for k in wrapper.keys:
        dims = {0: auto}
        frames = batch[k].dim() >= 2 and (
            model.feature_kind.get(k.removesuffix("_keep")) == "sequence")
        if k in ("input_ids", "attention_mask", "token_type_ids") or frames:
            dims[1] = auto
        shapes.append(dims)
    target = p / ONNX_FILE
    with torch.no_grad(), quiet_loggers("onnxscript", "onnx_ir", "torch.onnx"):
        torch.onnx.export(wrapper, args, str(target), input_names=wrapper.keys,
                          output_names=wrapper.output_names(),
                          dynamic_shapes=(tuple(shapes),), opset_version=opset, dynamo=True,
                          external_data=False, verbose=False)
    spec["onnx"] = {"file": ONNX_FILE, "inputs": wrapper.keys,
                    "outputs": wrapper.output_names(), "opset": opset,
                    "dtypes": {k: str(batch[k].dtype).removeprefix("torch.")
                               for k in wrapper.keys}}
    write_export_spec(p, spec)
    log.info("wrote %s", target)
    return target
