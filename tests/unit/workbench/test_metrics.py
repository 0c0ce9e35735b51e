"""workbench.metrics: hand-computed cases, edge cases, and a plain reference on random data."""

from __future__ import annotations

import logging
import math
import statistics

import numpy as np
import pytest
from sklearn.metrics import f1_score

from workbench.metrics import (
    HIGHER_IS_BETTER,
    METRIC_NAMES,
    METRIC_SETS,
    classification_metrics,
    compute_metrics,
    higher_is_better,
    multiclass_acc,
    sims_bins,
)

# A MOSI-scale case worked out by hand (see the comments in each test).
MOSI_PREDS = [2.5, 1.6, -0.5, -0.3, -1.2, 3.7, 0.0, -2.0]
MOSI_LABELS = [2.0, 1.0, 0.0, 0.6, -0.4, 2.4, -0.2, 0.0]


# --------------------------------------------------------------------------- MOSI


def test_round_half_to_even():
    # np.round: 2.5 -> 2, -0.5 -> -0 (== 0), 1.5 -> 2, 0.5 -> 0, -2.5 -> -2
    assert multiclass_acc([2.5, -0.5, 1.5, 0.5, -2.5], [2, 0, 2, 0, -2]) == 1.0
    # rounding half away from zero would have matched every one of these instead
    assert multiclass_acc([2.5, -0.5, 0.5, -2.5], [3, -1, 1, -3]) == 0.0


def test_mosi_multiclass_accuracies_by_hand():
    m = compute_metrics("mosi", MOSI_PREDS, MOSI_LABELS)
    # acc7: preds clipped to [-3,3] and rounded -> [2, 2, -0, -0, -1, 3, 0, -2]
    #       labels rounded                      -> [2, 1,  0,  1, -0, 2, -0, 0]
    assert m["acc7"] == pytest.approx(3 / 8)
    # acc5: preds clipped to [-2,2] -> round [2, 2, -0, -0, -1, 2, 0, -2]
    #       labels clipped         -> round [2, 1,  0,  1, -0, 2, -0, 0]
    assert m["acc5"] == pytest.approx(4 / 8)
    # acc3: preds clipped to [-1,1] -> round [1, 1, -0, -0, -1, 1, 0, -1]
    #       labels clipped         -> round [1, 1,  0,  1, -0, 1, -0, 0]
    assert m["acc3"] == pytest.approx(5 / 8)


def test_mosi_binary_by_hand():
    m = compute_metrics("mosi", MOSI_PREDS, MOSI_LABELS)
    # has0: label >= 0 -> [T,T,T,T,F,T,F,T]; pred >= 0 -> [T,T,F,F,F,T,T,F] (0.0 is positive)
    assert m["acc2_has0"] == pytest.approx(4 / 8)
    # positive: tp 3, fp 1, fn 3 -> F1 0.6; negative: tp 1, fp 3, fn 1 -> F1 1/3
    # weighted by label support (6 positive, 2 negative): (6 * 0.6 + 2 / 3) / 8 = 8/15
    assert m["f1_has0"] == pytest.approx(8 / 15)
    # non0 drops samples 2 and 7 (label 0): labels > 0 [T,T,T,F,T,F], preds > 0 [T,T,F,F,T,F]
    assert m["acc2_non0"] == pytest.approx(5 / 6)
    # positive: tp 3, fp 0, fn 1 -> 6/7; negative: tp 2, fp 1, fn 0 -> 4/5; supports 4 and 2
    assert m["f1_non0"] == pytest.approx((4 * 6 / 7 + 2 * 4 / 5) / 6)


def test_weighted_f1_argument_order_matters():
    """The swapped call (predictions first) weights classes by predicted counts."""
    yb = np.array(MOSI_LABELS) >= 0
    pb = np.array(MOSI_PREDS) >= 0
    assert f1_score(pb, yb, average="weighted") == pytest.approx(7 / 15)  # the wrong order
    m = compute_metrics("mosi", MOSI_PREDS, MOSI_LABELS)
    assert m["f1_has0"] == pytest.approx(8 / 15)
    assert m["f1_has0"] != pytest.approx(7 / 15)


def test_mosi_mae_and_corr_are_unclipped():
    m = compute_metrics("mosi", MOSI_PREDS, MOSI_LABELS)
    # |errors| = 0.5 0.6 0.5 0.9 0.8 1.3 0.2 2.0 (3.7 stays 3.7) -> 6.8 / 8
    assert m["mae"] == pytest.approx(0.85)
    assert m["corr"] == pytest.approx(np.corrcoef(MOSI_PREDS, MOSI_LABELS)[0, 1])
    clipped = np.clip(MOSI_PREDS, -3, 3)
    assert m["corr"] != pytest.approx(np.corrcoef(clipped, MOSI_LABELS)[0, 1])


def test_non0_drops_zero_labels_only():
    # label 0 samples are wrong in every way but must not count
    preds = [1.0, -1.0, 5.0, -5.0]
    labels = [0.5, -0.5, 0.0, 0.0]
    m = compute_metrics("mosi", preds, labels)
    assert m["acc2_non0"] == 1.0
    assert m["f1_non0"] == 1.0
    assert m["acc2_has0"] == pytest.approx(3 / 4)  # label 0 is positive for has0; pred -5 is not


def test_non0_all_zero_labels_is_nan(caplog):
    with caplog.at_level(logging.WARNING, logger="workbench.metrics"):
        m = compute_metrics("mosi", [0.3, -0.2, 0.1], [0.0, 0.0, 0.0])
    assert math.isnan(m["acc2_non0"]) and math.isnan(m["f1_non0"])
    assert m["acc2_has0"] == pytest.approx(2 / 3)
    assert "every label is 0" in caplog.text


def test_constant_prediction_corr_is_zero(caplog):
    with caplog.at_level(logging.WARNING, logger="workbench.metrics"):
        m = compute_metrics("mosi", [0.7] * 5, [-1.0, 0.5, 2.0, -2.0, 1.0])
    assert m["corr"] == 0.0
    assert not any(math.isnan(v) for v in m.values())
    assert "constant" in caplog.text
    s = compute_metrics("sims", [5.0, 3.0, 2.0], [0.2, -0.4, 0.8])  # constant after clipping
    assert s["corr"] == 0.0


def test_column_vectors_accepted():
    a = compute_metrics("mosi", np.array(MOSI_PREDS)[:, None], np.array(MOSI_LABELS))
    b = compute_metrics("mosi", MOSI_PREDS, MOSI_LABELS)
    assert a == b


# --------------------------------------------------------------------------- SIMS


def test_sims_bins_boundaries():
    # acc2: 0 is negative
    assert sims_bins([-1.0, 0.0, 1e-9, 1.0], (0.0,)).tolist() == [0, 0, 1, 1]
    # acc3: (-inf, -0.1] (-0.1, 0.1] (0.1, inf): -0.1 -> 0, 0.1 -> 1
    assert sims_bins([-0.1, -0.0999, 0.1, 0.1001], (-0.1, 0.1)).tolist() == [0, 1, 1, 2]
    # acc5 edges -0.7, -0.1, 0.1, 0.7
    got = sims_bins([-1.0, -0.7, -0.5, -0.1, 0.0, 0.1, 0.5, 0.7, 0.71, 1.0], (-0.7, -0.1, 0.1, 0.7))
    assert got.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_sims_float32_edges_follow_mmsa():
    # float32(0.1) is slightly above the real 0.1; MMSA compares float32 tensors with Python
    # floats, which NumPy does in float32, so it stays in the bin below the 0.1 edge
    assert float(np.float32(0.1)) > 0.1
    edges5 = (-0.7, -0.1, 0.1, 0.7)
    f32 = np.array([0.1, -0.7, -0.1, 0.7], dtype=np.float32)
    assert sims_bins(f32, edges5).tolist() == [2, 0, 1, 3]
    assert sims_bins(f32.astype(np.float64), edges5).tolist() == [3, 1, 1, 3]  # the trap
    assert sims_bins([0.1, -0.7, -0.1, 0.7], edges5).tolist() == [2, 0, 1, 3]
    # through the entry point, with float32 predictions and labels as a model gives them
    preds = np.array([0.1, -0.7], dtype=np.float32)
    labels = np.array([0.0, -0.8], dtype=np.float32)
    m = compute_metrics("sims", preds, labels)
    assert m["acc3"] == 1.0 and m["acc5"] == 1.0


def test_sims_by_hand():
    preds = [0.0, 0.1, -0.1, 0.7, -0.7, 1.5, -2.0, 0.05]
    labels = [0.2, 0.2, -0.2, 0.8, -0.8, 1.0, -1.0, 0.0]
    m = compute_metrics("sims", preds, labels)
    # clipped preds [0, .1, -.1, .7, -.7, 1, -1, .05]
    # acc2 bins: preds [0,1,0,1,0,1,0,1], labels [1,1,0,1,0,1,0,0] (0.0 is negative)
    assert m["acc2"] == pytest.approx(6 / 8)
    # acc3 bins: preds [1,1,0,2,0,2,0,1], labels [2,2,0,2,0,2,0,1] (0.1 -> middle bin)
    assert m["acc3"] == pytest.approx(6 / 8)
    # acc5 bins: preds [2,2,1,3,0,4,0,2], labels [3,3,1,4,0,4,0,2]
    assert m["acc5"] == pytest.approx(5 / 8)
    # both bins: tp 3, fp 1, fn 1 -> F1 0.75 each
    assert m["f1"] == pytest.approx(0.75)
    # MAE on clipped values: .2 .1 .1 .1 .1 0 0 .05 -> 0.65 / 8
    assert m["mae"] == pytest.approx(0.65 / 8)
    cp = np.clip(preds, -1, 1)
    assert m["corr"] == pytest.approx(np.corrcoef(cp, labels)[0, 1])


def test_sims_labels_clipped_too():
    m = compute_metrics("sims", [1.0, -1.0], [3.0, -3.0])
    assert m["mae"] == 0.0
    assert m["acc5"] == 1.0


# --------------------------------------------------------------------------- classification


def test_classification_by_hand():
    labels = [0, 1, 2, 2, 2, 0]
    preds = [0, 2, 2, 2, 1, 1]
    m = compute_metrics("classification", preds, labels)
    assert m["acc"] == pytest.approx(3 / 6)
    # per-class F1: class 0 -> 2/3, class 1 -> 0, class 2 -> 2/3; supports 2, 1, 3
    assert m["f1_macro"] == pytest.approx(4 / 9)
    assert m["f1_weighted"] == pytest.approx((2 * 2 / 3 + 3 * 2 / 3) / 6)


def test_classification_logits_argmax():
    labels = np.array([0, 1, 2, 2, 2, 0])
    ids = np.array([0, 2, 2, 2, 1, 1])
    logits = np.full((6, 3), -1.0)
    logits[np.arange(6), ids] = 2.0
    assert compute_metrics("classification", logits, labels) == classification_metrics(ids, labels)
    # float labels as MMSA stores them are fine when integer-valued
    assert compute_metrics("classification", ids, labels.astype(np.float32))["acc"] == 0.5


def test_classification_rejects_fractional_ids():
    with pytest.raises(ValueError, match="integer class ids"):
        compute_metrics("classification", [0.2, 1.0], [0, 1])


# --------------------------------------------------------------------------- errors and names


@pytest.mark.parametrize("metric_set", sorted(METRIC_SETS))
def test_length_mismatch(metric_set):
    with pytest.raises(ValueError, match="length mismatch: 3 predictions vs 2 labels"):
        compute_metrics(metric_set, [0, 1, 1], [0, 1])


@pytest.mark.parametrize("metric_set", sorted(METRIC_SETS))
def test_empty_input(metric_set):
    with pytest.raises(ValueError, match="empty input"):
        compute_metrics(metric_set, [], [])


@pytest.mark.parametrize("metric_set", sorted(METRIC_SETS))
def test_nan_predictions(metric_set):
    with pytest.raises(ValueError, match="predictions contain .*NaN"):
        compute_metrics(metric_set, [0.0, float("nan"), 1.0], [0, 1, 1])


def test_nonfinite_labels_and_bad_shapes():
    with pytest.raises(ValueError, match="labels contain 0 NaN and 1 infinite"):
        compute_metrics("mosi", [0.0, 1.0], [0.0, float("inf")])
    with pytest.raises(ValueError, match="predictions must be 1-D"):
        compute_metrics("sims", np.zeros((3, 2)), np.zeros(3))
    with pytest.raises(ValueError, match="unknown metric_set 'mosei'"):
        compute_metrics("mosei", [0.0], [0.0])


def test_metric_names_stable():
    assert METRIC_NAMES["mosi"] == (
        "acc2_has0", "f1_has0", "acc2_non0", "f1_non0", "acc7", "acc5", "acc3", "mae", "corr"
    )
    assert METRIC_NAMES["sims"] == ("acc2", "acc3", "acc5", "f1", "mae", "corr")
    assert METRIC_NAMES["classification"] == ("acc", "f1_weighted", "f1_macro")
    rng = np.random.default_rng(0)
    for name in ("mosi", "sims"):
        got = compute_metrics(name, rng.normal(size=20), rng.normal(size=20))
        assert tuple(got) == METRIC_NAMES[name]
        assert all(isinstance(v, float) for v in got.values())
    got = compute_metrics("classification", rng.integers(0, 3, 20), rng.integers(0, 3, 20))
    assert tuple(got) == METRIC_NAMES["classification"]


def test_higher_is_better():
    assert higher_is_better("mae") is False
    assert higher_is_better("valid_mae") is False
    assert higher_is_better("acc2_non0") is True
    assert higher_is_better("valid_f1_non0") is True
    assert higher_is_better("corr") is True
    for names in METRIC_NAMES.values():
        assert set(names) <= set(HIGHER_IS_BETTER)
    with pytest.raises(ValueError, match="unknown metric 'loss'"):
        higher_is_better("loss")


# --------------------------------------------------------------------------- reference


def ref_weighted_f1(y_true: list, y_pred: list) -> float:
    """Support-weighted F1 over the classes seen in either list, from counts."""
    classes = sorted(set(y_true) | set(y_pred))
    total = 0.0
    for c in classes:
        tp = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == c and p == c)
        fp = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t != c and p == c)
        fn = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == c and p != c)
        f1 = 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)
        total += f1 * sum(1 for t in y_true if t == c)
    return total / len(y_true)


def ref_mosi(preds: list[float], labels: list[float]) -> dict[str, float]:
    """MOSI metrics from their definitions, with Python floats and builtins only."""
    n = len(labels)

    def clip(v: float, b: float) -> float:
        return max(-b, min(b, v))

    def acc_k(b: float) -> float:
        # Python's round() on floats also rounds half to even
        return sum(round(clip(p, b)) == round(clip(y, b)) for p, y in zip(preds, labels, strict=True)) / n

    has0_t = [y >= 0 for y in labels]
    has0_p = [p >= 0 for p in preds]
    kept = [(p, y) for p, y in zip(preds, labels, strict=True) if y != 0]
    non0_t = [y > 0 for _, y in kept]
    non0_p = [p > 0 for p, _ in kept]
    return {
        "acc2_has0": sum(a == b for a, b in zip(has0_t, has0_p, strict=True)) / n,
        "f1_has0": ref_weighted_f1(has0_t, has0_p),
        "acc2_non0": sum(a == b for a, b in zip(non0_t, non0_p, strict=True)) / len(kept),
        "f1_non0": ref_weighted_f1(non0_t, non0_p),
        "acc7": acc_k(3.0),
        "acc5": acc_k(2.0),
        "acc3": acc_k(1.0),
        "mae": sum(abs(p - y) for p, y in zip(preds, labels, strict=True)) / n,
        "corr": statistics.correlation(preds, labels),
    }


def ref_sims(preds: list[float], labels: list[float]) -> dict[str, float]:
    """SIMS metrics from the interval definitions, with Python floats only."""
    n = len(labels)
    p = [max(-1.0, min(1.0, v)) for v in preds]
    y = [max(-1.0, min(1.0, v)) for v in labels]

    def b2(v: float) -> int:
        return 0 if v <= 0.0 else 1

    def b3(v: float) -> int:
        return 0 if v <= -0.1 else (1 if v <= 0.1 else 2)

    def b5(v: float) -> int:
        if v <= -0.7:
            return 0
        if v <= -0.1:
            return 1
        if v <= 0.1:
            return 2
        return 3 if v <= 0.7 else 4

    def acc(f) -> float:
        return sum(f(a) == f(b) for a, b in zip(p, y, strict=True)) / n

    return {
        "acc2": acc(b2),
        "acc3": acc(b3),
        "acc5": acc(b5),
        "f1": ref_weighted_f1([b2(v) for v in y], [b2(v) for v in p]),
        "mae": sum(abs(a - b) for a, b in zip(p, y, strict=True)) / n,
        "corr": statistics.correlation(p, y),
    }


@pytest.mark.parametrize("seed", range(5))
def test_mosi_matches_reference_on_random_data(seed):
    rng = np.random.default_rng(seed)
    n = 300
    # labels on MOSI's grid (multiples of 0.2, some exact zeros); predictions partly on a
    # half-integer grid so that rounding ties occur, partly continuous and out of range
    labels = np.round(rng.uniform(-3.4, 3.4, n) * 5) / 5
    labels[rng.random(n) < 0.1] = 0.0
    preds = rng.normal(0, 2, n)
    tie = rng.random(n) < 0.3
    preds[tie] = np.round(preds[tie] * 2) / 2
    got = compute_metrics("mosi", preds, labels)
    want = ref_mosi(preds.tolist(), labels.tolist())
    assert set(got) == set(want)
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-12), k


@pytest.mark.parametrize("seed", range(5))
def test_sims_matches_reference_on_random_data(seed):
    rng = np.random.default_rng(100 + seed)
    n = 300
    labels = np.round(rng.uniform(-1, 1, n) * 5) / 5  # SIMS labels: multiples of 0.2
    preds = rng.normal(0, 0.8, n)
    edge = rng.random(n) < 0.2  # exact bin edges and zeros
    preds[edge] = rng.choice([-0.7, -0.1, 0.0, 0.1, 0.7], int(edge.sum()))
    got = compute_metrics("sims", preds, labels)
    want = ref_sims(preds.tolist(), labels.tolist())
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-12), k


def test_classification_matches_reference_on_random_data():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 4, 200)
    preds = np.where(rng.random(200) < 0.6, labels, rng.integers(0, 4, 200))
    got = compute_metrics("classification", preds, labels)
    y, p = labels.tolist(), preds.tolist()
    per_class = []
    for c in sorted(set(y) | set(p)):
        tp = sum(1 for t, q in zip(y, p, strict=True) if t == c and q == c)
        fp = sum(1 for t, q in zip(y, p, strict=True) if t != c and q == c)
        fn = sum(1 for t, q in zip(y, p, strict=True) if t == c and q != c)
        per_class.append(2 * tp / (2 * tp + fp + fn))
    assert got["acc"] == pytest.approx(sum(t == q for t, q in zip(y, p, strict=True)) / 200)
    assert got["f1_macro"] == pytest.approx(sum(per_class) / len(per_class))
    assert got["f1_weighted"] == pytest.approx(ref_weighted_f1(y, p))
