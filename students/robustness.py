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
:func:`removal_patterns` lists the usual keep-subsets. CyIN's random protocols remove
whole modalities per sample, every sample keeping at least one:
:func:`dataset_missing` (dataset-level missing rate: one modality kept for sure, each
other kept with the probability that makes the expected missing fraction of all
(sample, modality) slots ``rate``; :func:`dataset_level_keep`) and
:func:`instance_missing` (instance-level missing probability: a sample is incomplete
with probability ``prob`` and then keeps one of the non-empty proper subsets, uniformly;
:func:`instance_level_keep`).

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

    ``kind``: ``lnln`` (random per-sample rates, training), ``fixed`` (``rate`` for all
    modalities in ``modalities``), ``dataset`` / ``instance`` (CyIN: whole modalities of
    ``modalities`` removed per sample, ``rate`` the dataset-level missing rate / the
    instance-level missing probability). ``drop``: modalities removed entirely (rate 1) on
    top.
    """

    kind: Literal["lnln", "fixed", "dataset", "instance"] = "fixed"
    seed: int = 0
    epoch: int = 0
    rate: float = 0.0
    complete_fraction: float = 0.5
    modalities: tuple[str, ...] = MODALITIES
    drop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("lnln", "fixed", "dataset", "instance"):
            raise ValueError(f"MaskSpec.kind={self.kind!r}: use lnln, fixed, dataset or instance")
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


def dataset_missing(rate: float, seed: int, modalities: tuple[str, ...] = MODALITIES) -> MaskSpec:
    """CyIN's dataset-level protocol: whole modalities removed per sample, a fraction
    ``rate`` of all (sample, modality) slots in expectation, each sample keeping one."""
    return MaskSpec(kind="dataset", seed=seed, rate=rate, modalities=tuple(modalities))


def instance_missing(prob: float, seed: int, modalities: tuple[str, ...] = MODALITIES
                     ) -> MaskSpec:
    """CyIN's instance-level protocol: each sample incomplete with probability ``prob``."""
    return MaskSpec(kind="instance", seed=seed, rate=prob, modalities=tuple(modalities))


def dataset_level_keep(rng: np.random.Generator, modalities: list[str], rate: float
                       ) -> list[str]:
    """Modalities one sample keeps at dataset-level missing rate ``rate`` (M modalities):
    one drawn uniformly is kept; each other with ``q = (M (1 - rate) - 1) / (M - 1)``
    (clipped to [0, 1]), so the expected kept fraction is ``1 - rate`` down to ``1 / M``."""
    m = len(modalities)
    sure = int(rng.integers(m))
    q = 1.0 if m == 1 else min(1.0, max(0.0, (m * (1.0 - rate) - 1.0) / (m - 1)))
    draws = rng.random(m)
    return [x for k, x in enumerate(modalities) if k == sure or draws[k] < q]


def instance_level_keep(rng: np.random.Generator, modalities: list[str], prob: float
                        ) -> list[str]:
    """Modalities one sample keeps at instance-level missing probability ``prob``: all of
    them with probability ``1 - prob``, else one of the non-empty proper subsets, uniformly."""
    if rng.random() >= prob or len(modalities) < 2:
        return list(modalities)
    subsets = [list(c) for k in range(1, len(modalities))
               for c in itertools.combinations(modalities, k)]
    return subsets[int(rng.integers(len(subsets)))]


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
    elif spec.kind in ("dataset", "instance"):
        rng = mask_rng(spec.seed, spec.epoch, f"{sample_id}/{spec.kind}")
        pick = dataset_level_keep if spec.kind == "dataset" else instance_level_keep
        kept = pick(rng, list(spec.modalities), spec.rate)
        rates.update({m: 0.0 if m in kept else 1.0 for m in spec.modalities})
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
