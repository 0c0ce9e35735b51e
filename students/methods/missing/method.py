"""LNLN missing-modality training as a method: each epoch's training batches masked with
random per-sample, per-modality rates (:func:`students.robustness.lnln_train`; the masks
themselves, also used by evaluation's missing-rate sweeps, live in
:mod:`students.robustness`)."""

from __future__ import annotations

from students.methods.base import Method
from students.robustness import MaskSpec, lnln_train
from workbench.config import MissingConfig


class Missing(Method):
    """Half the samples complete, the rest with U(0, 1) missing rates; ``train.missing``."""

    name = "missing"
    section = "train"
    cfg: MissingConfig

    def masking(self, seed: int, epoch: int, streams: tuple[str, ...]) -> MaskSpec:
        return lnln_train(seed, epoch, self.cfg.complete_fraction, streams)
