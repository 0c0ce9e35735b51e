"""Dynamic int8: of a loaded student in PyTorch (:func:`quantize_int8`, which
:func:`~students.export.files.load_exported` applies when ``export.json`` says so) and of
``model.onnx`` by ONNX Runtime (:func:`quantize_onnx_int8`, ``model.int8.onnx``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from students.export.common import ONNX_FILE, ONNX_INT8_FILE, ExportError, quiet_loggers
from students.model import StudentModel


def quantize_int8(model: StudentModel) -> int:
    """Dynamic int8 quantization of every ``nn.Linear`` of ``model`` in place
    (``torch.ao.quantization.quantize_dynamic``: int8 weights per output channel,
    activations quantized per batch; CPU only); returns the number of layers quantized.
    ``nn.MultiheadAttention``'s output projection stays float (PyTorch does not quantize
    it dynamically)."""
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    if model.device.type != "cpu":
        raise ExportError(f"int8 (dynamic quantization) runs on the CPU; load the export with "
                          f"device='cpu' (not {model.device})")
    with warnings.catch_warnings():  # torch.ao's own deprecation notes, once per layer
        warnings.simplefilter("ignore")
        for name, child in list(model.named_children()):
            if name != "bins":
                setattr(model, name, quantize_dynamic(
                    child, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8))
    return sum(1 for m in model.modules()
               if type(m).__module__.startswith("torch.ao.nn.quantized.dynamic"))


def quantize_onnx_int8(export_dir: str | Path) -> Path:
    """``model.int8.onnx`` beside ``model.onnx``: ONNX Runtime's dynamic int8 quantization
    of its MatMul / Gemm nodes (int8 weights per output channel, uint8 activations
    quantized per batch); recorded in ``export.json``'s ``int8.onnx_file``."""
    if importlib.util.find_spec("onnxruntime") is None:
        raise ExportError("--int8 with --onnx needs onnxruntime (its quantization tool): pip "
                          "install onnxruntime; or export without --onnx")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    p = Path(export_dir)
    target = p / ONNX_INT8_FILE
    with quiet_loggers("root"):
        quantize_dynamic(str(p / ONNX_FILE), str(target), weight_type=QuantType.QInt8,
                         per_channel=True, op_types_to_quantize=["MatMul", "Gemm"])
    return target
