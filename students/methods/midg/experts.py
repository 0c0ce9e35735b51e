"""MIDG: a mixture of invariant experts over the fused representation, and a cross-modal
adapter in the text encoder (:mod:`.adapter`; ``student.midg``,
:class:`~workbench.config.MidgConfig`), for domain generalization.

* :class:`MixtureOfExperts`: a router ``softmax(W h)`` over ``n_experts`` residual MLP
  experts; the fused vector becomes ``norm(h + sum_e p_e(h) * expert_e(h))`` (dense,
  every expert weighted). :func:`load_balance` (Switch Transformer) keeps the router from
  collapsing onto one expert: ``E * sum_e f_e * P_e``, ``f_e`` the fraction of samples
  whose top expert is ``e``, ``P_e`` the mean router probability of ``e`` (1 when
  balanced, ``E`` when collapsed).
* Invariance across domains (a sample's domain comes from the data config,
  ``data.domain``; the batch's ``domain`` holds its index, -1 where none): with
  ``invariance=vrex`` the variance of the per-domain risks (:func:`vrex_penalty`), with
  ``irm`` the IRMv1 penalty, the squared gradient of each domain's risk with respect to a
  fixed scale 1.0 on the predictions, summed over domains (:func:`irm_penalty`). A batch
  with fewer than two domains adds 0.
* :class:`~.adapter.CrossModalAdapter` (``adapter=true``) injects the audio / vision
  tokens into the last layers of the text encoder.

:func:`midg_losses` gives a step's ``midg_balance`` and ``midg_invariance``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from students.losses import task_loss
from students.outputs import StudentOutput
from workbench.config import MidgConfig


def load_balance(probs: Tensor) -> Tensor:
    """Switch-Transformer load balance of router probabilities ``probs`` (B, E)."""
    e = probs.shape[1]
    top = probs.argmax(1)
    frac = torch.bincount(top, minlength=e).to(probs.dtype) / probs.shape[0]
    return e * (frac * probs.mean(0)).sum()


def domain_risks(pred: Tensor, target: Tensor, kind: str, weights: Tensor, mask: Tensor,
                 domains: Tensor, scale: Tensor | None = None) -> list[Tensor]:
    """The task loss of each domain present (index >= 0, at least one labelled row), in
    ascending domain order; ``scale`` multiplies the predictions (IRM's dummy)."""
    p = pred if scale is None else pred * scale
    out = []
    for d in torch.unique(domains[(domains >= 0) & (mask > 0)]).tolist():
        m = mask * (domains == d).to(mask.dtype)
        out.append(task_loss(p, target, kind, weights, m))  # type: ignore[arg-type]
    return out


def vrex_penalty(risks: list[Tensor]) -> Tensor:
    """V-REx: the (population) variance of the per-domain risks; fewer than two: 0."""
    if len(risks) < 2:
        return risks[0] * 0.0 if risks else torch.zeros(())
    r = torch.stack(risks)
    return ((r - r.mean()) ** 2).mean()


def irm_penalty(pred: Tensor, target: Tensor, kind: str, weights: Tensor, mask: Tensor,
                domains: Tensor) -> Tensor:
    """IRMv1: ``sum_d |d R_d(w * pred) / d w|^2`` at ``w = 1`` (differentiable); fewer than
    two domains: 0."""
    scale = torch.ones((), device=pred.device, dtype=pred.dtype, requires_grad=True)
    risks = domain_risks(pred, target, kind, weights, mask, domains, scale)
    if len(risks) < 2:
        return pred.sum() * 0.0
    total = pred.sum() * 0.0
    for r in risks:
        (g,) = torch.autograd.grad(r, scale, create_graph=True)
        total = total + g.pow(2)
    return total


class MixtureOfExperts(nn.Module):
    """Router + residual MLP experts over the fused vector (see the module docstring)."""

    def __init__(self, hidden: int, n_experts: int, dropout: float) -> None:
        super().__init__()
        self.router = nn.Linear(hidden, n_experts)
        self.experts = nn.ModuleList([
            nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Dropout(dropout),
                          nn.Linear(2 * hidden, hidden)) for _ in range(n_experts)])
        self.norm = nn.LayerNorm(hidden)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """``(norm(h + sum_e p_e * expert_e(h)), p)`` with ``p`` (B, E) the router's."""
        probs = torch.softmax(self.router(h), dim=-1)
        mixed = torch.stack([f(h) for f in self.experts], dim=1)  # (B, E, h)
        return self.norm(h + (probs.unsqueeze(-1) * mixed).sum(1)), probs


def midg_losses(out: StudentOutput, batch: dict[str, Any], cfg: MidgConfig, *,
                task_kind: str, classification: bool) -> dict[str, Tensor]:
    """``midg_balance`` (:func:`load_balance` of the router) and ``midg_invariance`` (the
    configured penalty across the batch's domains, on the predictions)."""
    if out.extras.get("midg") is None:
        raise ValueError("MIDG's losses need a student built with student.midg.enabled")
    target = batch["label_class"] if classification else batch["labels"]
    w, lmask = batch["weights"], batch["label_mask"]
    domains = batch.get("domain")
    if domains is None:
        domains = torch.full_like(lmask, -1, dtype=torch.long)
    domains = domains.to(lmask.device)
    if cfg.invariance == "irm":
        inv = irm_penalty(out.pred, target, task_kind, w, lmask, domains)
    else:
        inv = vrex_penalty(domain_risks(out.pred, target, task_kind, w, lmask, domains))
        inv = inv.to(out.pred.device) if inv.dim() == 0 else inv
    return {"midg_balance": load_balance(out.extras["midg"]), "midg_invariance": inv}
