"""Batching for training: the item dataset, the epoch-seeded sampler, and the collator.

:class:`EpochSampler` gives an order that depends only on (seed, epoch) (optionally
grouped by text length), so a resumed run sees exactly the batches an unbroken one would;
with a token budget its :meth:`~EpochSampler.batches` hold as many samples as fit the
budget (:func:`token_batches`) and :class:`EpochBatchSampler` hands them to the loader.
:func:`length_batches` cuts a fixed list (validation, evaluation, prediction) the same way,
and :func:`padding_report` counts the real and padded tokens of a list of batches.
:class:`TrainCollator` wraps :class:`students.collate.Collator` with what the loop needs:
per-sample quality weights (:func:`students.weighting.batch_weights`), the fixed weights of
augmented samples, the frozen prompted network's targets (:class:`PrivilegedTarget`), and
no ``descriptions`` for the plain student.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from students.collate import Collator, StudentItem
from students.robustness import MaskSpec
from students.weighting import batch_weights
from workbench.config import WeightingConfig


class ItemDataset(Dataset):
    """A list of :class:`StudentItem` as a map-style dataset."""

    def __init__(self, items: list[StudentItem]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> StudentItem:
        return self.items[i]


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A 32-bit seed that depends only on (seed, epoch, stream)."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0])


MIN_REAL_SHARE = 0.9
"""Evaluation and prediction batches (:func:`length_batches` by default) are cut where
adding the next text would leave less than this share of the batch's tokens real."""


def token_batches(lengths: Sequence[int], batch_tokens: int,
                  min_real: float = 0.0) -> list[list[int]]:
    """Cut positions ``0..n-1`` (in this order) into consecutive batches whose padded size
    -- samples x the longest sample's tokens -- is at most ``batch_tokens``, and (with
    ``min_real`` > 0) whose real tokens are at least that share of the padded ones.

    Meant for lengths sorted longest first, so each batch holds as many samples as fit. A
    sample longer than the budget is a batch of its own (nothing is dropped or cut).
    """
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens={batch_tokens}: use a positive token budget")
    out: list[list[int]] = []
    cur: list[int] = []
    longest = real = 0
    for i, n in enumerate(lengths):
        n = max(1, int(n))
        if cur:
            padded = (len(cur) + 1) * max(longest, n)
            if padded > batch_tokens or real + n < min_real * padded:
                out.append(cur)
                cur, longest, real = [], 0, 0
        cur.append(i)
        longest, real = max(longest, n), real + n
    if cur:
        out.append(cur)
    return out


def length_batches(lengths: Sequence[int], batch_size: int,
                   batch_tokens: int | None = None) -> list[np.ndarray]:
    """Batches (arrays of positions into ``lengths``) of a fixed list, longest first.

    The positions are sorted by length (longest first, ties in input order) and cut:
    ``batch_tokens=0`` -> ``batch_size`` samples each (the last may be short);
    ``batch_tokens > 0`` -> as many samples as fit that many padded tokens
    (:func:`token_batches`); ``None`` -> a budget of ``batch_size`` x the mean length
    (rounded up), each batch also cut where less than :data:`MIN_REAL_SHARE` of its
    tokens would be real (the long tail goes in small batches; a batch's fixed cost is
    small next to the padded tokens it saves).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: use at least 1")
    if batch_tokens is not None and batch_tokens < 0:
        raise ValueError(f"batch_tokens={batch_tokens}: use None (batch_size x the mean "
                         "length), 0 (batch_size samples) or a positive token budget")
    lens = np.asarray(lengths, dtype=np.int64)
    if not len(lens):
        return []
    order = np.argsort(-lens, kind="stable")
    min_real = 0.0
    if batch_tokens is None:
        batch_tokens = batch_size * max(1, int(np.ceil(lens.mean())))
        min_real = MIN_REAL_SHARE
    if batch_tokens == 0:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return [order[b] for b in token_batches(lens[order].tolist(), batch_tokens, min_real)]


def padding_report(batch_lengths: Sequence[Sequence[int]]) -> dict[str, float]:
    """Real and padded tokens of a list of batches (each its samples' token counts):
    ``batches``, ``samples``, ``real_tokens``, ``padded_tokens`` (samples x the batch's
    longest, summed), ``real_share`` (real / padded) and ``mean_batch`` (samples)."""
    real = sum(int(sum(b)) for b in batch_lengths)
    padded = sum(len(b) * int(max(b)) for b in batch_lengths if len(b))
    samples = sum(len(b) for b in batch_lengths)
    return {"batches": len(batch_lengths), "samples": samples, "real_tokens": real,
            "padded_tokens": padded, "real_share": real / padded if padded else 1.0,
            "mean_batch": samples / max(1, len(batch_lengths))}


class EpochSampler(Sampler[int]):
    """An order of the dataset that depends only on (seed, epoch).

    ``set_epoch`` picks the epoch (accelerate's prepared loader forwards it here), so a
    resumed run sees exactly the order an unbroken run would. With ``lengths`` (text
    lengths in tokens) and ``batch_size``, samples are grouped by length; the epoch is: a
    permutation of the dataset drawn from (seed, epoch) is cut into windows of ``group`` x
    ``batch_size`` samples; each window is sorted by length (longest first, stable) and
    cut into batches; the batches of all windows are shuffled by the same generator.
    Batches hold ``batch_size`` samples (``batch_tokens=0``; the one short batch, if any,
    comes last, so the loader's consecutive batches are exactly these) or, with
    ``batch_tokens > 0``, as many samples as fit that many padded tokens
    (:func:`token_batches`; every batch is shuffled, and the loader takes them through
    :class:`EpochBatchSampler`). The same seed, epoch, lengths and settings give the same
    batches in the same order.
    """

    def __init__(self, n: int, seed: int, lengths: Sequence[int] | None = None,
                 batch_size: int = 1, group: int = 50, batch_tokens: int = 0) -> None:
        if lengths is not None and len(lengths) != n:
            raise ValueError(f"lengths has {len(lengths)} entries for {n} samples")
        if batch_tokens < 0:
            raise ValueError(f"batch_tokens={batch_tokens}: use 0 (batch_size samples) or a "
                             "positive token budget")
        if batch_tokens and lengths is None:
            raise ValueError(f"batch_tokens={batch_tokens} needs the samples' lengths: "
                             "pass lengths (or use batch_tokens=0)")
        self.n = n
        self.seed = seed
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.batch_size = batch_size
        self.group = group
        self.batch_tokens = batch_tokens
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def batches(self, epoch: int | None = None) -> list[np.ndarray]:
        """The epoch's batches (arrays of dataset indices) in order; ``epoch`` defaults to
        the one :meth:`set_epoch` picked. Without ``lengths``: consecutive
        ``batch_size`` slices of the permutation."""
        rng = np.random.default_rng(epoch_seed(self.seed, self.epoch if epoch is None
                                               else epoch, stream=1))
        perm = rng.permutation(self.n)
        if self.lengths is None:
            return [perm[i:i + self.batch_size] for i in range(0, self.n, self.batch_size)]
        size = self.batch_size * self.group
        batches: list[np.ndarray] = []
        for start in range(0, self.n, size):
            chunk = perm[start:start + size]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            if self.batch_tokens:
                batches.extend(chunk[b] for b in
                               token_batches(self.lengths[chunk].tolist(), self.batch_tokens))
            else:
                batches.extend(chunk[i:i + self.batch_size]
                               for i in range(0, len(chunk), self.batch_size))
        if self.batch_tokens:
            return [batches[i] for i in rng.permutation(len(batches))]
        full = [b for b in batches if len(b) == self.batch_size]
        short = [b for b in batches if len(b) < self.batch_size]
        return [full[i] for i in rng.permutation(len(full))] + short

    def __iter__(self) -> Iterator[int]:
        order = self.batches()
        return iter(np.concatenate(order).tolist() if order else [])


class EpochBatchSampler(Sampler[list[int]]):
    """An :class:`EpochSampler`'s batches for ``DataLoader(batch_sampler=...)``, which a
    token budget needs (its batches differ in size). ``set_epoch`` is forwarded
    (accelerate's prepared loader calls it); ``len`` is the current epoch's number of
    batches and :meth:`total` that of several epochs (for the LR schedule)."""

    def __init__(self, sampler: EpochSampler) -> None:
        self.sampler = sampler
        self.batch_size = None
        """None: accelerate's batch sharding then takes each batch whole, whatever its
        size (with a number it would skip batches of another size)."""
        self.drop_last = False

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler.batches())

    def total(self, epochs: int) -> int:
        """Batches of epochs ``0..epochs-1`` together."""
        return sum(len(self.sampler.batches(e)) for e in range(epochs))

    def __iter__(self) -> Iterator[list[int]]:
        return iter([b.tolist() for b in self.sampler.batches()])


@dataclass
class PrivilegedTarget:
    """The frozen prompted network's outputs for one training sample."""

    pred: Tensor
    """() score or (C,) class logits."""
    fused: Tensor
    """(hidden,) fused representation."""
    attention: dict[str, Tensor] = field(default_factory=dict)
    """Per modality ``m``: ``text_to_<m>`` attention (H, L, K) over the real text tokens."""


class TrainCollator:
    """:class:`students.collate.Collator` plus what the loop needs.

    Adds ``weights`` (per-sample quality weights, computed on the CPU from the teacher
    signals), and with privileged targets ``priv_mask`` (B,), ``priv_pred``,
    ``priv_fused`` (B, h) and ``priv_attn`` (per modality (B, H, L, K)). With
    ``drop_descriptions`` the batch has no ``descriptions`` key at all: what the plain
    student must never see. ``item_weights`` (sample id -> weight) replaces the weight of
    those samples (the augmented ones, weighted once before training); they may also lack
    a privileged target.
    """

    def __init__(self, base: Collator, *, weighting: WeightingConfig | None = None,
                 privileged: dict[str, PrivilegedTarget] | None = None,
                 drop_descriptions: bool = True,
                 item_weights: dict[str, float] | None = None) -> None:
        self.base = base
        self.weighting = weighting if weighting is not None else WeightingConfig()
        """``train.weighting``: quality weights when enabled, else all ones."""
        self.privileged = privileged
        self.drop_descriptions = drop_descriptions
        self.item_weights = item_weights or {}

    def set_masking(self, masking: MaskSpec | None) -> None:
        self.base.set_masking(masking)

    def __call__(self, items: Sequence[StudentItem]) -> dict[str, Any]:
        batch = self.base(items)
        wc = self.weighting
        batch["weights"] = batch_weights(batch, "quality" if wc.enabled else "none",
                                         floor=wc.floor, agreement_scale=wc.agreement_scale,
                                         label_range=self.base.info.label_range)
        if self.item_weights:
            for b, sid in enumerate(batch["ids"]):
                if sid in self.item_weights:
                    batch["weights"][b] = self.item_weights[sid]
        if self.privileged is not None:
            batch.update(self._privileged(batch))
        if self.drop_descriptions:
            batch.pop("descriptions", None)
        return batch

    def _privileged(self, batch: dict[str, Any]) -> dict[str, Any]:
        ids: list[str] = batch["ids"]
        assert self.privileged is not None
        targets = [self.privileged.get(i) for i in ids]
        have = [t for t in targets if t is not None]
        if not have and (not self.privileged
                         or any(i not in self.item_weights for i in ids)):
            raise ValueError(f"no privileged target for any of {ids[:4]}...; the prompted "
                             "network's outputs were computed for other samples")
        ref = have[0] if have else next(iter(self.privileged.values()))
        mask = torch.tensor([0.0 if t is None else 1.0 for t in targets])
        pred = torch.stack([ref.pred * 0 if t is None else t.pred for t in targets])
        fused = torch.stack([ref.fused * 0 if t is None else t.fused for t in targets])
        out: dict[str, Any] = {"priv_mask": mask, "priv_pred": pred, "priv_fused": fused}
        if ref.attention:
            n_tok = batch["attention_mask"].sum(1).tolist()
            length = batch["attention_mask"].shape[1]
            attn: dict[str, Tensor] = {}
            for m, a in ref.attention.items():
                h, _, k = a.shape
                full = torch.zeros(len(ids), h, length, k)
                for b, t in enumerate(targets):
                    if t is None:
                        continue
                    tm = t.attention[m]
                    if tm.shape[1] != int(n_tok[b]):
                        raise ValueError(
                            f"sample {ids[b]!r}: the prompted network's attention covers "
                            f"{tm.shape[1]} text tokens but the student's tokenizer gives "
                            f"{int(n_tok[b])}; privileged attention KD needs the same text "
                            "encoder and student.max_text_len in both (or set "
                            "train.privileged.attn_weight=0)")
                    full[b, :, : tm.shape[1]] = tm
                attn[m] = full
            out["priv_attn"] = attn
        return out
