"""What int8 serving costs in accuracy: ``workbench export --int8`` measures it.

:func:`measure_int8` predicts one split (``valid`` by default) of the checkpoint's own data
with the export as float32 and as dynamic int8 (:func:`students.export.quantize_int8`),
computes the dataset's metric set for both, and writes both, their differences
(int8 - float) and the largest per-sample prediction change into ``export.json``'s ``int8``
section (:func:`students.export.mark_int8`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from eval.data import labels_of, load_data, split_samples
from eval.options import run_config
from students.export import load_exported, mark_int8
from students.inference import predict
from workbench.config import DataConfig
from workbench.metrics import compute_metrics

log = logging.getLogger(__name__)


def measure_int8(checkpoint: str | Path, export_dir: str | Path, *, split: str = "valid",
                 batch_size: int = 64, data: DataConfig | None = None) -> dict[str, Any]:
    """Metrics of the float and int8 export on ``split`` (the checkpoint's data, or
    ``data``) in PyTorch and, where the export has ONNX models, in ONNX Runtime, recorded
    in ``export.json``; returns the ``int8`` section."""
    ckpt = Path(checkpoint)
    ds = load_data(data if data is not None else run_config(ckpt).data, "checkpoint", ckpt)
    fp32 = load_exported(export_dir, int8=False)
    samples = split_samples(ds, split, fp32.info)
    labels = labels_of(samples, fp32.info)
    section = mark_int8(export_dir)  # writes model.int8.onnx where there is a model.onnx
    accuracy = _compare(fp32, load_exported(export_dir, int8=True), samples, labels,
                        split, batch_size)
    onnx_accuracy = None
    if section.get("onnx_file"):
        from students.serving import OrtStudent

        onnx_accuracy = _compare(OrtStudent(export_dir), OrtStudent(export_dir, int8=True),
                                 samples, labels, split, batch_size)
    return mark_int8(export_dir, accuracy=accuracy, onnx_accuracy=onnx_accuracy)


def _compare(fp32: Any, int8: Any, samples: list[Any], labels: np.ndarray, split: str,
             batch_size: int) -> dict[str, Any]:
    metric_set = fp32.info.metric_set
    p32 = predict(fp32, samples, batch_size)
    p8 = predict(int8, samples, batch_size)
    m32 = compute_metrics(metric_set, p32, labels)
    m8 = compute_metrics(metric_set, p8, labels)
    log.info("int8 on %s (%d samples): %s", split, len(samples),
             " ".join(f"{k} {m32[k]:.4f}->{m8[k]:.4f}" for k in m32 if k in m8))
    return {"split": split, "samples": len(samples), "float32": m32, "int8": m8,
            "delta": {k: m8[k] - m32[k] for k in m32 if k in m8},
            "max_abs_pred_change": float(np.max(np.abs(p8 - p32)))}
