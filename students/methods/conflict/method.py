"""The conflict-aware penalty and statistical loss as a method: the train split's label
statistics read before training, two terms in the step."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torch import Tensor

from students.methods.base import Method, Step, StudentView
from students.methods.conflict.penalty import conflict_losses, label_statistics
from students.outputs import StudentOutput
from workbench.config import ConflictConfig

if TYPE_CHECKING:
    from workbench.data.schema import Sample
    from workbench.data.store import DataInfo

log = logging.getLogger(__name__)


class Conflict(Method):
    """Gradient-conflict penalty + statistical loss (:mod:`.penalty`); ``train.conflict``."""

    name = "conflict"
    section = "train"
    cfg: ConflictConfig

    def __init__(self, cfg: ConflictConfig, label_stats: Sequence[float] | None = None
                 ) -> None:
        super().__init__(cfg)
        self.label_stats = tuple(label_stats) if label_stats is not None else None
        """The train split's :func:`~.penalty.label_statistics` (set by :meth:`prepare`)."""

    def prepare(self, samples: list[Sample], info: DataInfo) -> None:
        classification = info.task == "classification"
        labels = [s.label_class if classification else s.label for s in samples]
        self.label_stats = label_statistics([y for y in labels if y is not None],
                                            classification=classification,
                                            n_classes=len(info.class_names))
        log.info("statistical loss: train gold-label statistics %s",
                 ", ".join(f"{v:.4f}" for v in self.label_stats))

    def losses(self, model: StudentView, out: StudentOutput, batch: dict[str, Any],
               step: Step) -> dict[str, Tensor]:
        return conflict_losses(model, out, batch, self.cfg, task_kind=step.task_kind,
                               classification=step.classification,
                               label_stats=self.label_stats)

    def weighted(self, terms: dict[str, Tensor]) -> list[Tensor]:
        return [self.cfg.weight * terms["conflict"],
                self.cfg.statistical_weight * terms["statistical"]]
