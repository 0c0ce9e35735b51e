"""Cross-dataset evaluation: a student trained on one dataset, reported on another whose
labels are of another kind, through a declared mapping of scores to classes.

The mapping is a list of thresholds ``t_1 < ... < t_{C-1}`` over the regression scale: a
score ``s`` is class ``#{k : s > t_k}`` (:func:`score_to_class`), e.g. ``[-0.5, 0.5]``
maps MOSI's [-3, 3] to negative / neutral / positive (0 / 1 / 2) for MELD's three
sentiment classes, whose class names must be in that order (negative first).

* a **regression** student on a **classification** set: its predicted scores go through
  the mapping and are compared with the gold classes;
* a **classification** student on a **regression** set: the gold scores go through the
  mapping and are compared with the predicted classes;
* same kind on both sides: compared directly (classification: same class count).

Metrics are the ``classification`` set (accuracy, weighted and macro F1) whenever a
mapping is involved. The student reads only the modalities both datasets have in common
with it (text for MOSI vs MELD); the other dataset's fingerprint is not checked (it is
another dataset by design), its feature sizes are, for the modalities the student reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eval.data import labels_of, load_data, split_samples
from eval.options import EvalError
from students.checkpoint import load_checkpoint, read_meta
from students.inference import predict
from workbench.config import DataConfig
from workbench.metrics import compute_metrics


def score_to_class(scores: Sequence[float] | np.ndarray, thresholds: Sequence[float]
                   ) -> np.ndarray:
    """Class ids: the number of ``thresholds`` each score is strictly above."""
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim != 1 or len(t) == 0 or np.any(np.diff(t) <= 0):
        raise EvalError(f"score-to-class thresholds {list(thresholds)}: give at least one, "
                        "strictly increasing (e.g. -0.5,0.5 for negative / neutral / positive)")
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    return (s[:, None] > t[None, :]).sum(1).astype(np.int64)


@dataclass
class CrossResult:
    checkpoint: str
    trained_on: str
    reported_on: str
    split: str
    n_samples: int
    mapping: str
    metrics: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def evaluate_cross(path: str | Path, data: DataConfig, split: str = "test",
                   thresholds: Sequence[float] = (), batch_size: int = 64) -> CrossResult:
    """Report checkpoint ``path`` on dataset ``data`` (see the module docstring)."""
    p = Path(path)
    meta = read_meta(p)
    src = meta.info
    ds = load_data(data, "--data", p)
    dst = ds.info
    missing = [m for m in src.feature_dims if m not in dst.feature_dims]
    if missing or "text" not in dst.modalities:
        raise EvalError(f"checkpoint {p} reads {['text', *src.feature_dims]}, dataset "
                        f"{dst.name!r} has {dst.modalities}; train the student on the "
                        "modalities both datasets have (e.g. data.modalities=[text])")
    bad = [m for m in src.feature_dims if src.feature_dims[m] != dst.feature_dims[m]]
    if bad:
        raise EvalError(f"checkpoint {p} and dataset {dst.name!r} differ in feature sizes of "
                        f"{bad}; they cannot be compared")
    samples = split_samples(ds, split, dst)
    labels = labels_of(samples, dst)
    model, _, _ = load_checkpoint(p, device="cpu")
    preds = predict(model, samples, batch_size)
    kinds = (src.task, dst.task)
    if kinds == ("regression", "regression"):
        return CrossResult(str(p), src.name, dst.name, split, len(samples), "none",
                           compute_metrics(dst.metric_set, preds, labels))
    if kinds == ("classification", "classification"):
        if len(src.class_names) != len(dst.class_names):
            raise EvalError(f"checkpoint {p} predicts {len(src.class_names)} classes, dataset "
                            f"{dst.name!r} has {len(dst.class_names)}")
        return CrossResult(str(p), src.name, dst.name, split, len(samples), "none",
                           compute_metrics("classification", preds, labels))
    if not thresholds:
        raise EvalError(f"checkpoint {p} is {src.task}, dataset {dst.name!r} is {dst.task}: "
                        "declare the mapping of scores to classes (--score-classes, e.g. "
                        "-0.5,0.5)")
    n_classes = len(thresholds) + 1
    names = dst.class_names if dst.task == "classification" else src.class_names
    if len(names) != n_classes:
        raise EvalError(f"--score-classes gives {n_classes} classes but the classification "
                        f"side has {len(names)} ({names}); give {len(names) - 1} thresholds")
    if src.task == "regression":
        pred_cls, gold = score_to_class(preds, thresholds), labels
    else:
        pred_cls, gold = np.asarray(preds).argmax(1), score_to_class(labels, thresholds)
    mapping = f"score > {list(thresholds)} -> classes {list(names)}"
    return CrossResult(str(p), src.name, dst.name, split, len(samples), mapping,
                       compute_metrics("classification", pred_cls, gold))
