"""The training objective: which loss terms a stage computes, and computing them.

:func:`plan_losses` reads the config once into a :class:`LossPlan` (teacher terms only
where their signal exists, each method's terms only with its switch, the method's config
object held whole); :func:`compute_losses` is every term of one forward pass and their
weighted sum; :func:`training_losses` is one training step (the forward pass, those terms,
and the methods' terms from :func:`students.msmix.msmix_losses`,
:func:`students.conflict.conflict_losses`, :func:`students.dashfusion.dashfusion_losses`,
:func:`students.cyin.cyin_losses` and :func:`students.midg.midg_losses`).
:func:`freeze_unused` freezes the heads no term reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from students.conflict import conflict_losses
from students.cyin import cyin_losses, cyin_total
from students.dashfusion import dashfusion_losses
from students.losses import (
    attention_kd,
    expected_score_loss,
    prediction_kd,
    representation_kd,
    soft_label_kd,
    task_loss,
)
from students.midg import midg_losses
from students.model import StudentModel, StudentOutput
from students.msmix import msmix_losses
from workbench.config import (
    ConflictConfig,
    CyinConfig,
    DashFusionConfig,
    DistillConfig,
    MidgConfig,
    MsMixConfig,
)


@dataclass(frozen=True)
class LossPlan:
    """Which loss terms a stage computes, with their weights (0: off)."""

    task_kind: str
    classification: bool
    label_smoothing: float = 0.0
    """Label smoothing of the cross-entropy task loss (``loss.label_smoothing``)."""
    unimodal_aux: float = 0.0
    soft_kd: float = 0.0
    expected: float = 0.0
    temperature: float = 1.0
    priv_pred: float = 0.0
    priv_repr: float = 0.0
    priv_repr_kind: str = "cosine"
    priv_attn: float = 0.0
    msmix: MsMixConfig | None = None
    """MS-Mix (``train.msmix``) with its weights; None: off."""
    conflict: ConflictConfig | None = None
    """Conflict-aware penalty + statistical loss (``train.conflict``); None: off."""
    label_stats: tuple[float, ...] | None = None
    """Gold-label statistics of the train split (mean, std; or class frequencies)."""
    label_range: tuple[float, float] = (-3.0, 3.0)
    dashfusion: DashFusionConfig | None = None
    """DashFusion's alignment losses (``student.fusion=dashfusion``); None: off."""
    cyin: CyinConfig | None = None
    """CyIN's bottleneck and translation losses (``student.latent=cyin``); None: off."""
    midg: MidgConfig | None = None
    """MIDG's load-balance and invariance terms (``student.experts=midg``); None: off."""

    @property
    def uses_bins(self) -> bool:
        return self.soft_kd > 0 or self.expected > 0

    @property
    def uses_privileged(self) -> bool:
        return self.priv_pred > 0 or self.priv_repr > 0 or self.priv_attn > 0

    @property
    def needs_encoding(self) -> bool:
        return (self.msmix is not None or self.conflict is not None
                or self.dashfusion is not None or self.cyin is not None
                or self.midg is not None)


def plan_losses(cfg: DistillConfig, *, soft_labels: bool, privileged: bool,
                label_stats: tuple[float, ...] | None = None) -> LossPlan:
    """The loss terms of a stage: teacher terms only where their signal exists; the
    method terms only with their switch (``train.msmix.enabled``,
    ``train.conflict.enabled``). ``label_stats``:
    :func:`students.conflict.label_statistics` of the train split (the statistical loss
    needs them)."""
    lc, tc = cfg.loss, cfg.train
    classification = cfg.data.task == "classification"
    return LossPlan(
        task_kind=cfg.train.task_loss, classification=classification,
        label_smoothing=lc.label_smoothing, unimodal_aux=lc.unimodal_aux,
        soft_kd=lc.soft_label_kd if soft_labels else 0.0,
        expected=lc.expected_score if soft_labels and not classification else 0.0,
        temperature=lc.temperature,
        priv_pred=lc.privileged_pred if privileged else 0.0,
        priv_repr=lc.privileged_repr if privileged else 0.0,
        priv_repr_kind=lc.privileged_repr_kind,
        priv_attn=lc.privileged_attn if privileged else 0.0,
        msmix=tc.msmix if tc.msmix.enabled else None,
        conflict=tc.conflict if tc.conflict.enabled else None,
        label_stats=label_stats,
        label_range=tuple(cfg.data.label_range),  # type: ignore[arg-type]
        dashfusion=cfg.student.dashfusion if cfg.student.fusion == "dashfusion" else None,
        cyin=cfg.student.cyin if cfg.student.latent == "cyin" else None,
        midg=cfg.student.midg if cfg.student.experts == "midg" else None,
    )


def compute_losses(out: StudentOutput, batch: dict[str, Any], plan: LossPlan,
                   bins: Tensor | None) -> dict[str, Tensor]:
    """Every active loss term and their weighted sum (``total``) for one batch."""
    w = batch["weights"]
    target = batch["label_class"] if plan.classification else batch["labels"]
    label_mask = batch["label_mask"]
    losses: dict[str, Tensor] = {}
    losses["task"] = task_loss(out.pred, target, plan.task_kind, w, label_mask,
                               label_smoothing=plan.label_smoothing)
    total = losses["task"]
    if plan.unimodal_aux > 0:
        terms = []
        for m, pred in out.unimodal.items():
            avail = batch["text_avail"] if m == "text" else batch[f"{m}_avail"]
            terms.append(task_loss(pred, target, plan.task_kind, w, label_mask * avail))
        losses["unimodal"] = torch.stack(terms).mean()
        total = total + plan.unimodal_aux * losses["unimodal"]
    if plan.uses_bins:
        if out.bin_logits is None:
            raise ValueError("soft-label KD needs the student's bin head; build it with bins")
        tmask = batch["teacher_probs_mask"]
        if plan.soft_kd > 0:
            losses["soft_kd"] = soft_label_kd(out.bin_logits, batch["teacher_probs"],
                                              plan.temperature, w, tmask)
            total = total + plan.soft_kd * losses["soft_kd"]
        if plan.expected > 0:
            assert bins is not None
            texp = torch.nan_to_num(batch["teacher_expected"])
            losses["expected"] = expected_score_loss(out.bin_logits, bins, texp, "l1", w, tmask)
            total = total + plan.expected * losses["expected"]
    if plan.uses_privileged:
        pmask = batch["priv_mask"]
        if plan.priv_pred > 0:
            if plan.classification:
                losses["priv_pred"] = soft_label_kd(out.pred, batch["priv_pred"].softmax(-1),
                                                    plan.temperature, w, pmask)
            else:
                losses["priv_pred"] = prediction_kd(out.pred, batch["priv_pred"], "l1", w, pmask)
            total = total + plan.priv_pred * losses["priv_pred"]
        if plan.priv_repr > 0:
            losses["priv_repr"] = representation_kd(out.projected, batch["priv_fused"],
                                                    plan.priv_repr_kind, w, pmask)  # type: ignore[arg-type]
            total = total + plan.priv_repr * losses["priv_repr"]
        if plan.priv_attn > 0:
            if out.attention is None:
                raise ValueError("attention KD needs forward(..., return_attention=True)")
            terms = [attention_kd(out.attention[f"text_to_{m}"], t, batch["attention_mask"],
                                  "kl", w, pmask) for m, t in batch["priv_attn"].items()]
            losses["priv_attn"] = torch.stack(terms).mean()
            total = total + plan.priv_attn * losses["priv_attn"]
    losses["total"] = total
    return losses


def training_losses(model: Any, batch: dict[str, Any], plan: LossPlan, bins: Tensor | None,
                    *, want_attn: bool = False, rng: np.random.Generator | None = None,
                    raw_model: StudentModel | None = None) -> dict[str, Tensor]:
    """One training step's losses: the forward pass, :func:`compute_losses`, and the
    method terms the plan switches on (MS-Mix, conflict penalty + statistical loss),
    all in ``total``. With every switch off this is exactly
    ``compute_losses(model(batch), ...)``.

    ``model`` is what the loop calls (possibly wrapped by accelerate); ``raw_model``
    the unwrapped :class:`StudentModel` whose halves the methods call (default:
    ``model``); ``rng`` draws MS-Mix's pairs and ratios (seeded per step by the loop).
    """
    raw = raw_model if raw_model is not None else model
    if not plan.needs_encoding:  # the plain step, called exactly as before the methods
        return compute_losses(model(batch, return_attention=want_attn), batch, plan, bins)
    out = model(batch, return_attention=want_attn, return_encoding=True)
    losses = compute_losses(out, batch, plan, bins)
    total = losses.pop("total")
    if plan.msmix is not None:
        mx = plan.msmix
        if rng is None:
            raise ValueError("MS-Mix needs rng= (a numpy Generator seeded per step)")
        parts = msmix_losses(raw, out, batch, mx, task_kind=plan.task_kind,
                             label_range=plan.label_range, bins=bins, rng=rng)
        total = (total + mx.weight * parts["msmix"] + mx.kl_weight * parts["msmix_kl"]
                 + mx.intensity_weight * parts["msmix_intensity"])
        losses.update(parts)
    if plan.conflict is not None:
        cf = plan.conflict
        parts = conflict_losses(raw, out, batch, cf, task_kind=plan.task_kind,
                                classification=plan.classification,
                                label_stats=plan.label_stats)
        total = total + cf.weight * parts["conflict"] \
            + cf.statistical_weight * parts["statistical"]
        losses.update(parts)
    if plan.dashfusion is not None:
        dc = plan.dashfusion
        parts = dashfusion_losses(out, batch, dc, plan.classification)
        total = total + dc.align_weight * parts["dash_align"] \
            + dc.supcon_weight * parts["dash_supcon"]
        losses.update(parts)
    if plan.cyin is not None:
        parts = cyin_losses(raw, out, batch, plan.cyin, task_kind=plan.task_kind,
                            classification=plan.classification)
        total = total + cyin_total(parts, plan.cyin)
        losses.update(parts)
    if plan.midg is not None:
        mg = plan.midg
        parts = midg_losses(out, batch, mg, task_kind=plan.task_kind,
                            classification=plan.classification)
        total = total + mg.balance_weight * parts["midg_balance"] \
            + mg.invariance_weight * parts["midg_invariance"]
        losses.update(parts)
    losses["total"] = total
    return losses


def freeze_unused(model: StudentModel, plan: LossPlan) -> list[str]:
    """Freeze heads no loss term reads (no trainable weight without a gradient: DDP
    rejects those). Returns their names."""
    frozen = []
    mx = plan.msmix
    unimodal_used = plan.unimodal_aux > 0 or (mx is not None and mx.kl_weight > 0)
    intensity_used = mx is not None and mx.intensity_weight > 0
    parts = {"bin_head": model.bin_head if not plan.uses_bins else None,
             "unimodal_heads": model.unimodal_heads if not unimodal_used else None,
             "kd_proj": model.kd_proj if plan.priv_repr <= 0 else None,
             "intensity_heads": model.intensity_heads if not intensity_used else None}
    cy, latent = plan.cyin, model.latent
    if cy is not None and latent is not None:  # CyIN terms weighted 0 train nothing
        parts["cyin_label_heads"] = latent.label_head if cy.label_weight == 0 else None
        parts["cyin_decoders"] = latent.decoder if cy.recon_weight == 0 else None
    for name, module in parts.items():
        if module is not None:
            module.requires_grad_(False)
            frozen.append(name)
    return frozen
