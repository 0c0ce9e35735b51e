"""DashFusion's two alignment losses: :func:`info_nce` between the modalities of one
sample (the semantic alignment) and :func:`supervised_contrastive` on the fused vector
(positives by polarity or class), pure functions; :func:`dashfusion_losses` applies them
to a step."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from workbench.config import DashFusionConfig


def info_nce(a: Tensor, b: Tensor, temperature: float, valid: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE between paired rows of ``a`` and ``b`` (B, d): row ``i`` of ``a``
    should pick row ``i`` of ``b`` among the batch's rows (cosine similarity /
    ``temperature``), and the reverse; the mean of both directions. ``valid`` (B,) bool
    keeps only the rows where both modalities are present; fewer than two rows: 0."""
    if valid is not None:
        a, b = a[valid], b[valid]
    if a.shape[0] < 2:
        return a.sum() * 0.0 + b.sum() * 0.0
    za, zb = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    logits = za @ zb.T / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def supervised_contrastive(z: Tensor, labels: Tensor, temperature: float,
                           valid: Tensor | None = None) -> Tensor:
    """Supervised contrastive loss (Khosla et al.) on ``z`` (B, d), cosine similarity /
    ``temperature``: for each anchor ``i`` with at least one positive (another row with its
    label), ``-mean_{p in P(i)} log(exp(s_ip) / sum_{a != i} exp(s_ia))``; the mean over
    such anchors (0 if none). ``valid`` (B,) bool drops rows first."""
    if valid is not None:
        z, labels = z[valid], labels[valid]
    n = z.shape[0]
    if n < 2:
        return z.sum() * 0.0
    zn = F.normalize(z, dim=-1)
    sim = zn @ zn.T / temperature
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (labels.unsqueeze(0) == labels.unsqueeze(1)) & ~eye
    n_pos = pos.sum(1)
    has = n_pos > 0
    if not has.any():
        return z.sum() * 0.0
    per_anchor = -(log_prob.masked_fill(~pos, 0.0)).sum(1) / n_pos.clamp_min(1)
    return per_anchor[has].mean()


def polarity(labels: Tensor) -> Tensor:
    """Sentiment polarity of regression scores: -1 (< 0), 0 (= 0), 1 (> 0)."""
    return torch.sign(labels).long()


def dashfusion_losses(out: Any, batch: dict[str, Any], cfg: DashFusionConfig,
                      classification: bool) -> dict[str, Tensor]:
    """The two alignment terms of one training step: ``dash_align`` (mean InfoNCE between
    text and each other modality's pooled encoding, rows where both are present) and
    ``dash_supcon`` (supervised contrastive on the fused vector, positives by class or by
    polarity, labelled rows). ``out`` needs its encoding (``return_encoding=True``)."""
    enc = out.encoding
    if enc is None:
        raise ValueError("DashFusion's alignment losses need forward(..., return_encoding=True)")
    labelled = batch["label_mask"] > 0
    pooled = enc.pooled()
    avail = enc.available()
    terms = []
    for m in pooled:
        if m == "text":
            continue
        both = (avail["text"] > 0) & (avail[m] > 0)
        terms.append(info_nce(pooled["text"], pooled[m], cfg.temperature, both))
    align = torch.stack(terms).mean() if terms else out.fused.sum() * 0.0
    target = batch["label_class"] if classification else polarity(batch["labels"])
    supcon = supervised_contrastive(out.fused, target, cfg.temperature, labelled)
    return {"dash_align": align, "dash_supcon": supcon}
