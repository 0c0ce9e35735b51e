"""Quality-aware sample weights, after QASA's decoupled scoring.

Each factor scores one aspect of how far a sample's teacher signal can be trusted, in
[0, 1], independently of the others:

* **confidence** ``c = 1 - H(p) / log(n_bins)``: one minus the normalised entropy of the
  teacher's distribution over the label bins (1: all mass on one bin; 0: uniform).
* **on-label mass** ``o = 1 - off_mass``: the probability the teacher put on answers that
  are none of the label bins counts against it.
* **agreement** ``a = clip(1 - |E_p[bin] - gold| / scale, 0, 1)``: on samples with a gold
  label, how close the teacher's expected score is to it (``scale``: the distance at
  which agreement reaches 0; by default half the width of the label range).
* **consistency** ``s``: for augmented samples, a similarity to their source in [0, 1],
  computed by the caller.

Combination rule: ``w = floor + (1 - floor) * c * o * a * s``. The product means any one
bad aspect lowers the weight (the factors are decoupled, not averaged away); the floor
(0 < floor <= 1) keeps every sample in the loss, so nothing is silently dropped. A factor
that does not apply to a sample -- no gold label, not augmented, no teacher output -- is
given as NaN (or the whole factor as None) and counts as 1 for that sample.

These functions return raw weights; losses normalise them per batch
(:func:`students.losses.weighted_mean`). ``train.weighting.enabled=false`` means all ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

_TOL = 1e-5


def _unit_interval(x: Tensor, name: str) -> Tensor:
    """Validate values in [0, 1] (NaN allowed: not applicable); clip float round-off."""
    x = x.float()
    finite = x[~torch.isnan(x)]
    if ((finite < -_TOL) | (finite > 1 + _TOL)).any():
        raise ValueError(f"{name} must lie in [0, 1] (NaN where it does not apply); got values "
                         f"from {finite.min().item():.4g} to {finite.max().item():.4g}")
    return x.clamp(0.0, 1.0)


def _nan_to_one(x: Tensor) -> Tensor:
    return torch.where(torch.isnan(x), torch.ones_like(x), x)


def normalised_entropy(probs: Tensor) -> Tensor:
    """``H(p) / log(n)`` per row of ``probs`` (B, n), rows renormalised; NaN rows stay NaN."""
    if probs.dim() != 2 or probs.shape[1] < 2:
        raise ValueError(f"probs must be (B, n_bins) with n_bins >= 2, got {tuple(probs.shape)}")
    p = probs.float()
    rows = torch.isnan(p).any(1)
    p = torch.where(rows.unsqueeze(1), torch.full_like(p, 1.0 / p.shape[1]), p)
    if (p < 0).any() or (p.sum(1) <= 0).any():
        raise ValueError("probs must be non-negative with a positive sum per row "
                         "(NaN rows where a sample has no teacher output)")
    p = p / p.sum(1, keepdim=True)
    h = -torch.xlogy(p, p).sum(1) / math.log(p.shape[1])
    return torch.where(rows, torch.full_like(h, float("nan")), h.clamp(0.0, 1.0))


def confidence_factor(probs: Tensor | None = None, *, entropy: Tensor | None = None,
                      n_bins: int | None = None) -> Tensor:
    """``1 - H(p)/log(n_bins)`` from the teacher's bin probabilities, or from a given
    entropy in nats (then ``n_bins`` is required). NaN (no teacher) -> 1."""
    if probs is not None:
        return _nan_to_one(1.0 - normalised_entropy(probs))
    if entropy is None or n_bins is None or n_bins < 2:
        raise ValueError("confidence_factor needs probs, or entropy together with n_bins >= 2")
    h = entropy.float() / math.log(n_bins)
    h = _unit_interval(h, "entropy / log(n_bins)")
    return _nan_to_one(1.0 - h)


def off_label_factor(off_mass: Tensor) -> Tensor:
    """``1 - off_mass``: the teacher's probability on answers outside the bins. NaN -> 1."""
    return _nan_to_one(1.0 - _unit_interval(off_mass, "off_mass"))


def agreement_factor(teacher_expected: Tensor, gold: Tensor, scale: float) -> Tensor:
    """``clip(1 - |teacher_expected - gold| / scale, 0, 1)``; NaN in either (no gold
    label, no teacher) -> 1."""
    if not scale > 0:
        raise ValueError(f"agreement scale={scale}: use a positive distance, e.g. half the "
                         "label range (3 for MOSI's [-3, 3])")
    d = (teacher_expected.float() - gold.float()).abs()
    return _nan_to_one((1.0 - d / scale).clamp(0.0, 1.0))


def consistency_factor(similarity: Tensor) -> Tensor:
    """An augmented sample's similarity to its source, in [0, 1]; NaN (not augmented) -> 1."""
    return _nan_to_one(_unit_interval(similarity, "consistency similarity"))


def combine_factors(factors: Sequence[Tensor], floor: float) -> Tensor:
    """``floor + (1 - floor) * prod(factors)``; each factor (B,) in [0, 1]."""
    if not 0.0 < floor <= 1.0:
        raise ValueError(f"weight floor={floor}: use a value in (0, 1] so no sample is dropped")
    if not factors:
        raise ValueError("combine_factors needs at least one factor")
    prod = torch.ones_like(factors[0], dtype=torch.float32)
    for f in factors:
        if f.shape != prod.shape:
            raise ValueError(f"factor shapes differ: {tuple(f.shape)} vs {tuple(prod.shape)}")
        if torch.isnan(f).any() or (f < 0).any() or (f > 1).any():
            raise ValueError("each factor must lie in [0, 1] without NaN")
        prod = prod * f.float()
    return floor + (1.0 - floor) * prod


def quality_weights(
    *,
    probs: Tensor | None = None,
    entropy: Tensor | None = None,
    n_bins: int | None = None,
    off_mass: Tensor | None = None,
    teacher_expected: Tensor | None = None,
    gold: Tensor | None = None,
    agreement_scale: float | None = None,
    similarity: Tensor | None = None,
    floor: float = 0.1,
) -> Tensor:
    """Per-sample quality weights (B,) from whichever signals are given (see module doc).

    Confidence uses ``probs`` (or ``entropy`` + ``n_bins``); agreement needs
    ``teacher_expected``, ``gold`` and ``agreement_scale``; a signal left out is a factor
    of 1 for every sample.
    """
    factors: list[Tensor] = []
    if probs is not None or entropy is not None:
        factors.append(confidence_factor(probs, entropy=entropy, n_bins=n_bins))
    if off_mass is not None:
        factors.append(off_label_factor(off_mass))
    if teacher_expected is not None and gold is not None:
        if agreement_scale is None:
            raise ValueError("agreement needs agreement_scale (e.g. half the label range)")
        factors.append(agreement_factor(teacher_expected, gold, agreement_scale))
    if similarity is not None:
        factors.append(consistency_factor(similarity))
    if not factors:
        raise ValueError("quality_weights got no signal; pass probs/entropy, off_mass, "
                         "teacher_expected+gold or similarity (or set train.weighting.enabled=false)")
    return combine_factors(factors, floor)


def batch_weights(batch: dict[str, Any], mode: Literal["none", "quality"] = "none",
                  floor: float = 0.1, agreement_scale: float = 0.0,
                  label_range: tuple[float, float] = (-3.0, 3.0)) -> Tensor:
    """Weights (B,) for a collated batch (:mod:`students.collate` keys).

    ``none``: all ones. ``quality``: :func:`quality_weights` from ``teacher_probs`` (or
    ``teacher_entropy``), ``teacher_off_mass``, ``teacher_expected`` vs ``labels`` and
    ``consistency``; rows with ``teacher_mask`` 0 get teacher factors of 1 (their KD terms
    are masked anyway), rows with ``label_mask`` 0 an agreement of 1. Agreement compares
    regression scores; on a classification batch ``labels`` is NaN and agreement is 1.
    ``agreement_scale`` 0 means half the width of ``label_range``.
    """
    n = len(batch["ids"])
    if mode == "none":
        return torch.ones(n)
    if mode != "quality":
        raise ValueError(f"weighting mode {mode!r}: use none or quality")
    nan = torch.full((n,), float("nan"))
    has_t = batch["teacher_mask"].bool()

    def teacher_only(x: Tensor) -> Tensor:
        return torch.where(has_t, x.float(), nan)

    probs = batch.get("teacher_probs")
    if probs is not None:
        has_p = has_t & batch["teacher_probs_mask"].bool()
        probs = torch.where(has_p.unsqueeze(1), probs.float(),
                            torch.full_like(probs, float("nan")))
        entropy = None
    else:
        entropy = teacher_only(batch["teacher_entropy"])
    scale = agreement_scale or (label_range[1] - label_range[0]) / 2.0
    gold = torch.where(batch["label_mask"].bool(), batch["labels"].float(), nan)
    return quality_weights(
        probs=probs,
        entropy=entropy,
        n_bins=None if probs is not None else batch.get("n_bins"),
        off_mass=teacher_only(batch["teacher_off_mass"]),
        teacher_expected=teacher_only(batch["teacher_expected"]),
        gold=gold,
        agreement_scale=scale,
        similarity=batch["consistency"].float(),
        floor=floor,
    )
