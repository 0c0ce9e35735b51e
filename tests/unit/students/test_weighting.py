"""Quality-aware weights against their definitions."""

from __future__ import annotations

import math

import pytest
import torch

from students.weighting import (
    agreement_factor,
    batch_weights,
    combine_factors,
    confidence_factor,
    consistency_factor,
    normalised_entropy,
    off_label_factor,
    quality_weights,
)

NAN = float("nan")


def ref_norm_entropy(p):
    s = sum(p)
    p = [x / s for x in p]
    return -sum(x * math.log(x) for x in p if x > 0) / math.log(len(p))


def test_confidence_from_probs_and_from_entropy():
    probs = torch.tensor([[1.0, 0, 0, 0], [0.25] * 4, [0.7, 0.1, 0.1, 0.1], [2.0, 1, 1, 0]])
    ref = [1 - ref_norm_entropy(r) for r in probs.tolist()]
    got = confidence_factor(probs)
    assert got.tolist() == pytest.approx(ref, abs=1e-6)
    assert got[0] == pytest.approx(1.0) and got[1] == pytest.approx(0.0, abs=1e-6)
    nats = torch.tensor([ref_norm_entropy(r) * math.log(4) for r in probs.tolist()])
    assert confidence_factor(entropy=nats, n_bins=4).tolist() == pytest.approx(ref, abs=1e-6)
    # a row without teacher output (NaN) counts as 1
    assert confidence_factor(torch.tensor([[NAN] * 4])).tolist() == [1.0]
    assert torch.isnan(normalised_entropy(torch.tensor([[NAN] * 4]))).all()
    with pytest.raises(ValueError, match="n_bins"):
        confidence_factor(entropy=nats)


def test_off_label_agreement_and_consistency_factors():
    assert off_label_factor(torch.tensor([0.0, 0.25, 1.0, NAN])).tolist() == [1.0, 0.75, 0.0, 1.0]
    with pytest.raises(ValueError, match="off_mass"):
        off_label_factor(torch.tensor([1.5]))
    a = agreement_factor(torch.tensor([0.0, 1.0, 2.0, 0.0, 0.0]),
                         torch.tensor([0.0, 2.5, -3.0, NAN, 1.5]), scale=3.0)
    assert a.tolist() == pytest.approx([1.0, 0.5, 0.0, 1.0, 0.5])
    with pytest.raises(ValueError, match="scale"):
        agreement_factor(torch.zeros(1), torch.zeros(1), 0.0)
    assert consistency_factor(torch.tensor([0.2, NAN, 1.0])).tolist() == pytest.approx(
        [0.2, 1.0, 1.0])
    with pytest.raises(ValueError, match="similarity"):
        consistency_factor(torch.tensor([-0.5]))


def test_combine_rule_has_a_floor_and_multiplies():
    f1, f2 = torch.tensor([1.0, 0.5, 0.0]), torch.tensor([1.0, 0.5, 0.3])
    w = combine_factors([f1, f2], floor=0.2)
    assert w.tolist() == pytest.approx([1.0, 0.2 + 0.8 * 0.25, 0.2])
    assert (w > 0).all()
    assert combine_factors([f1], floor=1.0).tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="floor"):
        combine_factors([f1], floor=0.0)


def test_quality_weights_end_to_end_reference():
    probs = torch.tensor([[0.9, 0.05, 0.05], [1 / 3] * 3])
    off = torch.tensor([0.1, 0.0])
    te = torch.tensor([0.5, 0.0])
    gold = torch.tensor([0.0, NAN])
    sim = torch.tensor([NAN, 0.6])
    got = quality_weights(probs=probs, off_mass=off, teacher_expected=te, gold=gold,
                          agreement_scale=1.0, similarity=sim, floor=0.1)
    ref = []
    for i in range(2):
        c = 1 - ref_norm_entropy(probs[i].tolist())
        o = 1 - off[i].item()
        a = 1.0 if math.isnan(gold[i].item()) else max(0.0, 1 - abs(te[i].item() - gold[i].item()))
        s = 1.0 if math.isnan(sim[i].item()) else sim[i].item()
        ref.append(0.1 + 0.9 * c * o * a * s)
    assert got.tolist() == pytest.approx(ref, abs=1e-6)
    with pytest.raises(ValueError, match="no signal"):
        quality_weights()


def test_batch_weights_none_and_quality():
    batch = {
        "ids": ["a", "b", "c"],
        "teacher_mask": torch.tensor([1.0, 1.0, 0.0]),
        "teacher_probs": torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5], [0.0, 0.0, 0.0]]),
        "teacher_probs_mask": torch.tensor([1.0, 1.0, 0.0]),
        "teacher_entropy": torch.tensor([NAN, NAN, NAN]),
        "teacher_off_mass": torch.tensor([0.0, 0.5, NAN]),
        "teacher_expected": torch.tensor([-1.0, 0.5, NAN]),
        "labels": torch.tensor([-1.0, NAN, 2.0]),
        "label_mask": torch.tensor([1.0, 0.0, 1.0]),
        "consistency": torch.tensor([NAN, 0.5, NAN]),
    }
    assert batch_weights(batch, "none").tolist() == [1.0, 1.0, 1.0]
    w = batch_weights(batch, "quality", floor=0.1, label_range=(-3.0, 3.0))
    c1 = 1 - ref_norm_entropy([0.2, 0.3, 0.5])
    assert w.tolist() == pytest.approx([1.0, 0.1 + 0.9 * c1 * 0.5 * 0.5, 1.0], abs=1e-6)
