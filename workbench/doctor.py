"""`workbench doctor`: what this machine has, and why an optional backend is unavailable."""

from __future__ import annotations

import importlib
import os
import platform
from importlib import metadata

Row = tuple[str, "bool | None", str]


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def _import_check(module: str, pkg: str, why_missing: str) -> Row:
    """Try importing ``module``; on failure say what the import said and how to fix it."""
    try:
        importlib.import_module(module)
    except ImportError as e:
        installed = _version(pkg)
        reason = f"installed ({installed}) but import fails: {e}" if installed else why_missing
        return (pkg, False, reason)
    except Exception as e:  # noqa: BLE001 - a broken native extension raises anything
        return (pkg, False, f"import raised {type(e).__name__}: {e}")
    return (pkg, True, _version(pkg) or "importable")


def nvidia_packages() -> list[str]:
    """Installed distributions that are CUDA runtime wheels."""
    names = []
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name.startswith("nvidia-") or name in ("triton",):
            names.append(f"{name}=={dist.version}")
    return sorted(names)


def report() -> list[Row]:
    rows: list[Row] = [
        ("python", None, f"{platform.python_version()} on {platform.platform()}"),
        ("cpu", None, f"{os.cpu_count()} cores"),
    ]
    import torch

    cuda = torch.version.cuda
    rows.append(("torch", True, f"{torch.__version__} ({'CUDA ' + cuda if cuda else 'CPU build'})"))
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        rows.append(("cuda devices", True, names))
    else:
        rows.append(("cuda devices", None, "none: training and local teachers run on CPU"))
    for pkg in ("transformers", "peft", "accelerate", "datasets", "openai"):
        rows.append((pkg, _version(pkg) is not None, _version(pkg) or "missing: pip install -e ."))
    nv = nvidia_packages()
    if nv and not cuda:
        rows.append(("nvidia wheels", False, f"CPU torch but CUDA wheels installed: {', '.join(nv)}"))
    rows.append(_import_check("bitsandbytes", "bitsandbytes",
                              "not installed: pip install -e '.[quant]' (8/4-bit student bases)"))
    rows.append(_import_check("llama_cpp", "llama-cpp-python",
                              "not installed: pip install -e '.[llamacpp]' (llama.cpp server teacher)"))
    if not cuda:
        vllm_why = ("not installed; stock vLLM needs a CUDA GPU: on a GPU machine "
                    "pip install -e '.[vllm]', or on CPU see bench/check_vllm_cpu.sh")
    else:
        vllm_why = "not installed: pip install -e '.[vllm]'"
    rows.append(_import_check("vllm", "vllm", vllm_why))
    rows.append(_import_check("gguf", "gguf", "not installed: pip install -e '.[models]'"))
    rows.append(_import_check("ray", "ray", "not installed: pip install -e '.[ray]' "
                              "(--engine ray: the caching job and media on a Ray cluster)"))
    from workbench.models import gemma_available, minilm_path

    try:
        rows.append(("model minilm", True, str(minilm_path())))
    except FileNotFoundError as e:
        rows.append(("model minilm", False, str(e)))
    ok, detail = gemma_available()
    rows.append(("model gemma3-270m", ok, detail))
    rows.append(("HF_HUB_OFFLINE", None, os.environ.get("HF_HUB_OFFLINE", "unset")))
    return rows
