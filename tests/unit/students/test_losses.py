"""Each loss against a plain reference written from its definition (python floats, loops)."""

from __future__ import annotations

import math

import pytest
import torch

from students.losses import (
    attention_kd,
    expected_score,
    expected_score_loss,
    prediction_kd,
    representation_kd,
    soft_label_kd,
    task_loss,
    weighted_mean,
)

BINS = [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0]


# ------------------------------------------------------------------- references


def ref_weighted_mean(values, weights=None, mask=None):
    n = len(values)
    w = [1.0] * n if weights is None else list(weights)
    m = [1.0] * n if mask is None else [1.0 if x else 0.0 for x in mask]
    den = sum(wi * mi for wi, mi in zip(w, m, strict=True))
    if den == 0:
        return 0.0
    return sum(wi * mi * v for wi, mi, v in zip(w, m, values, strict=True) if wi * mi > 0) / den


def softmax(xs):
    mx = max(xs)
    e = [math.exp(x - mx) for x in xs]
    s = sum(e)
    return [x / s for x in e]


def ref_kl(p, q):
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True) if pi > 0)


def ref_soft_kd(logits, probs, t, weights=None, mask=None):
    per = []
    for z, p in zip(logits, probs, strict=True):
        s = sum(p)
        p = [x / s for x in p] if s > 0 else [1.0 / len(p)] * len(p)
        pt = softmax([math.log(x) / t if x > 0 else -math.inf for x in p]) if t != 1 else p
        qt = softmax([x / t for x in z])
        per.append(ref_kl(pt, qt))
    return t * t * ref_weighted_mean(per, weights, mask)


def rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


def probs_rows(b, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(b, n, generator=g) ** 3
    p[0, 2] = 0.0  # a zero entry: 0 log 0 = 0
    return p / p.sum(1, keepdim=True)


# ------------------------------------------------------------------ weighted mean


def test_weighted_mean_matches_reference_and_normalises_weights():
    v = rand(6)
    w = torch.tensor([0.0, 1.0, 2.0, 0.5, 3.0, 1.0])
    m = torch.tensor([1, 1, 0, 1, 1, 1], dtype=torch.bool)
    got = weighted_mean(v, w, m).item()
    assert got == pytest.approx(ref_weighted_mean(v.tolist(), w.tolist(), m.tolist()), abs=1e-6)
    # scaling all weights does not change the value (normalised per batch)
    assert weighted_mean(v, 7 * w, m).item() == pytest.approx(got, abs=1e-6)
    assert weighted_mean(v).item() == pytest.approx(v.mean().item(), abs=1e-6)


def test_weighted_mean_zero_weights_and_all_masked_give_zero_with_graph():
    v = rand(4).requires_grad_()
    for out in (weighted_mean(v, torch.zeros(4)),
                weighted_mean(v, mask=torch.zeros(4, dtype=torch.bool))):
        assert out.item() == 0.0
        out.backward()
        assert torch.equal(v.grad, torch.zeros(4))
        v.grad = None


def test_weighted_mean_rejects_negative_weights():
    with pytest.raises(ValueError, match="non-negative"):
        weighted_mean(rand(3), torch.tensor([1.0, -1.0, 1.0]))


# ---------------------------------------------------------------------- task loss


@pytest.mark.parametrize("kind", ["l1", "mse"])
def test_task_loss_regression_matches_reference(kind):
    pred, tgt = rand(8, seed=1), rand(8, seed=2) * 2
    w = torch.rand(8, generator=torch.Generator().manual_seed(3))
    per = [abs(p - t) if kind == "l1" else (p - t) ** 2
           for p, t in zip(pred.tolist(), tgt.tolist(), strict=True)]
    assert task_loss(pred, tgt, kind, w).item() == pytest.approx(
        ref_weighted_mean(per, w.tolist()), abs=1e-6)
    assert task_loss(pred.unsqueeze(1), tgt, kind).item() == pytest.approx(
        sum(per) / len(per), abs=1e-6)


def test_task_loss_ce_matches_reference():
    logits = rand(5, 3, seed=4)
    tgt = torch.tensor([0, 2, 1, 1, 0])
    w = torch.tensor([1.0, 2.0, 0.0, 1.0, 0.5])
    per = [-math.log(softmax(z)[c]) for z, c in zip(logits.tolist(), tgt.tolist(), strict=True)]
    assert task_loss(logits, tgt, "ce", w).item() == pytest.approx(
        ref_weighted_mean(per, w.tolist()), abs=1e-6)


def test_task_loss_masks_nan_labels_without_nan_gradients():
    pred = rand(4).requires_grad_()
    tgt = torch.tensor([0.5, float("nan"), -1.0, float("nan")])
    mask = ~torch.isnan(tgt)
    loss = task_loss(pred, tgt, "l1", mask=mask)
    ref = (abs(pred[0].item() - 0.5) + abs(pred[2].item() + 1.0)) / 2
    assert loss.item() == pytest.approx(ref, abs=1e-6)
    loss.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad[1] == 0 and pred.grad[3] == 0
    with pytest.raises(ValueError, match="label_mask"):
        task_loss(pred, tgt, "l1")  # NaN targets the loss would use
    all_masked = task_loss(pred, tgt, "mse", mask=torch.zeros(4))
    assert all_masked.item() == 0.0


def test_task_loss_ce_rejects_unmasked_missing_class():
    with pytest.raises(ValueError, match="mask"):
        task_loss(rand(2, 3), torch.tensor([0, -1]), "ce")
    out = task_loss(rand(2, 3), torch.tensor([0, -1]), "ce", mask=torch.tensor([1, 0]))
    assert torch.isfinite(out)


# ------------------------------------------------------------------- soft-label KD


@pytest.mark.parametrize("t", [1.0, 2.0, 0.5])
def test_soft_label_kd_matches_reference(t):
    logits = rand(4, 7, seed=5)
    probs = probs_rows(4, 7, seed=6)
    w = torch.tensor([1.0, 0.5, 2.0, 0.0])
    got = soft_label_kd(logits, probs, t, w).item()
    assert got == pytest.approx(ref_soft_kd(logits.tolist(), probs.tolist(), t, w.tolist()),
                                rel=1e-5, abs=1e-6)


def test_soft_label_kd_is_zero_when_student_matches_teacher_and_scales_with_t2():
    probs = probs_rows(3, 7, seed=7)
    probs[0, 2] = 1e-3  # no zeros, so log p is the matching logit
    probs = probs / probs.sum(1, keepdim=True)
    assert soft_label_kd(probs.log(), probs, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_label_kd(probs.log(), probs, 3.0).item() == pytest.approx(0.0, abs=1e-5)
    # at T the T^2 factor is applied to the tempered KL
    z = rand(3, 7, seed=8)
    raw = ref_soft_kd(z.tolist(), probs.tolist(), 2.0) / 4.0
    assert soft_label_kd(z, probs, 2.0).item() == pytest.approx(4.0 * raw, rel=1e-5)


def test_soft_label_kd_missing_teacher_rows_and_all_masked():
    z = rand(3, 7, seed=9).requires_grad_()
    probs = probs_rows(3, 7, seed=10)
    probs[1] = 0.0  # no teacher for this sample
    mask = torch.tensor([1.0, 0.0, 1.0])
    got = soft_label_kd(z, probs, 2.0, mask=mask)
    ref = ref_soft_kd(z.tolist(), probs.tolist(), 2.0, mask=mask.tolist())
    assert got.item() == pytest.approx(ref, rel=1e-5)
    got.backward()
    assert torch.isfinite(z.grad).all() and torch.equal(z.grad[1], torch.zeros(7))
    none = soft_label_kd(z, torch.zeros(3, 7), 1.0, mask=torch.zeros(3))
    assert none.item() == 0.0
    with pytest.raises(ValueError, match="mask rows"):
        soft_label_kd(z, probs, 1.0)


def test_expected_score_and_its_loss_match_reference():
    z = rand(4, 7, seed=11)
    exp = [sum(q * b for q, b in zip(softmax(row), BINS, strict=True)) for row in z.tolist()]
    assert expected_score(z, BINS).tolist() == pytest.approx(exp, abs=1e-6)
    tgt = torch.tensor([0.5, -2.0, 3.0, 1.0])
    w = torch.tensor([1.0, 0.0, 2.0, 1.0])
    for kind in ("l1", "mse"):
        per = [abs(e - t) if kind == "l1" else (e - t) ** 2
               for e, t in zip(exp, tgt.tolist(), strict=True)]
        got = expected_score_loss(z, BINS, tgt, kind, w).item()
        assert got == pytest.approx(ref_weighted_mean(per, w.tolist()), abs=1e-6)


# ---------------------------------------------------------------- privileged KD


def test_prediction_kd_matches_reference_and_detaches_teacher():
    s, t = rand(5, seed=12).requires_grad_(), rand(5, seed=13).requires_grad_()
    w = torch.tensor([1.0, 2.0, 3.0, 0.0, 1.0])
    per = [(a - b) ** 2 for a, b in zip(s.tolist(), t.tolist(), strict=True)]
    loss = prediction_kd(s, t, "mse", w)
    assert loss.item() == pytest.approx(ref_weighted_mean(per, w.tolist()), abs=1e-6)
    loss.backward()
    assert t.grad is None and s.grad is not None


@pytest.mark.parametrize("kind", ["cosine", "mse"])
def test_representation_kd_matches_reference(kind):
    s, t = rand(4, 6, seed=14), rand(4, 6, seed=15)
    mask = torch.tensor([1, 1, 0, 1])
    per = []
    for a, b in zip(s.tolist(), t.tolist(), strict=True):
        if kind == "cosine":
            dot = sum(x * y for x, y in zip(a, b, strict=True))
            na = math.sqrt(sum(x * x for x in a))
            nb = math.sqrt(sum(y * y for y in b))
            per.append(1 - dot / (na * nb))
        else:
            per.append(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)) / len(a))
    got = representation_kd(s, t, kind, mask=mask).item()
    assert got == pytest.approx(ref_weighted_mean(per, mask=mask.tolist()), abs=1e-6)
    assert representation_kd(s, s.clone(), kind).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="kd_repr_dim"):
        representation_kd(s, t[:, :3], kind)


def _attn(b, h, q, k, seed):
    return torch.softmax(rand(b, h, q, k, seed=seed), dim=-1)


@pytest.mark.parametrize("kind", ["kl", "mse"])
def test_attention_kd_matches_reference(kind):
    s, t = _attn(2, 2, 3, 4, 16), _attn(2, 2, 3, 4, 17)
    qmask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    per = []
    for bi in range(2):
        vals = []
        for qi in range(3):
            if not qmask[bi, qi]:
                continue
            hv = []
            for hi in range(2):
                sr, tr = s[bi, hi, qi].tolist(), t[bi, hi, qi].tolist()
                if kind == "kl":
                    hv.append(ref_kl(tr, sr))
                else:
                    hv.append(sum((x - y) ** 2 for x, y in zip(sr, tr, strict=True)) / 4)
            vals.append(sum(hv) / 2)
        per.append(sum(vals) / len(vals))
    w = torch.tensor([1.0, 3.0])
    got = attention_kd(s, t, qmask, kind, w).item()
    assert got == pytest.approx(ref_weighted_mean(per, w.tolist()), rel=1e-5, abs=1e-7)
    assert attention_kd(t, t, qmask, kind).item() == pytest.approx(0.0, abs=1e-6)
    assert attention_kd(s, t, qmask, kind, mask=torch.zeros(2)).item() == 0.0
