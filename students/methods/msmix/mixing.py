"""MS-Mix: sentiment-aware mixup of encoded modalities.

Inside a training step (``train.msmix``, :class:`workbench.config.MsMixConfig`), after
:meth:`~students.model.StudentModel.encode`:

1. **Pairs.** Sample ``i`` is paired with ``perm[i]`` (a seeded permutation of the
   batch). :func:`select_pairs` keeps a pair when both have gold labels, both have the
   same modalities, and for every modality they have, ``cos(pooled_i, pooled_j) >
   threshold`` (their representations agree on the sentiment), and ``i != perm[i]``.
2. **Ratios.** ``lam0 ~ Beta(alpha, alpha)`` per pair; per modality ``m`` the intensity
   head (:func:`intensity_heads`, training only) predicts ``I_m`` (emotional intensity,
   |score|) and
   :func:`mix_ratios` gives ``lam_m = (1 - blend) * lam0 + blend * I_m[i] / (I_m[i] +
   I_m[j])``: the more intense sample of the pair keeps more of its representation.
3. **Mix.** :func:`mix_encoded` mixes token states (each zeroed outside its mask, the
   mixed mask the union), and pooled vectors, with ``lam_m``; fusion and the heads run
   on the mixed encodings (:meth:`~students.model.StudentModel.fuse_and_predict`).
4. **Labels.** :func:`mixed_labels`: ``y = lam * y_i + (1 - lam) * y_j`` with ``lam`` the
   mean of the per-modality ratios over the modalities the pair has.
5. **Alignment.** Each modality's unimodal prediction on a mixed sample becomes a
   distribution over the label bins (:func:`gaussian_bins`, a Gaussian around the
   score, one bin width wide); :func:`modality_kl` is the mean KL over ordered pairs of
   the modalities present -- the modalities are pulled to agree on the mixed sentiment.

:func:`msmix_losses` is one training step's terms, built from these pure functions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from students.encoders import Encoded
from students.losses import task_loss, weighted_mean
from students.methods.base import StudentView
from students.outputs import StudentEncoding, StudentOutput
from workbench.config import MsMixConfig


def intensity_heads(hidden: int, streams: list[str]) -> nn.ModuleDict:
    """One head per modality predicting its emotional intensity |score| (training only)."""
    return nn.ModuleDict({m: nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(),
                                           nn.Linear(hidden, 1)) for m in streams})


def intensity(heads: nn.ModuleDict, enc: StudentEncoding) -> dict[str, Tensor]:
    """Predicted emotional intensity (B,) >= 0 per modality (softplus of its head)."""
    return {m: torch.nn.functional.softplus(heads[m](v)).squeeze(-1)
            for m, v in enc.pooled().items()}


def cosine_rows(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Row-wise cosine similarity (B,) of (B, h) tensors; 0 where a row is zero."""
    a, b = a.float(), b.float()
    return (a * b).sum(-1) / (a.norm(dim=-1).clamp_min(eps) * b.norm(dim=-1).clamp_min(eps))


def draw_pairs(n: int, alpha: float, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """(permutation (n,) long, lam0 (n,) float ~ Beta(alpha, alpha)) from ``rng``."""
    if alpha <= 0:
        raise ValueError(f"msmix alpha={alpha}: use a positive Beta parameter")
    perm = torch.from_numpy(rng.permutation(n)).long()
    lam0 = torch.from_numpy(rng.beta(alpha, alpha, size=n)).float()
    return perm, lam0


def select_pairs(pooled: dict[str, Tensor], available: dict[str, Tensor], perm: Tensor,
                 threshold: float, label_mask: Tensor) -> Tensor:
    """(B,) bool: which pairs ``(i, perm[i])`` may be mixed (see the module docstring)."""
    idx = torch.arange(perm.shape[0], device=perm.device)
    perm = perm.to(label_mask.device)
    lm = label_mask.reshape(-1) > 0
    ok = lm & lm[perm] & (perm != idx.to(perm.device))
    for m, rep in pooled.items():
        a = available[m].reshape(-1) > 0
        ok = ok & (a == a[perm])
        agree = cosine_rows(rep, rep[perm]) > threshold
        ok = ok & (~a | agree)
    return ok


def mix_ratios(lam0: Tensor, intensity_i: dict[str, Tensor], intensity_j: dict[str, Tensor],
               blend: float = 0.5, eps: float = 1e-6) -> dict[str, Tensor]:
    """Per modality ``(1 - blend) * lam0 + blend * I_i / (I_i + I_j)`` in [0, 1]; equal
    intensities (including both 0) give a relative intensity of 1/2."""
    if not 0.0 <= blend <= 1.0:
        raise ValueError(f"blend={blend}: use a fraction in [0, 1]")
    out = {}
    for m, ii in intensity_i.items():
        ii = ii.float().clamp_min(0.0)
        ij = intensity_j[m].float().clamp_min(0.0)
        rel = (ii + eps) / (ii + ij + 2 * eps)
        out[m] = ((1.0 - blend) * lam0.float().to(rel.device) + blend * rel).clamp(0.0, 1.0)
    return out


def mix_encoded(a: Encoded, b: Encoded, lam: Tensor) -> Encoded:
    """``lam * a + (1 - lam) * b`` for one modality's encodings (same (B, T, h) shapes):
    token states are zeroed outside their own masks before mixing, the mixed mask is
    the union, pooled vectors are mixed likewise."""
    if a.tokens.shape != b.tokens.shape:
        raise ValueError(f"mix_encoded: token shapes differ {tuple(a.tokens.shape)} vs "
                         f"{tuple(b.tokens.shape)}")
    lt = lam.reshape(-1, 1, 1).to(a.tokens.dtype)
    lp = lam.reshape(-1, 1).to(a.pooled.dtype)
    ta = a.tokens * a.mask.unsqueeze(-1).to(a.tokens.dtype)
    tb = b.tokens * b.mask.unsqueeze(-1).to(b.tokens.dtype)
    return Encoded(tokens=lt * ta + (1 - lt) * tb, mask=a.mask | b.mask,
                   pooled=lp * a.pooled + (1 - lp) * b.pooled)


def mean_ratio(ratios: dict[str, Tensor], available: dict[str, Tensor]) -> Tensor:
    """Mean (B,) of the per-modality ratios over the modalities each row has (text
    counts like any other); 1/2 for a row without any."""
    num = torch.zeros_like(next(iter(ratios.values())))
    den = torch.zeros_like(num)
    for m, r in ratios.items():
        a = (available[m].reshape(-1) > 0).to(r.dtype)
        num = num + a * r
        den = den + a
    return torch.where(den > 0, num / den.clamp_min(1.0), torch.full_like(num, 0.5))


def mixed_labels(y_i: Tensor, y_j: Tensor, lam: Tensor) -> Tensor:
    """``lam * y_i + (1 - lam) * y_j``."""
    return lam * y_i.float() + (1.0 - lam) * y_j.float()


def gaussian_bins(score: Tensor, bins: Tensor, sigma: float) -> Tensor:
    """(B, K) distributions ``softmax(-(bins - score)^2 / (2 sigma^2))``: a Gaussian
    around each score over the bin values (differentiable in ``score``)."""
    if sigma <= 0:
        raise ValueError(f"sigma={sigma}: use a positive width")
    d = bins.reshape(1, -1).to(score.device, torch.float32) - score.float().reshape(-1, 1)
    return torch.softmax(-(d ** 2) / (2.0 * sigma ** 2), dim=-1)


def modality_kl(dists: dict[str, Tensor], available: dict[str, Tensor],
                eps: float = 1e-8) -> Tensor:
    """Per row (B,): mean of ``KL(p_a || p_b)`` over ordered pairs ``a != b`` of the
    modalities the row has; 0 for a row with fewer than two."""
    names = list(dists)
    b = next(iter(dists.values())).shape[0]
    device = next(iter(dists.values())).device
    total = torch.zeros(b, device=device)
    pairs = torch.zeros(b, device=device)
    for x in names:
        for y in names:
            if x == y:
                continue
            p, q = dists[x].float(), dists[y].float()
            kl = (torch.xlogy(p, p) - p * torch.log(q.clamp_min(eps))).sum(-1)
            both = ((available[x].reshape(-1) > 0) & (available[y].reshape(-1) > 0)).float()
            total = total + both * kl
            pairs = pairs + both
    return torch.where(pairs > 0, total / pairs.clamp_min(1.0), torch.zeros_like(total))


def _rows(e: Encoded, idx: Tensor) -> Encoded:
    return Encoded(tokens=e.tokens[idx], mask=e.mask[idx], pooled=e.pooled[idx])


def msmix_losses(model: StudentView, heads: nn.ModuleDict, out: StudentOutput,
                 batch: dict[str, Any], cfg: MsMixConfig, *, task_kind: str,
                 label_range: tuple[float, float], bins: Tensor | None,
                 rng: np.random.Generator) -> dict[str, Tensor]:
    """MS-Mix's terms for one batch: ``msmix`` (task loss on mixed samples against mixed
    labels), ``msmix_kl`` (KL alignment of the modalities' predicted distributions on
    them), ``msmix_intensity`` (intensity heads vs |gold score|) and, for the log,
    ``msmix_frac`` (fraction of the batch mixed, no gradient). Unweighted: the caller
    adds them with ``cfg.weight``, ``cfg.kl_weight``, ``cfg.intensity_weight``.

    ``heads`` are the :func:`intensity_heads`; ``out`` is the forward pass with
    ``return_encoding=True``; ``task_kind`` the task loss (``train.task_loss``);
    ``label_range`` gives the alignment's bins when ``bins`` (the soft labels' bin values)
    has fewer than two; ``rng`` draws the pairs and ratios.
    """
    enc = out.encoding
    if enc is None:
        raise ValueError("MS-Mix needs forward(..., return_encoding=True)")
    target, label_mask, w = batch["labels"], batch["label_mask"], batch["weights"]
    device = out.pred.device
    w = w.to(device)
    pooled, avail = enc.pooled(), enc.available()
    predicted = intensity(heads, enc)
    gold_abs = torch.nan_to_num(target.float()).abs()
    losses: dict[str, Tensor] = {"msmix_intensity": torch.stack([
        task_loss(predicted[m], gold_abs, "l1", w, label_mask * avail[m]) for m in predicted
    ]).mean()}
    n = target.shape[0]
    perm, lam0 = draw_pairs(n, cfg.alpha, rng)
    perm, lam0 = perm.to(device), lam0.to(device)
    sel = select_pairs({m: p.detach() for m, p in pooled.items()}, avail, perm,
                       cfg.threshold, label_mask)
    i = torch.nonzero(sel).flatten()
    losses["msmix_frac"] = torch.tensor(float(i.numel()) / max(1, n), device=device)
    if i.numel() == 0:
        zero = out.pred.sum() * 0.0
        losses.update(msmix=zero, msmix_kl=zero)
        return losses
    j = perm[i]
    lam = mix_ratios(lam0[i], {m: v[i].detach() for m, v in predicted.items()},
                     {m: v[j].detach() for m, v in predicted.items()})
    mixed = StudentEncoding(
        text=mix_encoded(_rows(enc.text, i), _rows(enc.text, j), lam["text"]),
        others={m: mix_encoded(_rows(e, i), _rows(e, j), lam[m]) for m, e in enc.others.items()},
        avail={m: a[i] for m, a in enc.avail.items()}, text_avail=enc.text_avail[i])
    mo = model.fuse_and_predict(mixed)
    pair_avail = {m: a[i] for m, a in avail.items()}
    lam_bar = mean_ratio(lam, pair_avail)
    y = mixed_labels(target[i], target[j], lam_bar)
    wm = lam_bar * w[i] + (1.0 - lam_bar) * w[j]
    losses["msmix"] = task_loss(mo.pred, y, task_kind, wm)
    if bins is not None and bins.numel() >= 2:
        grid = bins.float().to(device)
    else:
        grid = torch.linspace(label_range[0], label_range[1], 7, device=device)
    sigma = float((grid[-1] - grid[0]) / (grid.numel() - 1))
    dists = {m: gaussian_bins(p, grid, sigma) for m, p in mo.unimodal.items()}
    losses["msmix_kl"] = weighted_mean(modality_kl(dists, pair_avail), wm)
    return losses
