"""Missing-modality masking (the LNLN protocol) on collated batches.

Training (:func:`lnln_train`): for each sample, with probability ``complete_fraction``
(0.5) every modality is kept whole; otherwise each modality gets its own missing rate
drawn from U(0, 1). Then, per modality, each unit is dropped with that rate: text
tokens become the tokenizer's ``[UNK]`` (``[CLS]``, ``[SEP]`` and padding are kept),
audio / visual frames of a sequence -- or the whole vector of an utterance-level
feature -- become zeros, and the batch's ``<m>_keep`` mask (which the model reads)
marks them. ``<m>_avail`` becomes 0 for a sample left with nothing of ``m``.

Evaluation: :func:`fixed_rate` uses one rate for every modality and sample;
:func:`drop_modalities` removes whole modalities (rate 1), e.g. audio entirely;
:func:`removal_patterns` lists the usual keep-subsets.

Determinism: the rates come from ``mask_rng(seed, epoch, id)`` and each modality's unit
mask from ``mask_rng(seed, epoch, id + "/" + modality)`` (``workbench.data.masks``), so a
sample's mask depends on nothing but (seed, epoch, sample id) and its own length: it is
the same in any batch, with any number of data-loader workers or processes, and changes
from epoch to epoch. Apply it in the collator or on a collated batch in the training
loop; the result is identical.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch

from workbench.config import MODALITIES
from workbench.data.masks import draw_rates, keep_mask, mask_rng


@dataclass(frozen=True)
class MaskSpec:
    """How to mask a batch.

    ``kind``: ``lnln`` (random per-sample rates, training) or ``fixed`` (``rate`` for all
    modalities in ``modalities``). ``drop``: modalities removed entirely (rate 1) on top.
    """

    kind: Literal["lnln", "fixed"] = "fixed"
    seed: int = 0
    epoch: int = 0
    rate: float = 0.0
    complete_fraction: float = 0.5
    modalities: tuple[str, ...] = MODALITIES
    drop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("lnln", "fixed"):
            raise ValueError(f"MaskSpec.kind={self.kind!r}: use lnln or fixed")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"missing rate={self.rate}: use a fraction in [0, 1]")
        if not 0.0 <= self.complete_fraction <= 1.0:
            raise ValueError(f"complete_fraction={self.complete_fraction}: use [0, 1]")
        for m in (*self.modalities, *self.drop):
            if m not in MODALITIES:
                raise ValueError(f"modality {m!r} in MaskSpec: use names from {list(MODALITIES)}")

    def for_epoch(self, epoch: int) -> MaskSpec:
        """The same spec at another epoch (LNLN masks change every epoch)."""
        return replace(self, epoch=epoch)


def lnln_train(seed: int, epoch: int, complete_fraction: float = 0.5,
               modalities: tuple[str, ...] = MODALITIES) -> MaskSpec:
    """LNLN training masks: half the samples complete, the rest U(0, 1) rates."""
    return MaskSpec(kind="lnln", seed=seed, epoch=epoch, complete_fraction=complete_fraction,
                    modalities=tuple(modalities))


def fixed_rate(rate: float, seed: int, modalities: tuple[str, ...] = MODALITIES) -> MaskSpec:
    """Evaluation masks: one missing rate for every listed modality, for a given seed."""
    return MaskSpec(kind="fixed", seed=seed, rate=rate, modalities=tuple(modalities))


def drop_modalities(drop: tuple[str, ...] | list[str], seed: int = 0) -> MaskSpec:
    """Evaluation masks that remove whole modalities (e.g. ``("audio",)``)."""
    return MaskSpec(kind="fixed", seed=seed, rate=0.0, drop=tuple(drop))


def removal_patterns(modalities: tuple[str, ...] | list[str]) -> dict[str, tuple[str, ...]]:
    """Every non-empty subset of ``modalities`` to keep, named by its initials
    (``t``, ``a``, ``v``, ``t+a``, ...), mapped to the modalities to drop."""
    mods = list(modalities)
    out: dict[str, tuple[str, ...]] = {}
    for k in range(1, len(mods) + 1):
        for keep in itertools.combinations(mods, k):
            name = "+".join(m[0] for m in keep)
            out[name] = tuple(m for m in mods if m not in keep)
    return out


def sample_rates(spec: MaskSpec, sample_id: str) -> dict[str, float]:
    """Missing rate per modality (text, audio, vision) for one sample under ``spec``."""
    rates = {m: 0.0 for m in MODALITIES}
    if spec.kind == "lnln":
        rates.update(draw_rates(mask_rng(spec.seed, spec.epoch, sample_id),
                                list(spec.modalities), spec.complete_fraction))
    else:
        rates.update({m: spec.rate for m in spec.modalities})
    rates.update({m: 1.0 for m in spec.drop})
    return rates


def unit_keep(spec: MaskSpec, sample_id: str, modality: str, n: int, rate: float) -> np.ndarray:
    """Which of the ``n`` units (tokens / frames / the vector) of ``modality`` survive."""
    rng = mask_rng(spec.seed, spec.epoch, f"{sample_id}/{modality}")
    return keep_mask(rng, n, rate)


def mask_batch(batch: dict[str, Any], spec: MaskSpec | None, unk_id: int | None
               ) -> dict[str, Any]:
    """Apply ``spec`` to a collated batch; returns a new dict (input tensors untouched).

    Needs the collator's keys: ``ids``, ``input_ids``, ``attention_mask``,
    ``special_tokens_mask``, and per feature modality ``m``: ``m``, ``m_keep``,
    ``m_avail`` (and ``m_lengths`` for sequences). Adds ``missing_rates``: per modality,
    the (B,) rates used.
    """
    if spec is None:
        return batch
    out = dict(batch)
    ids: list[str] = list(batch["ids"])
    rates = [sample_rates(spec, i) for i in ids]
    out["missing_rates"] = {m: torch.tensor([r[m] for r in rates]) for m in MODALITIES}
    if any(r["text"] > 0 for r in rates):
        if unk_id is None:
            raise ValueError("text masking needs the tokenizer's [UNK] id and this tokenizer "
                             "has none; leave text out of the masked modalities")
        input_ids = batch["input_ids"].clone()
        content = batch["attention_mask"].bool() & ~batch["special_tokens_mask"].bool()
        text_avail = batch["text_avail"].clone()
        for b, sid in enumerate(ids):
            if rates[b]["text"] <= 0:
                continue
            pos = torch.nonzero(content[b]).flatten()
            kept = torch.from_numpy(unit_keep(spec, sid, "text", len(pos), rates[b]["text"]))
            input_ids[b, pos[~kept]] = unk_id
            if len(pos) and not kept.any():
                text_avail[b] = 0.0
        out["input_ids"] = input_ids
        out["text_avail"] = text_avail
    for m in ("audio", "vision"):
        if m not in batch or not any(r[m] > 0 for r in rates):
            continue
        x = batch[m].clone()
        keep = batch[f"{m}_keep"].clone()
        avail = batch[f"{m}_avail"].clone()
        sequence = x.dim() == 3
        for b, sid in enumerate(ids):
            if rates[b][m] <= 0 or avail[b] <= 0:
                continue
            if sequence:
                n = int(batch[f"{m}_lengths"][b])
                kept = torch.from_numpy(unit_keep(spec, sid, m, n, rates[b][m]))
                keep[b, :n] &= kept
                x[b, :n][~kept] = 0.0
            else:
                kept = torch.from_numpy(unit_keep(spec, sid, m, 1, rates[b][m]))
                if not kept[0]:
                    keep[b] = False
                    x[b] = 0.0
            if not keep[b].any():
                avail[b] = 0.0
        out[m], out[f"{m}_keep"], out[f"{m}_avail"] = x, keep, avail
    return out
