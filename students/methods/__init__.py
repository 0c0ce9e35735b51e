"""The training methods, one folder each, behind the :class:`~students.methods.base.Method`
protocol; :data:`METHODS` is the explicit list of them.

A method's config object sits in its ``section`` of a recipe under its name
(``train.msmix``, ``student.cyin``, ...) and is switched by its ``enabled`` field; every
method is off by default and several may be on at once. :func:`active` gives the method
objects a config switches on, in the order of :data:`METHODS` (which is the order their
terms add to the loss and their ``encode`` hooks run).

Adding a method: a folder here holding its modules, its loss and a :class:`Method`
subclass; one line in :data:`METHODS`; its config object in
:mod:`workbench.config.methods`, a field of ``StudentConfig`` or ``TrainConfig``
(``CONTRIBUTING.md`` walks through it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from students.methods.base import BuildContext, Method, Step
from students.methods.conflict import Conflict
from students.methods.cyin import Cyin
from students.methods.dashfusion import DashFusion
from students.methods.enhance import Enhance
from students.methods.midg import Midg
from students.methods.missing import Missing
from students.methods.msmix import MsMix

if TYPE_CHECKING:
    from workbench.config import StudentConfig, TrainConfig

METHODS: dict[str, type[Method]] = {
    "msmix": MsMix,
    "conflict": Conflict,
    "dashfusion": DashFusion,
    "cyin": Cyin,
    "enhance": Enhance,
    "midg": Midg,
    "missing": Missing,
}
"""Every method by name (the name of its config object), in the order their hooks run."""


def active(student: StudentConfig, train: TrainConfig | None = None) -> list[Method]:
    """The methods ``student`` and ``train`` switch on, built from their config objects,
    in :data:`METHODS` order. Without ``train`` only the ``student`` methods: those of a
    model rebuilt from its checkpoint."""
    sections = {"student": student, "train": train}
    out = []
    for name, cls in METHODS.items():
        section = sections[cls.section]
        cfg = getattr(section, name) if section is not None else None
        if cfg is not None and cfg.enabled:
            out.append(cls(cfg))
    return out


def without_training_methods(train: TrainConfig) -> None:
    """Switch every ``train`` method of ``train`` off (its object back to the defaults)."""
    for name, cls in METHODS.items():
        if cls.section == "train":
            setattr(train, name, type(getattr(train, name))())


__all__ = ["METHODS", "BuildContext", "Conflict", "Cyin", "DashFusion", "Enhance", "Method",
           "Midg", "Missing", "MsMix", "Step", "active", "without_training_methods"]
