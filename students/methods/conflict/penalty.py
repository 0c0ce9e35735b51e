"""Conflict-aware gradient penalty and statistical loss.

With ``train.conflict`` (:class:`workbench.config.ConflictConfig`) the trainer, each
step, sends each modality's own contribution to the fusion sum
(``StudentOutput.contributions``: the pooled text; for audio / vision ``a_m * g_m *
c_m``) through the layers all modalities share (the fusion tail and the prediction
head, :meth:`~students.model.StudentModel.shared_tail`) to a gold-label loss ``L_m`` (on
the samples that have ``m``), and takes ``g_m = dL_m / d theta_shared`` with
``torch.autograd.grad(..., create_graph=True)``, so the penalty itself is
differentiable (it trains the encoders, gates and shared weights towards gradients that
do not fight). Modalities without any sample in the batch are left out.

* **Dominance** ``relu(max_m |g_m| / mean_m |g_m| - tau)``: one modality's gradient far
  larger than the others' (it would dictate the shared weights).
* **Opposition** ``mean over pairs a < b of relu(-cos(g_a, g_b))``: modalities pulling
  the shared weights in opposite directions.

:func:`conflict_penalty` is their sum (0 with fewer than two modalities).

The **statistical loss** aligns the batch's predictions with the gold labels' statistics
on the train split (computed once, :func:`label_statistics`): for regression
``(mean(pred) - mu)^2 + (std(pred) - sigma)^2`` (std term from two labelled rows on;
population std); for classification ``sum_c (mean_b softmax(pred)_bc - pi_c)^2`` with
``pi`` the class frequencies (a one-hot's variance follows from its mean).

:func:`conflict_losses` is one training step's terms, built from these pure functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from students.losses import task_loss
from students.methods.base import StudentView
from students.outputs import StudentOutput
from workbench.config import ConflictConfig


def _fp(x: Tensor) -> Tensor:
    """At least float32 (float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def flatten_grads(grads: Sequence[Tensor | None], like: Sequence[Tensor]) -> Tensor:
    """One vector from per-parameter gradients (None -> zeros shaped like the parameter)."""
    parts = [torch.zeros_like(p).reshape(-1) if g is None else g.reshape(-1)
             for g, p in zip(grads, like, strict=True)]
    return torch.cat(parts) if parts else torch.zeros(0)


def dominance(norms: Tensor, tau: float, eps: float = 1e-12) -> Tensor:
    """``relu(max(norms) / mean(norms) - tau)``; 0 when every norm is 0."""
    norms = _fp(norms)
    mean = norms.mean()
    ratio = norms.max() / mean.clamp_min(eps)
    return torch.where(mean > eps, torch.relu(ratio - tau), torch.zeros_like(mean))


def opposition(vectors: Tensor, eps: float = 1e-12) -> Tensor:
    """Mean over pairs ``a < b`` of ``relu(-cos(v_a, v_b))`` for rows of ``vectors``
    (M, P); 0 with fewer than two rows. A zero vector has cosine 0 with anything."""
    m = vectors.shape[0]
    if m < 2:
        return vectors.sum() * 0.0
    v = _fp(vectors)
    unit = v / v.norm(dim=1, keepdim=True).clamp_min(eps)
    cos = unit @ unit.T
    iu = torch.triu_indices(m, m, offset=1, device=v.device)
    return torch.relu(-cos[iu[0], iu[1]]).mean()


def conflict_penalty(vectors: Tensor, tau: float) -> dict[str, Tensor]:
    """``{"dominance", "opposition", "penalty" (their sum), "norms" (M,)}`` for the
    per-modality gradient vectors (M, P); zeros (in the graph) with M < 2."""
    norms = _fp(vectors).norm(dim=1)
    if vectors.shape[0] < 2:
        zero = vectors.sum() * 0.0
        return {"dominance": zero, "opposition": zero, "penalty": zero, "norms": norms}
    dom = dominance(norms, tau)
    opp = opposition(vectors)
    return {"dominance": dom, "opposition": opp, "penalty": dom + opp, "norms": norms}


def label_statistics(labels: Sequence[float] | Tensor, classification: bool = False,
                     n_classes: int = 0) -> tuple[float, ...]:
    """Regression: ``(mean, population std)`` of the labels; classification: the class
    frequencies ``(pi_0, ..., pi_{C-1})`` of the class indices."""
    y = torch.as_tensor(labels, dtype=torch.float64).reshape(-1)
    y = y[torch.isfinite(y)]
    if y.numel() == 0:
        raise ValueError("label_statistics got no finite label")
    if classification:
        if n_classes < 2:
            raise ValueError("label_statistics(classification=True) needs n_classes >= 2")
        counts = torch.bincount(y.long(), minlength=n_classes).double()
        return tuple(float(c) for c in counts / counts.sum())
    return float(y.mean()), float(y.std(unbiased=False))


def statistical_loss(pred: Tensor, stats: Sequence[float], mask: Tensor | None = None,
                     classification: bool = False, eps: float = 1e-8) -> Tensor:
    """The statistical loss of the module docstring on the rows with ``mask`` > 0;
    0 (in the graph) without any such row."""
    rows = pred.shape[0]
    keep = torch.ones(rows, dtype=torch.bool, device=pred.device) if mask is None \
        else mask.reshape(-1).to(pred.device) > 0
    n = int(keep.sum())
    if n == 0:
        return pred.sum() * 0.0
    if classification:
        prior = torch.as_tensor(list(stats), dtype=torch.float32, device=pred.device)
        probs = torch.softmax(pred.float()[keep], dim=-1)
        return ((probs.mean(0) - prior) ** 2).sum()
    mu, sigma = float(stats[0]), float(stats[1])
    p = pred.float().reshape(rows, -1)[:, 0][keep]
    mean = p.mean()
    loss = (mean - mu) ** 2
    if n >= 2:
        std = torch.sqrt(((p - mean) ** 2).mean() + eps)
        loss = loss + (std - sigma) ** 2
    return loss


def conflict_losses(model: StudentView, out: StudentOutput, batch: dict[str, Any],
                    cfg: ConflictConfig, *, task_kind: str, classification: bool,
                    label_stats: Sequence[float] | None) -> dict[str, Tensor]:
    """The conflict-aware penalty and the statistical loss for one batch: ``conflict``
    (dominance + opposition of the modalities' gradients on the shared weights,
    differentiable, with ``cfg.tau``), ``statistical``; for the log
    ``conflict_dominance``, ``conflict_opposition``. Unweighted: the caller adds them
    with ``cfg.weight`` and ``cfg.statistical_weight``.

    ``task_kind`` is the task loss (``train.task_loss``); ``label_stats`` the train
    split's :func:`label_statistics`.
    """
    if out.contributions is None:
        raise ValueError("the conflict penalty needs the fusion's per-modality contributions")
    if label_stats is None:
        raise ValueError("the statistical loss needs the train labels' statistics "
                         "(label_stats): call the method's prepare() with the train samples")
    target = batch["label_class"] if classification else batch["labels"]
    label_mask, w = batch["label_mask"], batch["weights"]
    avail = out.encoding.available() if out.encoding is not None else {
        "text": batch["text_avail"], **{m: batch[f"{m}_avail"] for m in out.contributions
                                        if m != "text"}}
    params = model.shared_parameters()
    vectors = []
    for m, c in out.contributions.items():
        am = label_mask.to(c.device) * avail[m].to(c.device)
        if not (am > 0).any():
            continue
        loss_m = task_loss(model.shared_tail(c), target, task_kind, w, am)
        grads = torch.autograd.grad(loss_m, params, create_graph=True, allow_unused=True)
        vectors.append(flatten_grads(grads, params))
    stacked = torch.stack(vectors) if vectors else out.pred.new_zeros(0, 1)
    pen = conflict_penalty(stacked, cfg.tau)
    stat = statistical_loss(out.pred, label_stats, label_mask, classification)
    return {"conflict": pen["penalty"], "conflict_dominance": pen["dominance"].detach(),
            "conflict_opposition": pen["opposition"].detach(), "statistical": stat}
