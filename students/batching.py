"""Batching for training: the item dataset, the epoch-seeded sampler, and the collator.

:class:`EpochSampler` gives an order that depends only on (seed, epoch) (optionally
grouped by text length), so a resumed run sees exactly the batches an unbroken one would.
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


class EpochSampler(Sampler[int]):
    """An order of the dataset that depends only on (seed, epoch).

    ``set_epoch`` picks the epoch (accelerate's prepared loader forwards it here), so a
    resumed run sees exactly the order an unbroken run would. With ``lengths`` (text
    lengths) and ``batch_size``, samples are grouped by length: a random permutation is
    cut into groups of ``group`` batches, each group sorted by length and cut into
    batches, and the batches shuffled; the one short batch (if any) comes last, so the
    loader's consecutive batches are exactly these.
    """

    def __init__(self, n: int, seed: int, lengths: Sequence[int] | None = None,
                 batch_size: int = 1, group: int = 50) -> None:
        if lengths is not None and len(lengths) != n:
            raise ValueError(f"lengths has {len(lengths)} entries for {n} samples")
        self.n = n
        self.seed = seed
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.batch_size = batch_size
        self.group = group
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng(epoch_seed(self.seed, self.epoch, stream=1))
        perm = rng.permutation(self.n)
        if self.lengths is None:
            return iter(perm.tolist())
        size = self.batch_size * self.group
        batches: list[np.ndarray] = []
        for start in range(0, self.n, size):
            chunk = perm[start:start + size]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            batches.extend(chunk[i:i + self.batch_size]
                           for i in range(0, len(chunk), self.batch_size))
        full = [b for b in batches if len(b) == self.batch_size]
        short = [b for b in batches if len(b) < self.batch_size]
        order = [full[i] for i in rng.permutation(len(full))] + short
        return iter(np.concatenate(order).tolist() if order else [])


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
