"""What ``workbench export CHECKPOINT`` runs: the checkpoint loaded and written as an
export (:func:`export_checkpoint`), with the optional ONNX model, and int8 serving recorded
in ``export.json`` (:func:`mark_int8`, also run by :mod:`eval.export_check` with the
accuracy it measured)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from students.export.common import ONNX_INT8_FILE, ExportError, read_export, write_export_spec
from students.export.files import export_model, load_exported
from students.export.int8 import NOT_MEASURED, cpu_features, quantize_int8, quantize_onnx_int8
from students.export.onnx import export_onnx, require_onnx


def export_checkpoint(path: str | Path, out_dir: str | Path, *, onnx: bool = False,
                      overwrite: bool = False, device: str | torch.device = "cpu",
                      int8: bool = False, fuse: bool = True) -> Path:
    """Load a checkpoint and export it (:func:`export_model`; with ``onnx``, also
    :func:`export_onnx`, its text encoder fused unless ``fuse`` is False; with ``int8``,
    :func:`mark_int8`). A quantized base is loaded on
    ``device`` (bitsandbytes places weights at load time); the exported weights are
    written from the CPU."""
    from students.checkpoint import load_checkpoint

    if onnx:
        require_onnx()
    model, _, meta = load_checkpoint(path, device=device)
    if onnx and model.prompt is not None:
        raise ExportError(f"checkpoint {path} is a prompted network: it tokenizes teacher "
                          "descriptions inside forward, which ONNX cannot hold; export it "
                          "without --onnx")
    out = export_model(model, out_dir, overwrite=overwrite, source={
        "checkpoint": str(Path(path).resolve()), "selection": meta.selection,
        "trained_with": meta.versions})
    from students.checkpoint import disk_full_named

    what = " and ".join(w for w, on in (("the ONNX model", onnx), ("the int8 files", int8))
                        if on)
    with disk_full_named(out, what or "the export",
                         f"The export in {out} is complete without it: free space on that "
                         "disk and export again with --force"):
        if onnx:
            export_onnx(out, fuse=fuse)
        if int8:
            mark_int8(out)
    return out


def mark_int8(export_dir: str | Path, accuracy: dict[str, Any] | None = None,
              onnx_accuracy: dict[str, Any] | None = None, speed: dict[str, Any] | None = None,
              onnx_speed: dict[str, Any] | None = None) -> dict[str, Any]:
    """Record int8 serving in ``export.json`` (:func:`load_exported` then quantizes; with an
    ONNX model, :func:`quantize_onnx_int8` writes ``model.int8.onnx``), with the measured
    accuracy changes and speed (:func:`~students.export.int8.time_int8`) when given and the
    CPU's features (:func:`~students.export.int8.cpu_features`); a speed not given is
    recorded as not measured (``speedup`` None); returns the ``int8`` section."""
    p = Path(export_dir)
    spec = read_export(p)
    layers = quantize_int8(load_exported(p, int8=False))
    onnx_file = None
    if spec.get("onnx"):
        onnx_file = ONNX_INT8_FILE if (p / ONNX_INT8_FILE).is_file() else \
            quantize_onnx_int8(p).name
    section = {"method": "torch.ao.quantization.quantize_dynamic (per-channel qint8)",
               "modules": "nn.Linear", "layers": layers, "weights_stored": "float32",
               "accuracy": accuracy, "onnx_file": onnx_file,
               "onnx_method": ("onnxruntime.quantization.quantize_dynamic (per-channel QInt8, "
                               "MatMul/Gemm)") if onnx_file else None,
               "onnx_accuracy": onnx_accuracy, "cpu": cpu_features(),
               "speed": speed or dict(NOT_MEASURED),
               "onnx_speed": (onnx_speed or dict(NOT_MEASURED)) if onnx_file else None}
    spec["int8"] = section
    write_export_spec(p, spec)
    return section
