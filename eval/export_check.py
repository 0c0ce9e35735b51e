"""What int8 serving costs in accuracy: ``workbench export --int8`` measures it.

:func:`measure_int8` predicts one split (``valid`` by default) of the checkpoint's own data
with the export as float32 and as dynamic int8 (:func:`students.export.quantize_int8`),
computes the dataset's metric set for both, and writes both, their differences
(int8 - float) and the largest per-sample prediction change into ``export.json``'s ``int8``
section (:func:`students.export.mark_int8`). With ``timed`` (the default) it also times float
and int8 on the same split's batches (:func:`students.export.int8.time_int8`, one run,
alternating) and records the ratio beside the CPU's features (AVX2 / AVX-512 / VNNI / AMX):
int8's gain depends on them, so no speed-up is written that was not measured here.
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
                 batch_size: int = 64, data: DataConfig | None = None,
                 timed: bool = True) -> dict[str, Any]:
    """Metrics of the float and int8 export on ``split`` (the checkpoint's data, or
    ``data``) in PyTorch and, where the export has ONNX models, in ONNX Runtime, and with
    ``timed`` their samples/s, recorded in ``export.json``; returns the ``int8`` section."""
    ckpt = Path(checkpoint)
    ds = load_data(data if data is not None else run_config(ckpt).data, "checkpoint", ckpt)
    fp32 = load_exported(export_dir, int8=False)
    samples = split_samples(ds, split, fp32.info)
    labels = labels_of(samples, fp32.info)
    section = mark_int8(export_dir)  # writes model.int8.onnx where there is a model.onnx
    int8 = load_exported(export_dir, int8=True)
    accuracy = _compare(fp32, int8, samples, labels, split, batch_size)
    speed = _time(fp32, int8, samples, batch_size) if timed else None
    onnx_accuracy = onnx_speed = None
    if section.get("onnx_file"):
        from students.serving import OrtStudent

        ort32, ort8 = OrtStudent(export_dir), OrtStudent(export_dir, int8=True)
        onnx_accuracy = _compare(ort32, ort8, samples, labels, split, batch_size)
        onnx_speed = _time(ort32, ort8, samples, batch_size) if timed else None
    return mark_int8(export_dir, accuracy=accuracy, onnx_accuracy=onnx_accuracy, speed=speed,
                     onnx_speed=onnx_speed)


def _time(fp32: Any, int8: Any, samples: list[Any], batch_size: int) -> dict[str, Any]:
    """:func:`time_int8` of two served models (PyTorch modules or ONNX Runtime sessions) on
    ``samples`` in batches of ``batch_size``, with the split's order and batching."""
    from students.collate import Collator
    from students.export.int8 import time_int8

    collate = Collator.for_model(fp32)
    batches = [collate(samples[i:i + batch_size]) for i in range(0, len(samples), batch_size)]

    def run(model: Any) -> Any:
        return model.predict_batch if hasattr(model, "predict_batch") else model

    res = time_int8(run(fp32), run(int8), batches)
    res["batch_size"] = batch_size
    log.info("int8 speed: %.2f x fp32 (%d samples, %d threads)", res["speedup"],
             res["samples"], res["threads"])
    return res


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
