"""Dynamic int8: of a loaded student in PyTorch (:func:`quantize_int8`, which
:func:`~students.export.files.load_exported` applies when ``export.json`` says so) and of
``model.onnx`` by ONNX Runtime (:func:`quantize_onnx_int8`, ``model.int8.onnx``).

What int8 buys depends on the CPU: with AVX-512 VNNI / AVX-VNNI / AMX the int8 products run
on dedicated instructions, on an AVX2-only CPU they do not (ONNX Runtime's int8 measured
1.16x fp32 on one, 2.03x on a VNNI CPU). So a speed-up is only ever recorded as measured
(:func:`time_int8`) beside the CPU's features (:func:`cpu_features`), and
:func:`speed_text` says "not measured" where there is no timing."""

from __future__ import annotations

import importlib.util
import platform
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

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
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    p = Path(export_dir)
    target = p / ONNX_INT8_FILE
    with quiet_loggers("root"):
        # DefaultTensorType: the fused encoder's ops (com.microsoft) have no ONNX shape
        # inference, so the MatMuls after them have no inferred type; they are float32
        quantize_dynamic(str(p / ONNX_FILE), str(target), weight_type=QuantType.QInt8,
                         per_channel=True, op_types_to_quantize=["MatMul", "Gemm"],
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return target


NOT_MEASURED: dict[str, Any] = {"measured": False, "speedup": None, "note": "not measured"}
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "avx_vnni_int8", "avx512vnni")


def cpu_features(cpuinfo: str | None = None) -> dict[str, Any]:
    """The CPU's name and the instruction sets that decide int8 speed (AVX2, AVX-512 *,
    VNNI, AMX), read from ``/proc/cpuinfo`` (or ``lscpu``), or ``cpuinfo``'s text; where
    neither can be read, every feature is None and ``source`` is None."""
    source = "/proc/cpuinfo"
    text = cpuinfo
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            text, source = _lscpu(), "lscpu"
    name, flags = None, None
    for line in (text or "").splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "model name(s)") and name is None:
            name = value.strip()
        elif key in ("flags", "features") and flags is None:
            flags = set(value.split())
    if flags is None:
        return {"source": None, "model": name or platform.processor() or None,
                "machine": platform.machine(), "avx2": None, "avx512": None, "vnni": None,
                "amx": None, "summary": "CPU features unknown (no /proc/cpuinfo or lscpu)"}
    feats = {"source": source if cpuinfo is None else "given", "model": name,
             "machine": platform.machine(), "avx2": "avx2" in flags,
             "avx512": sorted(f for f in flags if f.startswith("avx512")),
             "vnni": sorted(f for f in flags if f in VNNI_FLAGS),
             "amx": sorted(f for f in flags if f.startswith("amx"))}
    parts = ["AVX2" if feats["avx2"] else "no AVX2",
             "AVX-512" if feats["avx512"] else "no AVX-512",
             "+".join(feats["vnni"]) if feats["vnni"] else "no VNNI",
             "AMX" if feats["amx"] else "no AMX"]
    feats["summary"] = f"{name or 'CPU'}: {', '.join(parts)}"
    return feats


def _lscpu() -> str | None:
    exe = shutil.which("lscpu")
    if exe is None:
        return None
    try:
        return subprocess.run([exe], capture_output=True, text=True, timeout=10,
                              check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def time_int8(fp32: Callable[[Any], Any], int8: Callable[[Any], Any],
              batches: Sequence[Any], rounds: int = 2) -> dict[str, Any]:
    """Samples/s of ``fp32`` and ``int8`` (each a function of a collated batch) over
    ``batches``, alternating batch by batch after one warm-up batch each, ``rounds`` times
    through; ``speedup`` = int8 / fp32 samples/s, measured in this one run."""
    import torch

    if not batches:
        raise ValueError("time_int8 needs at least one batch to time")
    n = sum(int(b["input_ids"].shape[0]) for b in batches)
    spent = {"fp32": 0.0, "int8": 0.0}
    fns = {"fp32": fp32, "int8": int8}
    with torch.no_grad():
        for fn in fns.values():
            fn(batches[0])
        for r in range(rounds):
            for i, b in enumerate(batches):
                order = ("fp32", "int8") if (i + r) % 2 == 0 else ("int8", "fp32")
                for name in order:
                    t0 = time.perf_counter()
                    fns[name](b)
                    spent[name] += time.perf_counter() - t0
    fp32_rate, int8_rate = rounds * n / spent["fp32"], rounds * n / spent["int8"]
    return {"measured": True, "fp32_samples_per_s": fp32_rate, "int8_samples_per_s": int8_rate,
            "speedup": int8_rate / fp32_rate, "samples": n, "batches": len(batches),
            "rounds": rounds, "threads": torch.get_num_threads()}


def speed_text(speed: dict[str, Any] | None, cpu: dict[str, Any] | None, where: str) -> str:
    """One line on int8 speed in ``where``: the measured ratio with the CPU it ran on, or
    "not measured" (never a ratio that was not timed)."""
    on = (cpu or {}).get("summary") or "CPU features unknown"
    if not speed or not speed.get("measured") or speed.get("speedup") is None:
        return f"int8 speed in {where}: not measured (CPU {on})"
    return (f"int8 speed in {where}: {speed['speedup']:.2f} x fp32 samples/s "
            f"({speed['int8_samples_per_s']:.1f} vs {speed['fp32_samples_per_s']:.1f}, "
            f"{speed['samples']} samples, {speed['threads']} threads, one run) on {on}")
