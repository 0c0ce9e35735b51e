"""Config keys that were renamed, mapped once on load so old files keep loading.

Recipes, run directories and checkpoints written before the methods got one config object
each (:mod:`workbench.config.methods`) use flat keys such as ``train.msmix_alpha`` or
``loss.conflict_tau``. :func:`migrate` moves them to their new place before the keys are
checked, and logs one deprecation note naming every key it moved. A bool where a method
object now stands (``train.msmix: true``) needs no mapping: the loader reads it as the
object's ``enabled``. A choice that is now an object's switch (``student.fusion:
dashfusion``, ``student.latent: cyin``, ``student.experts: midg``, ``train.weighting:
quality``, ``train.privileged: prompted``) becomes that object's ``enabled``.

Checkpoints written before the methods' parts moved into the student's ``methods``
ModuleDict hold them under their old names (``enhance.bank_text``, ...):
:func:`migrate_weights` renames them when the student loads them, with one note too.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from workbench.config.fields import ConfigError, short_repr

log = logging.getLogger("workbench.config")

TRAIN = {
    "msmix_alpha": "msmix.alpha",
    "msmix_threshold": "msmix.threshold",
    "conflict_penalty": "conflict.enabled",
    "augment_data": "augment.data",
    "missing_train": "missing.enabled",
    "missing_complete_fraction": "missing.complete_fraction",
    "weight_floor": "weighting.floor",
    "weight_agreement_scale": "weighting.agreement_scale",
    "prompted_checkpoint": "privileged.checkpoint",
    "prompted_epochs": "privileged.epochs",
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
    "privileged_pred": "train.privileged.pred_weight",
    "privileged_repr": "train.privileged.repr_weight",
    "privileged_repr_kind": "train.privileged.repr_kind",
    "privileged_attn": "train.privileged.attn_weight",
}

RENAMED: dict[str, dict[str, str]] = {
    "DistillConfig": {**{f"loss.{k}": v for k, v in LOSS.items()},
                      **{f"train.{k}": f"train.{v}" for k, v in TRAIN.items()},
                      **{f"student.{k}": f"student.{v}" for k, v in STUDENT.items()}},
    "TrainConfig": TRAIN,
    "StudentConfig": STUDENT,
}
"""Per config class: old dotted key (relative to that class) -> new dotted key."""

STUDENT_SWITCHES: dict[str, tuple[str, dict[str, bool]]] = {
    "fusion": ("dashfusion.enabled", {"dashfusion": True, "gated": False}),
    "latent": ("cyin.enabled", {"cyin": True, "none": False}),
    "experts": ("midg.enabled", {"midg": True, "none": False}),
}
TRAIN_SWITCHES: dict[str, tuple[str, dict[str, bool]]] = {
    "weighting": ("weighting.enabled", {"quality": True, "none": False}),
    "privileged": ("privileged.enabled", {"prompted": True, "none": False}),
}
"""Old choices that are now an object's switch: old key -> (new key, old value -> on)."""

SWITCHED: dict[str, dict[str, tuple[str, dict[str, bool]]]] = {
    "DistillConfig": {**{f"student.{k}": (f"student.{n}", v)
                         for k, (n, v) in STUDENT_SWITCHES.items()},
                      **{f"train.{k}": (f"train.{n}", v)
                         for k, (n, v) in TRAIN_SWITCHES.items()}},
    "StudentConfig": STUDENT_SWITCHES,
    "TrainConfig": TRAIN_SWITCHES,
}
"""Per config class: old dotted key -> (new dotted key, old value -> the new bool)."""


def old_choice(cls_name: str, key: str, value: Any) -> bool:
    """Whether ``value`` at ``key`` of ``cls_name`` is an old choice that :func:`migrate`
    turns into an object's switch (``train.weighting: quality``), not a file to include."""
    entry = SWITCHED.get(cls_name, {}).get(key)
    return entry is not None and isinstance(value, str) and value in entry[1]


def _pop(data: dict[str, Any], path: list[str]) -> tuple[bool, Any]:
    node: Any = data
    for part in path[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            return False, None
    if path[-1] not in node:
        return False, None
    return True, node.pop(path[-1])


def _peek(data: dict[str, Any], path: list[str]) -> Any:
    node: Any = data
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    return node


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
    table = RENAMED.get(cls_name, {})
    switched = SWITCHED.get(cls_name, {})
    if not (table or switched) or not isinstance(data, dict):
        return data
    out = copy.deepcopy(data)
    moved = []
    for old, (new, values) in switched.items():
        if not isinstance(_peek(out, old.split(".")), str):
            continue  # absent, or already the new object
        _, value = _pop(out, old.split("."))
        if value not in values:
            raise ConfigError(f"{prefix}{old}={short_repr(value)} is not allowed: use one of "
                              f"{list(values)}, or as now written {prefix}{new}=true|false")
        _put(out, new.split("."), values[value])
        moved.append(f"{prefix}{old}={value} -> {prefix}{new}={str(values[value]).lower()}")
    for old, new in table.items():
        found, value = _pop(out, old.split("."))
        if found:
            _put(out, new.split("."), value)
            moved.append(f"{prefix}{old} -> {prefix}{new}")
    if moved:
        _note_once(f"config: renamed keys mapped ({', '.join(moved)}); the old names still "
                   "load but will go: write the new ones (see workbench/config/methods.py, "
                   "train.py)")
    return out


_NOTED: set[str] = set()
"""The notes given so far in this process."""


def _note_once(note: str) -> None:
    """Log ``note`` as a warning the first time this process meets it: a checkpoint's
    config read by several steps of one command gets one note, not one per read."""
    if note not in _NOTED:
        _NOTED.add(note)
        log.warning("%s", note)


WEIGHTS: dict[str, str] = {
    "enhance.": "methods.enhance.",
    "latent.": "methods.cyin.",
    "experts.": "methods.midg.experts.",
    "adapter.": "methods.midg.adapter.",
}
"""Old state-dict prefix of a method's parts -> where the student keeps them now."""


def migrate_weights(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` (a state dict, keys to tensors) with the weights saved under an old name
    (:data:`WEIGHTS`) renamed, or ``state`` itself when it has none; one note names the
    prefixes it renamed. Keys are strings here: this module needs no torch."""
    if not any(key.startswith(tuple(WEIGHTS)) for key in state):
        return state
    out: dict[str, Any] = {}
    moved: dict[str, str] = {}
    for key, value in state.items():
        for old, new in WEIGHTS.items():
            if key.startswith(old):
                moved[old] = new
                key = new + key[len(old):]
                break
        out[key] = value
    if moved:
        _note_once("weights saved under old names mapped ("
                   + ", ".join(f"{o}* -> {n}*" for o, n in moved.items())
                   + "); re-save the checkpoint to write the new ones")
    return out
