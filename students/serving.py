"""Serving an exported student: PyTorch (float or int8) or ONNX Runtime.

:func:`load_served` opens an export directory (:mod:`students.export`) for
:func:`students.inference.predict`: ``runtime="torch"`` gives the
:class:`~students.model.StudentModel` of :func:`~students.export.load_exported` (int8 when
the export was made with ``--int8``); ``runtime="onnx"`` gives an :class:`OrtStudent`,
which runs ``model.onnx`` through an ``onnxruntime.InferenceSession`` (graph optimizations
on, ``threads`` intra-op threads) on the batches :class:`~students.collate.Collator` makes,
and returns the same predictions as the PyTorch model (within float rounding; a test holds
them to 1e-4). ONNX Runtime is optional: ``pip install onnxruntime`` (the ``onnx`` extra).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from students.export import EXPORT_FILE, ExportError, load_exported, read_export
from students.export.fuse import DISABLED_OPTIMIZERS
from students.model import StudentModel
from workbench.config import StudentConfig, from_dict
from workbench.data.store import DataInfo

log = logging.getLogger(__name__)

RUNTIMES = ("torch", "onnx")


def require_onnxruntime() -> None:
    """Raise a clear error unless ``onnxruntime`` is installed."""
    if importlib.util.find_spec("onnxruntime") is None:
        raise ExportError("serving through ONNX Runtime needs onnxruntime, which is not "
                          "installed: pip install onnxruntime (or the workbench's onnx extra); "
                          "or serve the export with PyTorch")


class OrtStudent:
    """An exported student's ``model.onnx`` in an ONNX Runtime session.

    It has what :meth:`Collator.for_model <students.collate.Collator.for_model>` reads
    (``tokenizer``, ``info``, ``cfg``, ``bin_values``) and :meth:`predict_batch` (a
    collated batch -> ``pred`` as numpy); :meth:`run` gives every output by name.
    """

    def __init__(self, export_dir: str | Path, threads: int = 0, int8: bool = False) -> None:
        require_onnxruntime()
        import onnxruntime as ort
        from transformers import AutoTokenizer

        p = Path(export_dir).resolve()
        spec = read_export(p)
        onnx = spec.get("onnx")
        if not onnx or not (p / onnx["file"]).is_file():
            raise ExportError(f"export {p} has no ONNX model (its {EXPORT_FILE} lists none); "
                              "re-export with `workbench export CHECKPOINT --out DIR --onnx`")
        file = onnx["file"]
        if int8:
            file = (spec.get("int8") or {}).get("onnx_file") or ""
            if not file or not (p / file).is_file():
                raise ExportError(f"export {p} has no int8 ONNX model; re-export with "
                                  "`workbench export CHECKPOINT --out DIR --onnx --int8`")
        self.int8 = int8
        self.path = p
        self.spec = spec
        self.cfg = from_dict(StudentConfig, spec["student"], "student")
        self.info = DataInfo.from_json(spec["data_info"])
        self.bin_values = spec.get("bins")
        self.task = spec["task"]
        self.prompt = None
        self.inputs: list[str] = list(onnx["inputs"])
        self.outputs: list[str] = list(onnx["outputs"])
        self.dtypes = {k: np.dtype(v) for k, v in onnx.get("dtypes", {}).items()}
        self.tokenizer = AutoTokenizer.from_pretrained(str(p / spec["student"]["text_encoder"]))
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(str(p / file), sess_options=opts,
                                            providers=["CPUExecutionProvider"],
                                            disabled_optimizers=DISABLED_OPTIMIZERS)
        log.info("serving %s through ONNX Runtime %s (%d threads)", p / file,
                 ort.__version__, opts.intra_op_num_threads)

    def feeds(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        """The session's inputs from a collated batch (numpy, in the exported dtypes)."""
        out = {}
        for k in self.inputs:
            if k not in batch:
                raise KeyError(f"batch has no {k!r}; build batches with "
                               "students.collate.Collator.for_model(served)")
            v = batch[k]
            arr = v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
            dt = self.dtypes.get(k)
            out[k] = arr.astype(dt, copy=False) if dt is not None else arr
        return out

    def run(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        """Every output (``pred``, ``bin_logits`` where exported) for a collated batch."""
        return dict(zip(self.outputs, self.session.run(self.outputs, self.feeds(batch)),
                        strict=True))

    def predict_batch(self, batch: dict[str, Any]) -> np.ndarray:
        """``pred`` for a collated batch: (B,) scores or (B, C) logits, float32."""
        (pred,) = self.session.run(["pred"], self.feeds(batch))
        return np.asarray(pred, dtype=np.float32)


def load_served(export_dir: str | Path, runtime: str = "torch", *, threads: int = 0,
                int8: bool | None = None) -> StudentModel | OrtStudent:
    """An export ready for :func:`students.inference.predict`: the PyTorch model or,
    ``runtime="onnx"``, an :class:`OrtStudent`; ``int8``: None = as ``export.json`` says
    (an ``--int8`` export serves int8: ``model.int8.onnx`` in ONNX Runtime)."""
    if runtime not in RUNTIMES:
        raise ExportError(f"runtime {runtime!r}: use one of {list(RUNTIMES)}")
    if runtime == "onnx":
        if int8 is None:
            int8 = bool((read_export(export_dir).get("int8") or {}).get("onnx_file"))
        return OrtStudent(export_dir, threads=threads, int8=int8)
    return load_exported(export_dir, int8=int8)
