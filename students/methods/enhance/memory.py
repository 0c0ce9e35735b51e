"""Cross-sample enhancement for missing or masked modalities (after HME).

When a sample's audio or vision is missing (``<m>_avail`` 0) or partly masked (some of
its frames dropped), the student borrows from similar training samples:

1. **Memory bank.** A FIFO queue of the ``bank_size`` most recent *complete* training
   samples (every modality present and unmasked), one row per sample holding each
   modality's pooled representation (detached). It is filled during training forward
   passes -- the current batch is pushed *after* it has been used for retrieval, so a
   sample never retrieves itself -- and frozen in eval mode. It is a set of buffers of
   the model, so a checkpoint saves it and evaluation from a checkpoint alone retrieves
   from the bank the training left (no train data needed at evaluation time).
2. **Retrieval.** The score of bank row ``j`` for sample ``b`` is the mean, over the
   modalities ``o != m`` that ``b`` has, of ``cos(pooled_o[b], bank_o[j])`` (text is a
   key whenever ``text_avail``). The top ``k`` rows get weights ``softmax(score / T)``.
3. **Enrichment.** ``enriched = sum_j w_j bank_m[j]``, the similarity-weighted mean of
   the neighbours' ``m`` representations.
4. **Uncertainty-aware gate.** ``u = H(w) / log k`` (normalised entropy of the weights:
   1 when the neighbours are equally similar, i.e. retrieval could not single out a
   match). A learned gate ``g = sigmoid(W [original; enriched; u; f])`` (``f``: the
   observed fraction of ``m``'s frames) blends ``g * enriched + (1 - g) * original``.

With ``student.enhance.enabled`` the student's encoding gets, through
:func:`enhance_encoding` (the method's ``encode`` hook), the blended vector as one extra
key token of ``m`` (so fusion's bottleneck reads it) for the samples it enhances, and
``m`` counts as available for them. Text is used as a retrieval key but never enriched:
it anchors fusion and LNLN masking leaves its sequence in place.

The retrieval functions below are pure; :class:`CrossSampleEnhancer` holds the bank and
the gates.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from students.encoders import Encoded
from students.outputs import StudentEncoding


def observed_fraction(keep: Tensor, lengths: Tensor) -> Tensor:
    """Fraction (B,) of a modality's real units that survive masking: ``keep`` (B, T)
    bool over the real units, ``lengths`` (B,) the real units per sample; 0 where a
    sample has none."""
    kept = keep.reshape(keep.shape[0], -1).float().sum(1)
    n = lengths.reshape(-1).float()
    return torch.where(n > 0, kept / n.clamp_min(1.0), torch.zeros_like(kept)).clamp(0.0, 1.0)


def cosine_matrix(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """``cos(a_i, b_j)`` for every pair: (B, h) x (N, h) -> (B, N); 0 for a zero vector."""
    an = a.float() / a.float().norm(dim=-1, keepdim=True).clamp_min(eps)
    bn = b.float() / b.float().norm(dim=-1, keepdim=True).clamp_min(eps)
    return an @ bn.T


def neighbour_scores(queries: dict[str, Tensor], present: dict[str, Tensor],
                     bank: dict[str, Tensor], valid: Tensor) -> tuple[Tensor, Tensor]:
    """(scores (B, N), has_key (B,) bool).

    ``scores[b, j]`` is the mean over the key modalities ``o`` present for ``b``
    (``present[o][b] > 0``) of ``cos(queries[o][b], bank[o][j])``; ``-inf`` for bank rows
    that are not filled (``valid`` (N,) bool) and for samples without any key.
    """
    names = list(queries)
    if not names:
        raise ValueError("neighbour_scores needs at least one key modality")
    b = queries[names[0]].shape[0]
    total = torch.zeros(b, valid.shape[0], device=valid.device)
    count = torch.zeros(b, device=valid.device)
    for o in names:
        p = (present[o].reshape(-1) > 0).float()
        total = total + p.unsqueeze(1) * cosine_matrix(queries[o], bank[o])
        count = count + p
    has_key = count > 0
    scores = total / count.clamp_min(1.0).unsqueeze(1)
    ok = has_key.unsqueeze(1) & valid.bool().unsqueeze(0)
    return torch.where(ok, scores, torch.full_like(scores, -math.inf)), has_key


def top_k_weights(scores: Tensor, k: int, temperature: float) -> tuple[Tensor, Tensor]:
    """(indices (B, k'), weights (B, k')), ``k' = min(k, N)``: the best bank rows per
    sample and ``softmax(score / temperature)`` over the finite ones among them (a row
    whose bank has fewer than ``k'`` finite scores gets zero weight on the rest; a row
    without any, zero weights)."""
    if k < 1 or temperature <= 0:
        raise ValueError(f"top_k_weights: k={k}, temperature={temperature}; use k >= 1 and "
                         "a positive temperature")
    top, idx = scores.topk(min(k, scores.shape[1]), dim=1)
    finite = torch.isfinite(top)
    logits = torch.where(finite, top / temperature, torch.full_like(top, -math.inf))
    any_finite = finite.any(1, keepdim=True)
    safe = torch.where(any_finite, logits, torch.zeros_like(logits))
    w = torch.softmax(safe, dim=1) * any_finite
    return idx, w


def enrich(values: Tensor, idx: Tensor, weights: Tensor) -> Tensor:
    """``sum_j weights[b, j] * values[idx[b, j]]``: (N, h), (B, k), (B, k) -> (B, h)."""
    return (values[idx] * weights.unsqueeze(-1).to(values.dtype)).sum(1)


def weight_entropy(weights: Tensor) -> Tensor:
    """Normalised entropy ``H(w) / log k`` (B,) of rows of non-negative weights summing
    to 1 (k = number of columns); 0 when k = 1; 1 for a row of zeros (no neighbour)."""
    k = weights.shape[1]
    w = weights.float()
    empty = w.sum(1) <= 0
    if k < 2:
        return torch.where(empty, torch.ones(w.shape[0], device=w.device),
                           torch.zeros(w.shape[0], device=w.device))
    h = -torch.xlogy(w, w).sum(1) / math.log(k)
    return torch.where(empty, torch.ones_like(h), h.clamp(0.0, 1.0))


def fifo_push(bank: Tensor, ptr: int, filled: int, rows: Tensor) -> tuple[Tensor, int, int]:
    """Write ``rows`` (M, h) into the ring buffer ``bank`` (N, h) from ``ptr`` on
    (wrapping; if M > N only the last N rows are kept). Returns the new bank (a copy),
    pointer and number of filled rows."""
    n = bank.shape[0]
    out = bank.clone()
    rows = rows[-n:] if rows.shape[0] > n else rows
    m = rows.shape[0]
    if m == 0:
        return out, ptr, filled
    pos = (ptr + torch.arange(m, device=bank.device)) % n
    out[pos] = rows.to(bank.dtype)
    return out, int((ptr + m) % n), min(n, filled + m)


class CrossSampleEnhancer(nn.Module):
    """The memory bank (buffers ``bank_<m>``, ``bank_ptr``, ``bank_filled``) and one gate
    per enhanced modality. See the module docstring."""

    def __init__(self, hidden: int, keys: list[str], targets: list[str], bank_size: int,
                 k: int, temperature: float) -> None:
        super().__init__()
        if not targets:
            raise ValueError("cross-sample enhancement needs an audio or vision modality to "
                             "enhance; the dataset has none (set student.enhance.enabled=false)")
        if k < 1 or bank_size < k or temperature <= 0:
            raise ValueError(f"enhance: k={k}, bank_size={bank_size}, temperature="
                             f"{temperature}; use 1 <= k <= bank_size and temperature > 0")
        self.keys = list(keys)
        self.targets = list(targets)
        self.k = k
        self.temperature = temperature
        for m in self.keys:
            self.register_buffer(f"bank_{m}", torch.zeros(bank_size, hidden))
        self.register_buffer("bank_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("bank_filled", torch.zeros((), dtype=torch.long))
        self.gate = nn.ModuleDict({m: nn.Linear(2 * hidden + 2, hidden) for m in self.targets})

    def bank(self, m: str) -> Tensor:
        return getattr(self, f"bank_{m}")

    @property
    def filled(self) -> int:
        return int(self.bank_filled.item())

    def valid_rows(self) -> Tensor:
        n = self.bank(self.keys[0]).shape[0]
        return torch.arange(n, device=self.bank_filled.device) < self.bank_filled

    @torch.no_grad()
    def push(self, pooled: dict[str, Tensor], complete: Tensor) -> None:
        """Append the complete samples' pooled representations (one row per sample)."""
        rows = complete.bool()
        if not rows.any():
            return
        ptr, filled = int(self.bank_ptr.item()), self.filled
        for m in self.keys:
            new, p, f = fifo_push(self.bank(m), ptr, filled, pooled[m][rows].detach().float())
            self.bank(m).copy_(new)
        self.bank_ptr.fill_(p)
        self.bank_filled.fill_(f)

    def forward(self, pooled: dict[str, Tensor], present: dict[str, Tensor],
                observed: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor],
                                                      dict[str, Tensor]]:
        """(blended (B, h), apply (B,) bool, uncertainty (B,)) per target modality.

        ``pooled``: every key modality's (B, h) representation; ``present``: (B,) > 0
        where the modality is there at all; ``observed``: per target, the fraction of its
        units left (1: complete). ``apply`` marks samples whose target is degraded
        (observed < 1) and that found neighbours; the gate is computed for every sample
        (its weights are always in the graph), the caller uses ``blended`` where
        ``apply``.
        """
        valid = self.valid_rows()
        out: dict[str, Tensor] = {}
        apply: dict[str, Tensor] = {}
        unc: dict[str, Tensor] = {}
        for m in self.targets:
            key_mods = [o for o in self.keys if o != m]
            scores, has_key = neighbour_scores({o: pooled[o].detach() for o in key_mods},
                                               {o: present[o] for o in key_mods},
                                               {o: self.bank(o) for o in key_mods}, valid)
            idx, w = top_k_weights(scores, self.k, self.temperature)
            enriched = enrich(self.bank(m), idx, w).to(pooled[m].dtype)
            u = weight_entropy(w).to(pooled[m].dtype)
            f = observed[m].to(pooled[m].dtype).reshape(-1)
            g = torch.sigmoid(self.gate[m](torch.cat(
                [pooled[m], enriched, u.unsqueeze(1), f.unsqueeze(1)], dim=-1)))
            out[m] = g * enriched + (1.0 - g) * pooled[m]
            found = has_key & (w.sum(1) > 0) & (self.bank_filled > 0)
            apply[m] = found & (f < 1.0)
            unc[m] = u
        return out, apply, unc


def enhance_encoding(enhancer: CrossSampleEnhancer, enc: StudentEncoding,
                     batch: dict[str, Any], training: bool) -> StudentEncoding:
    """``enc`` with every degraded audio / vision sample enhanced (an extra key token, the
    modality marked available); in training the batch's complete samples are pushed into
    the memory bank afterwards. ``extras["enhance"]``: per modality, (B,) bool, the
    samples enhanced."""
    modalities = list(enc.others)
    observed = {m: observed_fraction(batch[f"{m}_keep"], batch[f"{m}_lengths"])
                * (enc.avail[m] > 0) for m in modalities}
    pooled = enc.pooled()
    blended, apply, _ = enhancer(pooled, enc.available(), observed)
    if training:
        rates = batch.get("missing_rates") or {}
        complete = enc.text_avail > 0
        if "text" in rates:
            complete = complete & (rates["text"].to(complete.device) <= 0)
        for m in modalities:
            complete = complete & (observed[m] >= 1.0)
        enhancer.push(pooled, complete)
    others = dict(enc.others)
    avail = dict(enc.avail)
    for m in modalities:
        e, a = others[m], apply[m]
        others[m] = Encoded(
            tokens=torch.cat([e.tokens, blended[m].unsqueeze(1).to(e.tokens.dtype)], dim=1),
            mask=torch.cat([e.mask, a.unsqueeze(1)], dim=1),
            pooled=torch.where(a.unsqueeze(1), blended[m].to(e.pooled.dtype), e.pooled))
        avail[m] = torch.where(a, torch.ones_like(avail[m]), avail[m])
    return StudentEncoding(text=enc.text, others=others, avail=avail,
                           text_avail=enc.text_avail, desc=enc.desc,
                           extras={**enc.extras, "enhance": apply})
