"""Distillation losses: pure functions on tensors.

Every loss computes one value per sample and reduces with :func:`weighted_mean`, which
normalises the weights per batch: ``sum_i w_i m_i l_i / sum_i w_i m_i`` (``m`` the mask).
A batch whose weights / mask sum to zero gives a loss of exactly 0 that is still attached
to the graph (so ``backward`` works and contributes nothing). Masked-out entries never
reach the arithmetic, so a NaN placeholder (e.g. a missing label) cannot leak into the
value or the gradients; a non-finite target that is *not* masked is an error.

Teacher tensors are constants by default (``detach=True``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

RegressionKind = Literal["l1", "mse"]


def _per_sample_check(name: str, values: Tensor, batch: int) -> None:
    if values.shape[0] != batch:
        raise ValueError(f"{name} has {values.shape[0]} rows but the batch has {batch}")


def _effective_weights(batch: int, weights: Tensor | None, mask: Tensor | None,
                       like: Tensor) -> Tensor:
    w = torch.ones(batch, dtype=torch.float32, device=like.device)
    if weights is not None:
        weights = weights.reshape(-1).to(device=like.device, dtype=torch.float32)
        _per_sample_check("weights", weights, batch)
        if not torch.isfinite(weights).all() or (weights < 0).any():
            raise ValueError("weights must be finite and non-negative; check the weighting step")
        w = w * weights
    if mask is not None:
        mask = mask.reshape(-1).to(device=like.device)
        _per_sample_check("mask", mask, batch)
        w = w * (mask > 0).to(torch.float32)
    return w


def weighted_mean(values: Tensor, weights: Tensor | None = None,
                  mask: Tensor | None = None) -> Tensor:
    """``sum(w * m * v) / sum(w * m)`` over the batch; 0 (in the graph) if that sum is 0.

    ``values`` (B,); ``weights`` (B,) non-negative or None (all ones); ``mask`` (B,) bool
    or {0, 1} or None. Entries with zero effective weight are excluded entirely.
    """
    if values.dim() != 1:
        raise ValueError(f"weighted_mean needs one value per sample (B,), got {tuple(values.shape)}")
    w = _effective_weights(values.shape[0], weights, mask, values)
    active = w > 0
    v = torch.where(active, values.float(), torch.zeros_like(values, dtype=torch.float32))
    denom = w.sum()
    num = (w * v).sum()
    safe = torch.where(denom > 0, denom, torch.ones_like(denom))
    return torch.where(denom > 0, num / safe, num * 0.0)


def _sanitize_target(target: Tensor, weights: Tensor | None, mask: Tensor | None,
                     name: str, fill: float = 0.0) -> Tensor:
    """Replace targets of excluded rows by ``fill``; reject non-finite included ones."""
    w = _effective_weights(target.shape[0], weights, mask, target)
    shape = (-1,) + (1,) * (target.dim() - 1)
    active = (w > 0).reshape(shape)
    if target.is_floating_point():
        bad = ~torch.isfinite(target) & active
        if bad.any():
            rows = torch.nonzero(bad.reshape(target.shape[0], -1).any(1)).flatten().tolist()
            raise ValueError(f"{name} is not finite at rows {rows[:10]} that the loss uses; "
                             "pass mask= (e.g. batch['label_mask']) to exclude them")
    return torch.where(active, target, torch.full_like(target, fill))


def _regression(pred: Tensor, target: Tensor, kind: str) -> Tensor:
    if kind == "l1":
        return (pred - target).abs()
    if kind == "mse":
        return (pred - target) ** 2
    raise ValueError(f"regression loss kind={kind!r}: use l1 or mse")


def task_loss(pred: Tensor, target: Tensor, kind: Literal["l1", "mse", "ce"] = "l1",
              weights: Tensor | None = None, mask: Tensor | None = None,
              label_smoothing: float = 0.0) -> Tensor:
    """Supervised loss against gold labels, weighted per sample.

    ``l1`` / ``mse``: ``pred`` (B,) or (B, 1) scores, ``target`` (B,) floats.
    ``ce``: ``pred`` (B, C) logits, ``target`` (B,) class indices; ``label_smoothing``
    ``eps`` mixes the one-hot target with the uniform one (torch's definition).
    """
    if kind == "ce":
        if pred.dim() != 2:
            raise ValueError(f"task_loss(kind='ce') needs (B, C) logits, got {tuple(pred.shape)}")
        n_cls = pred.shape[1]
        tgt = _sanitize_target(target.reshape(-1).long(), weights, mask, "target")
        bad = (tgt < 0) | (tgt >= n_cls)
        if bad.any():
            raise ValueError(f"class targets outside [0, {n_cls}) at rows "
                             f"{torch.nonzero(bad).flatten().tolist()[:10]} that the loss uses; "
                             "pass mask= (e.g. batch['label_mask']) to exclude them")
        per = F.cross_entropy(pred.float(), tgt, reduction="none",
                              label_smoothing=label_smoothing)
        return weighted_mean(per, weights, mask)
    pred = pred.reshape(pred.shape[0], -1)
    if pred.shape[1] != 1:
        raise ValueError(f"task_loss(kind={kind!r}) needs one score per sample, got "
                         f"{tuple(pred.shape)}; use kind='ce' for logits")
    pred = pred[:, 0].float()
    tgt = _sanitize_target(target.reshape(-1).float(), weights, mask, "target")
    return weighted_mean(_regression(pred, tgt, kind), weights, mask)


def expected_score(logits: Tensor, bins: Tensor | list[float]) -> Tensor:
    """``sum_i softmax(logits)_i * bins[i]`` per row: the distribution's mean score."""
    b = torch.as_tensor(bins, dtype=torch.float32, device=logits.device)
    if logits.shape[-1] != b.numel():
        raise ValueError(f"logits have {logits.shape[-1]} bins but bins has {b.numel()}")
    return torch.softmax(logits.float(), dim=-1) @ b


def tempered(probs: Tensor, temperature: float) -> Tensor:
    """``softmax(log(p) / T)`` row-wise: a probability vector softened (T > 1) or sharpened.

    Rows are first renormalised to sum to 1; zero entries stay zero.
    """
    p = probs.float()
    p = p / p.sum(-1, keepdim=True)
    if temperature == 1.0:
        return p
    return torch.softmax(torch.log(p) / temperature, dim=-1)


def soft_label_kd(student_logits: Tensor, teacher_probs: Tensor, temperature: float = 1.0,
                  weights: Tensor | None = None, mask: Tensor | None = None,
                  detach: bool = True) -> Tensor:
    """``T^2 * KL(p_T || q_T)`` over the label bins, weighted per sample.

    ``p_T = softmax(log p / T)`` is the teacher's distribution at temperature ``T`` (its
    rows renormalised first: mass the teacher put outside the bins is not a bin); ``q_T =
    softmax(z / T)`` the student's. ``KL(p||q) = sum_i p_i (log p_i - log q_i)`` with
    ``0 log 0 = 0``. The ``T^2`` factor keeps gradient sizes comparable across ``T``
    (Hinton et al.). Masked rows may hold anything (e.g. zeros for a missing teacher).
    """
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}: use a positive temperature")
    if student_logits.shape != teacher_probs.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher probs "
                         f"{tuple(teacher_probs.shape)} must have the same (B, n_bins) shape")
    t = teacher_probs.detach() if detach else teacher_probs
    w = _effective_weights(t.shape[0], weights, mask, t)
    active = (w > 0).unsqueeze(1)
    t = t.float()
    if active.any():
        ta = t[active.squeeze(1)]
        if not torch.isfinite(ta).all() or (ta < 0).any() or (ta.sum(-1) <= 0).any():
            raise ValueError("teacher_probs must be finite, non-negative, with positive row "
                             "sums on the rows the loss uses; mask rows without a teacher")
    uniform = torch.full_like(t, 1.0 / t.shape[1])
    t = torch.where(active, t, uniform)
    p = tempered(t, temperature)
    log_q = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    kl = (torch.xlogy(p, p) - p * log_q).sum(-1)
    return temperature ** 2 * weighted_mean(kl, weights, mask)


def expected_score_loss(student_logits: Tensor, bins: Tensor | list[float],
                        target_score: Tensor, kind: RegressionKind = "l1",
                        weights: Tensor | None = None, mask: Tensor | None = None,
                        detach: bool = True) -> Tensor:
    """L1 / MSE between the student's expected score over bins and a target score
    (the teacher's expected score)."""
    tgt = target_score.detach() if detach else target_score
    tgt = _sanitize_target(tgt.reshape(-1).float(), weights, mask, "target_score")
    return weighted_mean(_regression(expected_score(student_logits, bins), tgt, kind),
                         weights, mask)


def prediction_kd(student_pred: Tensor, teacher_pred: Tensor, kind: RegressionKind = "l1",
                  weights: Tensor | None = None, mask: Tensor | None = None,
                  detach: bool = True) -> Tensor:
    """Privileged KD on the prediction: L1 / MSE between student and prompted-network
    scores (for class logits use :func:`soft_label_kd` on ``softmax(teacher_logits)``)."""
    tgt = teacher_pred.detach() if detach else teacher_pred
    sp = student_pred.reshape(student_pred.shape[0], -1)
    tp = tgt.reshape(tgt.shape[0], -1)
    if sp.shape[1] != 1 or tp.shape[1] != 1:
        raise ValueError("prediction_kd compares one score per sample; for class logits use "
                         "soft_label_kd(student_logits, teacher_logits.softmax(-1), T)")
    tp = _sanitize_target(tp[:, 0].float(), weights, mask, "teacher_pred")
    return weighted_mean(_regression(sp[:, 0].float(), tp, kind), weights, mask)


def representation_kd(student_repr: Tensor, teacher_repr: Tensor,
                      kind: Literal["cosine", "mse"] = "cosine",
                      weights: Tensor | None = None, mask: Tensor | None = None,
                      detach: bool = True, eps: float = 1e-8) -> Tensor:
    """Privileged KD on the representation, per sample: ``1 - cos(s, t)`` or
    ``mean_j (s_j - t_j)^2``. ``student_repr`` is the student's fused vector through its
    learned projection (``StudentOutput.projected``); ``teacher_repr`` the prompted
    network's ``fused``."""
    t = teacher_repr.detach() if detach else teacher_repr
    if student_repr.shape != t.shape:
        raise ValueError(f"student representation {tuple(student_repr.shape)} and teacher "
                         f"{tuple(t.shape)} differ; set student.kd_repr_dim to the teacher's "
                         "width")
    s = student_repr.float()
    t = _sanitize_target(t.float(), weights, mask, "teacher_repr", fill=1.0)
    if kind == "cosine":
        cos = (s * t).sum(-1) / (s.norm(dim=-1).clamp_min(eps) * t.norm(dim=-1).clamp_min(eps))
        per = 1.0 - cos
    elif kind == "mse":
        per = ((s - t) ** 2).mean(-1)
    else:
        raise ValueError(f"representation_kd kind={kind!r}: use cosine or mse")
    return weighted_mean(per, weights, mask)


def attention_kd(student_attn: Tensor, teacher_attn: Tensor,
                 query_mask: Tensor | None = None, kind: Literal["kl", "mse"] = "kl",
                 weights: Tensor | None = None, mask: Tensor | None = None,
                 detach: bool = True, eps: float = 1e-8) -> Tensor:
    """Privileged KD on attention maps ``(B, H, Q, K)`` whose rows are distributions over
    keys: per (head, query) ``KL(t || s) = sum_k t log(t / s)`` (``s`` floored at ``eps``)
    or the mean squared difference, averaged over heads and the valid queries
    (``query_mask`` (B, Q), e.g. the text attention mask), then weighted per sample."""
    t = teacher_attn.detach() if detach else teacher_attn
    if student_attn.shape != t.shape or student_attn.dim() != 4:
        raise ValueError(f"attention maps must both be (B, H, Q, K); got "
                         f"{tuple(student_attn.shape)} and {tuple(t.shape)}")
    s, t = student_attn.float(), t.float()
    if kind == "kl":
        per_q = (torch.xlogy(t, t) - t * torch.log(s.clamp_min(eps))).sum(-1)  # (B, H, Q)
    elif kind == "mse":
        per_q = ((s - t) ** 2).mean(-1)
    else:
        raise ValueError(f"attention_kd kind={kind!r}: use kl or mse")
    per_q = per_q.mean(1)  # over heads -> (B, Q)
    if query_mask is None:
        per = per_q.mean(-1)
    else:
        qm = query_mask.to(per_q.dtype)
        if qm.shape != per_q.shape:
            raise ValueError(f"query_mask {tuple(qm.shape)} must be (B, Q)={tuple(per_q.shape)}")
        per = (per_q * qm).sum(-1) / qm.sum(-1).clamp_min(1.0)
    return weighted_mean(per, weights, mask)
