"""Standard MSA metrics, computed exactly as the MMSA toolkit computes them.

The reference is ``MMSA/utils/metricsTop.py`` in thuiar/MMSA (``MetricsTop``), the code most
published MOSI / MOSEI / CH-SIMS numbers come from. Every function here is pure: numpy arrays
in, plain Python floats out. Accuracies and F1 scores are fractions in ``[0, 1]``; reports
multiply them by 100.

Metric sets and their metric names (stable; used in results files and for model selection):

``"mosi"`` (CMU-MOSI / CMU-MOSEI regression, labels in ``[-3, 3]``)
    ``acc2_has0``  binary accuracy, classes ``y >= 0`` vs ``y < 0`` (same for predictions)
    ``f1_has0``    weighted F1 for the same two classes
    ``acc2_non0``  binary accuracy on the samples whose label is not exactly 0, classes
                   ``y > 0`` vs ``y <= 0`` (same for predictions)
    ``f1_non0``    weighted F1 for the same samples and classes
    ``acc7``       both clipped to ``[-3, 3]``, rounded half-to-even (``np.round``), equal
    ``acc5``       the same on ``[-2, 2]``
    ``acc3``       the same on ``[-1, 1]`` (MMSA computes it but leaves it out of its dict)
    ``mae``        mean absolute error on the unclipped values
    ``corr``       Pearson correlation on the unclipped values

``"sims"`` (CH-SIMS regression, labels in ``[-1, 1]``); both are clipped to ``[-1, 1]`` first
    ``acc2``  bins ``[-1, 0]``, ``(0, 1]`` (0 counts as negative)
    ``acc3``  bins ``[-1, -0.1]``, ``(-0.1, 0.1]``, ``(0.1, 1]``
    ``acc5``  bins ``[-1, -0.7]``, ``(-0.7, -0.1]``, ``(-0.1, 0.1]``, ``(0.1, 0.7]``, ``(0.7, 1]``
    ``f1``    weighted F1 on the two ``acc2`` bins
    ``mae``   mean absolute error on the clipped values
    ``corr``  Pearson correlation on the clipped values

``"classification"`` (integer classes; predictions are class ids or ``(N, C)`` logits)
    ``acc``          accuracy
    ``f1_weighted``  F1 averaged over classes weighted by their support in the labels
    ``f1_macro``     F1 averaged over classes, unweighted

Conventions (where this differs from MMSA, or where MMSA's behaviour needs saying):

- Values are not rounded (MMSA rounds MOSI results to 4 decimals); reports format them.
- MAE, correlation and the MOSI metrics are computed in float64 (MMSA uses the float32 tensors
  a model returns; MAE and Corr may differ from it in the 7th digit, nothing else does).
- SIMS bin edges are compared in the input's own floating precision: a float32 input against
  float32 edges, as in MMSA (NumPy compares a float32 array with a Python float in float32).
  So float32(0.1), which is slightly above the real 0.1, still falls in the bin below the 0.1
  edge, just as float64 0.1 does; comparing it with a float64 edge would move it up a bin.
- Pearson correlation is 0.0, not NaN, when either side is constant (e.g. a collapsed model
  that predicts one value); a warning is logged.
- ``acc2_non0`` / ``f1_non0`` are NaN (with a warning) when every label is exactly 0, since
  they are undefined there; everything else is still computed.
- Weighted F1 always calls ``f1_score(y_true, y_pred, average="weighted")``. The swapped call
  (predictions first) weights classes by predicted counts and inflated published numbers
  (thuiar/MMSA issue #17).

Inputs are rejected with a ``ValueError`` that names the problem when they are empty, of
different lengths, of the wrong shape, or contain NaN / infinite values.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.metrics import f1_score

log = logging.getLogger(__name__)

MOSI_METRICS: tuple[str, ...] = (
    "acc2_has0", "f1_has0", "acc2_non0", "f1_non0", "acc7", "acc5", "acc3", "mae", "corr",
)
SIMS_METRICS: tuple[str, ...] = ("acc2", "acc3", "acc5", "f1", "mae", "corr")
CLASSIFICATION_METRICS: tuple[str, ...] = ("acc", "f1_weighted", "f1_macro")

METRIC_NAMES: dict[str, tuple[str, ...]] = {
    "mosi": MOSI_METRICS,
    "sims": SIMS_METRICS,
    "classification": CLASSIFICATION_METRICS,
}
"""Metric names each metric set returns, in display order."""

HIGHER_IS_BETTER: dict[str, bool] = {
    "acc2_has0": True,
    "f1_has0": True,
    "acc2_non0": True,
    "f1_non0": True,
    "acc7": True,
    "acc5": True,
    "acc3": True,
    "acc2": True,
    "f1": True,
    "mae": False,
    "corr": True,
    "acc": True,
    "f1_weighted": True,
    "f1_macro": True,
}
"""For every metric name: True when a larger value is better (everything but ``mae``)."""

SIMS_EDGES_2: tuple[float, ...] = (0.0,)
SIMS_EDGES_3: tuple[float, ...] = (-0.1, 0.1)
SIMS_EDGES_5: tuple[float, ...] = (-0.7, -0.1, 0.1, 0.7)
"""Inner edges of the SIMS bins; every bin is closed on the right: ``(edge_i, edge_i+1]``."""


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is better (for checkpoint selection).

    Accepts a bare metric name (``"mae"``) or one with a split prefix (``"valid_mae"``).
    """
    name = metric
    if name not in HIGHER_IS_BETTER and "_" in name:
        prefix, rest = name.split("_", 1)
        if prefix in ("train", "valid", "test") and rest in HIGHER_IS_BETTER:
            name = rest
    if name not in HIGHER_IS_BETTER:
        raise ValueError(
            f"unknown metric {metric!r}; known metrics: {sorted(HIGHER_IS_BETTER)}"
        )
    return HIGHER_IS_BETTER[name]


# --------------------------------------------------------------------------- input checks


def _as_vector(values: ArrayLike, what: str) -> NDArray[np.float64]:
    """``values`` as a 1-D float64 array; a trailing axis of size 1 is dropped."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D (or (N, 1)); got shape {arr.shape}")
    return arr


def _check_pair(preds: NDArray, labels: NDArray) -> None:
    """Raise ``ValueError`` for empty, mismatched or non-finite inputs."""
    if len(preds) != len(labels):
        raise ValueError(
            f"length mismatch: {len(preds)} predictions vs {len(labels)} labels"
        )
    if len(labels) == 0:
        raise ValueError("empty input: no predictions and labels to score")
    for what, arr in (("predictions", preds), ("labels", labels)):
        bad = ~np.isfinite(arr)
        if bad.any():
            first = np.flatnonzero(bad)[:5].tolist()
            n_nan = int(np.isnan(arr).sum())
            n_inf = int(bad.sum()) - n_nan
            raise ValueError(
                f"{what} contain {n_nan} NaN and {n_inf} infinite value(s) "
                f"(first at indices {first})"
            )


def _regression_pair(preds: ArrayLike, labels: ArrayLike) -> tuple[NDArray, NDArray]:
    p = _as_vector(preds, "predictions")
    y = _as_vector(labels, "labels")
    _check_pair(p, y)
    return p, y


# --------------------------------------------------------------------------- building blocks


def mae(preds: ArrayLike, labels: ArrayLike) -> float:
    """Mean absolute error ``mean(|pred - label|)``."""
    p, y = _regression_pair(preds, labels)
    return float(np.mean(np.abs(p - y)))


def pearson(preds: ArrayLike, labels: ArrayLike) -> float:
    """Pearson correlation of predictions and labels.

    Returns 0.0 (and logs a warning) when either side is constant, where the coefficient is
    undefined and ``np.corrcoef`` would give NaN.
    """
    p, y = _regression_pair(preds, labels)
    dp = p - p.mean()
    dy = y - y.mean()
    sp = float(np.sqrt(np.sum(dp * dp)))
    sy = float(np.sqrt(np.sum(dy * dy)))
    if sp == 0.0 or sy == 0.0:
        which = "predictions" if sp == 0.0 else "labels"
        log.warning("correlation undefined: %s are constant; reporting corr = 0.0", which)
        return 0.0
    r = float(np.sum(dp * dy) / (sp * sy))
    return float(np.clip(r, -1.0, 1.0))


def multiclass_acc(preds: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of samples where ``np.round(pred) == np.round(label)``.

    ``np.round`` rounds half to even: 2.5 -> 2, 1.5 -> 2, -0.5 -> -0 (equal to 0).
    Callers clip both sides first (acc7: [-3, 3], acc5: [-2, 2], acc3: [-1, 1]).
    """
    p, y = _regression_pair(preds, labels)
    return float(np.mean(np.round(p) == np.round(y)))


def clipped_acc(preds: ArrayLike, labels: ArrayLike, bound: float) -> float:
    """``multiclass_acc`` after clipping both sides to ``[-bound, bound]``."""
    p, y = _regression_pair(preds, labels)
    return multiclass_acc(np.clip(p, -bound, bound), np.clip(y, -bound, bound))


def weighted_f1(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Support-weighted F1 with the labels first, as scikit-learn defines its arguments."""
    return float(f1_score(np.asarray(y_true), np.asarray(y_pred), average="weighted"))


def binary_has0(preds: ArrayLike, labels: ArrayLike) -> tuple[float, float]:
    """(accuracy, weighted F1) for the classes ``>= 0`` vs ``< 0`` on all samples."""
    p, y = _regression_pair(preds, labels)
    yb = y >= 0
    pb = p >= 0
    return float(np.mean(yb == pb)), weighted_f1(yb, pb)


def binary_non0(preds: ArrayLike, labels: ArrayLike) -> tuple[float, float]:
    """(accuracy, weighted F1) for ``> 0`` vs ``<= 0`` on the samples whose label != 0.

    Returns ``(nan, nan)`` and logs a warning when every label is exactly 0.
    """
    p, y = _regression_pair(preds, labels)
    keep = y != 0
    if not keep.any():
        log.warning("every label is 0: acc2_non0 / f1_non0 are undefined; reporting NaN")
        return float("nan"), float("nan")
    yb = y[keep] > 0
    pb = p[keep] > 0
    return float(np.mean(yb == pb)), weighted_f1(yb, pb)


def sims_bins(values: ArrayLike, edges: tuple[float, ...]) -> NDArray[np.int64]:
    """Bin index of each value for right-closed bins: ``i`` where ``edges[i-1] < v <= edges[i]``.

    With ``edges = (0.0,)`` a value of 0 is bin 0 (negative); with ``(-0.1, 0.1)`` a value of
    0.1 is bin 1 and -0.1 is bin 0. The comparison happens in the floating precision of
    ``values`` (edges are cast to it; non-float input is treated as float64), so a float32
    0.1 sits on the 0.1 edge rather than just above it.
    """
    v = np.asarray(values)
    if not np.issubdtype(v.dtype, np.floating):
        v = v.astype(np.float64)
    return np.digitize(v, np.asarray(edges, dtype=v.dtype), right=True).astype(np.int64)


def _float_dtype(values: ArrayLike) -> np.dtype:
    """The floating dtype ``values`` come in (float64 for ints, lists of Python floats, ...)."""
    dtype = np.asarray(values).dtype
    return dtype if np.issubdtype(dtype, np.floating) else np.dtype(np.float64)


# --------------------------------------------------------------------------- metric sets


def mosi_metrics(preds: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """MOSI / MOSEI regression metrics (names in ``MOSI_METRICS``), as MMSA computes them."""
    p, y = _regression_pair(preds, labels)
    acc2_has0, f1_has0 = binary_has0(p, y)
    acc2_non0, f1_non0 = binary_non0(p, y)
    return {
        "acc2_has0": acc2_has0,
        "f1_has0": f1_has0,
        "acc2_non0": acc2_non0,
        "f1_non0": f1_non0,
        "acc7": clipped_acc(p, y, 3.0),
        "acc5": clipped_acc(p, y, 2.0),
        "acc3": clipped_acc(p, y, 1.0),
        "mae": mae(p, y),
        "corr": pearson(p, y),
    }


def sims_metrics(preds: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """CH-SIMS regression metrics (names in ``SIMS_METRICS``), as MMSA computes them.

    Both sides are clipped to ``[-1, 1]``; every metric, MAE and correlation included, is
    computed on the clipped values. Bins are assigned in each input's own floating precision
    (see ``sims_bins``); clipping a float32 value and casting it back is exact.
    """
    p, y = _regression_pair(preds, labels)
    p = np.clip(p, -1.0, 1.0)
    y = np.clip(y, -1.0, 1.0)
    pb = p.astype(_float_dtype(preds))
    yb = y.astype(_float_dtype(labels))
    p2, y2 = sims_bins(pb, SIMS_EDGES_2), sims_bins(yb, SIMS_EDGES_2)
    p3, y3 = sims_bins(pb, SIMS_EDGES_3), sims_bins(yb, SIMS_EDGES_3)
    p5, y5 = sims_bins(pb, SIMS_EDGES_5), sims_bins(yb, SIMS_EDGES_5)
    return {
        "acc2": float(np.mean(p2 == y2)),
        "acc3": float(np.mean(p3 == y3)),
        "acc5": float(np.mean(p5 == y5)),
        "f1": weighted_f1(y2, p2),
        "mae": mae(p, y),
        "corr": pearson(p, y),
    }


def _class_ids(values: ArrayLike, what: str) -> NDArray[np.int64]:
    """Integer class ids from ids (1-D, integer-valued) or from ``(N, C)`` scores (argmax)."""
    arr = np.asarray(values)
    if arr.ndim == 2:
        if arr.shape[1] == 1:
            arr = arr[:, 0]
        else:
            scores = arr.astype(np.float64)
            if scores.size and not np.isfinite(scores).all():
                raise ValueError(f"{what} contain NaN / non-finite scores")
            return np.argmax(scores, axis=1).astype(np.int64)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be class ids (N,) or scores (N, C); got shape {arr.shape}")
    as_float = arr.astype(np.float64)
    if as_float.size and not np.isfinite(as_float).all():
        raise ValueError(f"{what} contain NaN / non-finite values")
    ids = np.rint(as_float)
    if not np.array_equal(ids, as_float):
        raise ValueError(
            f"{what} must be integer class ids or (N, C) scores; got non-integer values "
            "(pass logits as a 2-D array to take the argmax)"
        )
    return ids.astype(np.int64)


def classification_metrics(preds: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """Accuracy, weighted F1 and macro F1 for integer classes.

    ``preds`` are class ids ``(N,)`` or scores / logits ``(N, C)`` (argmax over classes);
    ``labels`` are class ids ``(N,)``.
    """
    p = _class_ids(preds, "predictions")
    y = _class_ids(labels, "labels")
    if len(p) != len(y):
        raise ValueError(f"length mismatch: {len(p)} predictions vs {len(y)} labels")
    if len(y) == 0:
        raise ValueError("empty input: no predictions and labels to score")
    return {
        "acc": float(np.mean(p == y)),
        "f1_weighted": float(f1_score(y, p, average="weighted")),
        "f1_macro": float(f1_score(y, p, average="macro")),
    }


METRIC_SETS: dict[str, Callable[[ArrayLike, ArrayLike], dict[str, float]]] = {
    "mosi": mosi_metrics,
    "sims": sims_metrics,
    "classification": classification_metrics,
}
"""Metric set name -> function ``(preds, labels) -> {metric: value}``."""


def compute_metrics(metric_set: str, preds: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """All metrics of ``metric_set`` (``"mosi"``, ``"sims"`` or ``"classification"``).

    Returns ``{metric name: value}`` with the names listed in ``METRIC_NAMES[metric_set]``,
    in that order. Raises ``ValueError`` for an unknown metric set or invalid inputs.
    """
    fn = METRIC_SETS.get(metric_set)
    if fn is None:
        raise ValueError(
            f"unknown metric_set {metric_set!r}; choose one of {sorted(METRIC_SETS)}"
        )
    return fn(preds, labels)
