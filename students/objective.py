"""The training objective: which loss terms a stage computes, and computing them.

:func:`plan_losses` reads the config once into a :class:`LossPlan` (teacher terms only
where their signal exists, the methods the config switches on); :func:`compute_losses` is
the core terms of one forward pass and their weighted sum; :func:`training_losses` is one
training step: the forward pass, the core terms, and each active method's terms
(:meth:`~students.methods.Method.losses`), added to the total as the method says
(:meth:`~students.methods.Method.weighted`). :func:`freeze_unused` freezes the heads and
method parts no term reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from students.losses import (
    attention_kd,
    expected_score_loss,
    prediction_kd,
    representation_kd,
    soft_label_kd,
    task_loss,
)
from students.methods import Method, Step
from students.model import StudentModel, StudentOutput
from workbench.config import DataConfig, LossConfig, PrivilegedConfig


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
    methods: tuple[Method, ...] = ()
    """The methods on (:func:`students.methods.active`): their terms join the total."""
    label_range: tuple[float, float] = (-3.0, 3.0)

    @property
    def uses_bins(self) -> bool:
        return self.soft_kd > 0 or self.expected > 0

    @property
    def uses_privileged(self) -> bool:
        return self.priv_pred > 0 or self.priv_repr > 0 or self.priv_attn > 0

    @property
    def needs_encoding(self) -> bool:
        return any(m.adds_losses for m in self.methods)


def plan_losses(loss: LossConfig, data: DataConfig, *, task_kind: str,
                methods: Sequence[Method] = (), soft_labels: bool = False,
                privileged: PrivilegedConfig | None = None) -> LossPlan:
    """The loss terms of a stage: the task loss ``task_kind`` (``train.task_loss``) on
    ``data``'s labels, the teacher terms of ``loss`` only where their signal exists
    (``soft_labels``; ``privileged``: the MMSLF object when a prompted network's targets
    exist, else None), and the terms of ``methods`` (:func:`students.methods.active`)."""
    classification = data.task == "classification"
    pc = privileged if privileged is not None else PrivilegedConfig()
    on = privileged is not None
    return LossPlan(
        task_kind=task_kind, classification=classification,
        label_smoothing=loss.label_smoothing, unimodal_aux=loss.unimodal_aux,
        soft_kd=loss.soft_label_kd if soft_labels else 0.0,
        expected=loss.expected_score if soft_labels and not classification else 0.0,
        temperature=loss.temperature,
        priv_pred=pc.pred_weight if on else 0.0,
        priv_repr=pc.repr_weight if on else 0.0,
        priv_repr_kind=pc.repr_kind,
        priv_attn=pc.attn_weight if on else 0.0,
        methods=tuple(methods),
        label_range=tuple(data.label_range),  # type: ignore[arg-type]
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
    terms of the plan's methods (in the plan's order, each method's added term by term),
    all in ``total``. Without a method that adds terms this is exactly
    ``compute_losses(model(batch), ...)``.

    ``model`` is what the loop calls (possibly wrapped by accelerate); ``raw_model``
    the unwrapped :class:`StudentModel` whose halves the methods call (default:
    ``model``); ``rng`` is handed to the methods that draw (seeded per step by the loop).
    """
    raw = raw_model if raw_model is not None else model
    if not plan.needs_encoding:  # no method term: the forward pass keeps no encoding
        return compute_losses(model(batch, return_attention=want_attn), batch, plan, bins)
    out = model(batch, return_attention=want_attn, return_encoding=True)
    losses = compute_losses(out, batch, plan, bins)
    total = losses.pop("total")
    step = Step(task_kind=plan.task_kind, classification=plan.classification,
                label_range=plan.label_range, bins=bins, rng=rng)
    for method in plan.methods:
        parts = method.losses(raw, out, batch, step)
        for term in method.weighted(parts):
            total = total + term
        losses.update(parts)
    losses["total"] = total
    return losses


def freeze_unused(model: StudentModel, plan: LossPlan) -> list[str]:
    """Freeze heads no loss term reads (no trainable weight without a gradient: DDP
    rejects those). Returns their names."""
    frozen = []
    read = {head for m in plan.methods for head in m.reads_heads()}
    unimodal_used = plan.unimodal_aux > 0 or "unimodal_heads" in read
    parts: dict[str, Any] = {
        "bin_head": model.bin_head if not plan.uses_bins else None,
        "unimodal_heads": model.unimodal_heads if not unimodal_used else None,
        "kd_proj": model.kd_proj if plan.priv_repr <= 0 else None}
    for method in plan.methods:
        parts.update(method.unused_parts(model.part(method)))
    for name, module in parts.items():
        if module is not None:
            module.requires_grad_(False)
            frozen.append(name)
    return frozen
