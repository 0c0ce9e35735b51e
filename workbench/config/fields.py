"""What every schema module shares: the error type, the check helper, the fixed names."""

from __future__ import annotations

import reprlib
from typing import Any

from workbench.errors import WorkbenchError

MODALITIES = ("text", "audio", "vision")
SPLITS = ("train", "valid", "test")


SHOWN_CHARS = 200
"""The most characters of a value an error message shows (:func:`short_repr`)."""

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 4, 40, 40, 40
_REPR.maxset = _REPR.maxfrozenset = 40
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 4 * SHOWN_CHARS


def short_repr(value: Any, limit: int = SHOWN_CHARS, quote: bool = True) -> str:
    """``repr(value)`` (``str`` with ``quote=False``) cut to ``limit`` characters plus
    '…', for error messages. A large value costs no more than its first items: nested
    lists and mappings are walked only a few levels and items deep."""
    if quote:
        text = _REPR.repr(value)
    else:
        text = str(value)
    return text if len(text) <= limit else text[:limit] + "…"


class ConfigError(WorkbenchError, ValueError):
    """A config value, key or file is wrong. The message says where and what to do."""

    key: str | None = None
    """The dotted key the error is about, where known (the loader uses it to say whether a
    command-line override or the YAML file gave that key)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        if key is not None:
            self.key = key


def check(cond: bool, field_name: str, value: Any, fix: str) -> None:
    """Raise ``ConfigError("<field>=<value> is invalid: <fix>")`` unless ``cond``."""
    if not cond:
        raise ConfigError(f"{field_name}={short_repr(value)} is invalid: {fix}",
                          key=field_name)
