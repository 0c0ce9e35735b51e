"""What every schema module shares: the error type, the check helper, the fixed names."""

from __future__ import annotations

from typing import Any

from workbench.errors import WorkbenchError

MODALITIES = ("text", "audio", "vision")
SPLITS = ("train", "valid", "test")


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
        raise ConfigError(f"{field_name}={value!r} is invalid: {fix}", key=field_name)
