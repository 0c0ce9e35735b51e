"""Config keys that were renamed, mapped once on load so old files keep loading.

Recipes, run directories and checkpoints written before the methods got one config object
each (:mod:`workbench.config.methods`) use flat keys such as ``train.msmix_alpha`` or
``loss.conflict_tau``. :func:`migrate` moves them to their new place before the keys are
checked, and logs one deprecation note naming every key it moved. A bool where a method
object now stands (``train.msmix: true``) needs no mapping: the loader reads it as the
object's ``enabled``.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

log = logging.getLogger("workbench.config")

TRAIN = {
    "msmix_alpha": "msmix.alpha",
    "msmix_threshold": "msmix.threshold",
    "conflict_penalty": "conflict.enabled",
    "augment_data": "augment.data",
    "missing_train": "missing.enabled",
    "missing_complete_fraction": "missing.complete_fraction",
}
STUDENT = {
    "enhance_k": "enhance.k",
    "enhance_bank": "enhance.bank",
    "enhance_temperature": "enhance.temperature",
}
LOSS = {
    "msmix": "train.msmix.weight",
    "msmix_kl": "train.msmix.kl_weight",
    "msmix_intensity": "train.msmix.intensity_weight",
    "conflict": "train.conflict.weight",
    "conflict_tau": "train.conflict.tau",
    "statistical": "train.conflict.statistical_weight",
}

RENAMED: dict[str, dict[str, str]] = {
    "DistillConfig": {**{f"loss.{k}": v for k, v in LOSS.items()},
                      **{f"train.{k}": f"train.{v}" for k, v in TRAIN.items()},
                      **{f"student.{k}": f"student.{v}" for k, v in STUDENT.items()}},
    "TrainConfig": TRAIN,
    "StudentConfig": STUDENT,
}
"""Per config class: old dotted key (relative to that class) -> new dotted key."""


def _pop(data: dict[str, Any], path: list[str]) -> tuple[bool, Any]:
    node: Any = data
    for part in path[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            return False, None
    if path[-1] not in node:
        return False, None
    return True, node.pop(path[-1])


def _put(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if isinstance(child, bool):  # a method's switch given alone
            child = {"enabled": child}
        elif child is None:
            child = {}
        elif not isinstance(child, dict):
            return  # not a section: leave it for the key check to report
        node[part] = child
        node = child
    node.setdefault(path[-1], value)


def migrate(cls_name: str, data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``data`` (a copy) with the old keys of ``cls_name`` moved to their new places; one
    deprecation note lists what moved. A key given both ways keeps the new one."""
    table = RENAMED.get(cls_name)
    if not table or not isinstance(data, dict):
        return data
    out = copy.deepcopy(data)
    moved = []
    for old, new in table.items():
        found, value = _pop(out, old.split("."))
        if found:
            _put(out, new.split("."), value)
            moved.append(f"{prefix}{old} -> {prefix}{new}")
    if moved:
        log.warning("config: renamed keys mapped (%s); the old names still load but will "
                    "go: write the new ones (see workbench/config/methods.py)",
                    ", ".join(moved))
    return out
