"""Quiet by default: the workbench's own progress and results, other libraries' chatter
behind ``-v``.

Shared by the ``workbench`` command and ``distill.py``. Without ``verbose`` the libraries
below log warnings only (transformers errors only: its warnings are advice and
deprecations), their Python ``FutureWarning`` / ``DeprecationWarning`` are ignored, and
the Hugging Face weight-loading progress bars are off. Nothing here imports those
libraries: a library not imported yet is set up through its environment variables, one
already imported through its own API.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

CHATTY = ("accelerate", "transformers", "peft", "datasets", "huggingface_hub", "torch",
          "tokenizers", "sentence_transformers", "gguf", "vllm", "llama_cpp", "bitsandbytes")
"""Libraries whose INFO lines (accelerate's "Saving current state to ...", ...) and
warnings only ``-v`` shows."""

PLUMBING = ("httpx", "httpx2", "httpcore", "openai", "urllib3", "filelock", "fsspec", "matplotlib",
            "PIL", "asyncio", "h5py")
"""Transport and plotting internals: WARNING even with ``-v`` (their DEBUG lines say nothing
about a run)."""

_QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
}
_set_by_us: set[str] = set()
_filters_added: list[tuple] = []


def _quiet_env(verbose: bool) -> None:
    """Environment for libraries not imported yet; a value the user set is left alone."""
    for key, value in _QUIET_ENV.items():
        if verbose:
            if key in _set_by_us:
                os.environ.pop(key, None)
                _set_by_us.discard(key)
        elif key not in os.environ:
            os.environ[key] = value
            _set_by_us.add(key)


def _quiet_imported(verbose: bool) -> None:
    """The same for libraries this process has imported already (their own switches)."""
    if "transformers" in sys.modules:
        from transformers.utils import logging as tf_logging

        if verbose:
            tf_logging.set_verbosity_info()
            tf_logging.enable_progress_bar()
        else:
            tf_logging.set_verbosity_error()
            tf_logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

        with warnings.catch_warnings():  # "cannot enable": its environment variable wins
            warnings.simplefilter("ignore")
            (enable_progress_bars if verbose else disable_progress_bars)()


def quiet_libraries(verbose: bool) -> None:
    """Other libraries' logging, warnings and progress bars: on with ``verbose``, else off."""
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    for name in PLUMBING:
        logging.getLogger(name).setLevel(logging.WARNING)
    _quiet_env(verbose)
    _quiet_imported(verbose)
    for f in _filters_added:  # a verbose run after a quiet one in this process (tests)
        if f in warnings.filters:
            warnings.filters.remove(f)
            getattr(warnings, "_filters_mutated", lambda: None)()  # drop cached decisions
    _filters_added.clear()
    if verbose:
        return
    for category in (FutureWarning, DeprecationWarning):
        for name in CHATTY:
            warnings.filterwarnings("ignore", category=category, module=rf"{name}(\.|$)")
            _filters_added.append(warnings.filters[0])
