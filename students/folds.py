"""K-fold cross-validation splits (``train.folds``): a small dataset's protocol.

With a few hundred labelled samples, one validation split of a few dozen picks
checkpoints by noise. :func:`fold_split` pools the train and valid samples and cuts them
into ``k`` folds: fold ``i`` validates, the other ``k - 1`` train. The folds are
stratified -- samples are ordered by their gold label (class, or score) and dealt to
the folds in turn -- so every fold sees the label distribution of the pool, and the
order within a label is a seeded hash of the sample id, so the assignment depends only
on (seed, ids, labels), never on file order. The test split is never part of the pool.
"""

from __future__ import annotations

import hashlib

from workbench.data import Sample


def _gold(sample: Sample, classification: bool) -> float:
    value = sample.label_class if classification else sample.label
    return float("inf") if value is None else float(value)


def fold_of(samples: list[Sample], folds: int, seed: int, classification: bool
            ) -> dict[str, int]:
    """Each sample id's fold in ``0..folds-1`` (stratified by gold label, seeded)."""
    def rank(s: Sample) -> tuple[float, str]:
        return (_gold(s, classification),
                hashlib.sha256(f"{seed}\x00{s.id}".encode()).hexdigest())

    return {s.id: i % folds for i, s in enumerate(sorted(samples, key=rank))}


def fold_split(train: list[Sample], valid: list[Sample], *, folds: int, fold: int, seed: int,
               classification: bool) -> tuple[list[Sample], list[Sample]]:
    """(train, valid) of fold ``fold``: the pooled train + valid samples outside that fold,
    and those in it (each in the pool's order)."""
    pool = train + valid
    where = fold_of(pool, folds, seed, classification)
    return ([s for s in pool if where[s.id] != fold], [s for s in pool if where[s.id] == fold])
