"""Teacher-augmented training samples with decoupled quality weights (after QASA).

``train.augment_data`` names a dataset written by ``workbench data augment``
(:mod:`workbench.data.augment`): the teacher's rewrites of the train transcripts, each
with its ``source_id``, the source's label and features. :func:`load_augmented` reads
it and checks it was made from this run's train split. The rewrites' soft labels come
from a second teacher pass on that dataset (same ``signals.cache_dir``).

Each rewrite gets one fixed weight (:func:`augment_weights`) from three decoupled
factors, combined with :func:`students.weighting.combine_factors` and the run's
``train.weight_floor``:

* **confidence** of the teacher in the rewrite's sentiment: ``1 - H(p)/log(n_bins)``
  times ``1 - off_label_mass`` (a rewrite the teacher gave no soft label gets 0: it
  is not trusted, but keeps the floor);
* **agreement** of the teacher's expected score on the rewrite with the source's gold
  label: ``clip(1 - |E_p - gold| / scale, 0, 1)``;
* **consistency** with the source: the cosine similarity of the rewrite and the
  source transcript under the student's text encoder *before training* (mean-pooled
  token states), clipped to [0, 1].

``w = floor + (1 - floor) * confidence * agreement * consistency``: down-weighted,
never dropped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from students.weighting import (
    agreement_factor,
    combine_factors,
    confidence_factor,
    consistency_factor,
    off_label_factor,
)
from workbench.config import ConfigError, DataConfig, load_config
from workbench.data import MSADataset, Sample, load_dataset
from workbench.data.augment import DATA_FILE, SOURCE_COLUMN


@dataclass
class AugmentWeights:
    """Per rewrite: the weight and its factors (all (N,) tensors)."""

    weight: Tensor
    confidence: Tensor
    off_label: Tensor
    agreement: Tensor
    consistency: Tensor
    has_teacher: Tensor


def augment_weights(*, probs: Tensor, off_mass: Tensor, expected: Tensor, gold: Tensor,
                    similarity: Tensor, agreement_scale: float, floor: float) -> AugmentWeights:
    """Quality weights (N,) of augmented samples (module docstring).

    ``probs`` (N, n_bins) with NaN rows where the teacher gave no soft label;
    ``off_mass``, ``expected`` NaN there too; ``gold`` the source labels (NaN: no gold,
    agreement 1); ``similarity`` cosine in [-1, 1] (clipped to [0, 1]).
    """
    has_teacher = ~torch.isnan(probs.float()).any(1)
    conf = torch.where(has_teacher, confidence_factor(probs), torch.zeros(probs.shape[0]))
    off = torch.where(has_teacher, off_label_factor(off_mass), torch.zeros(probs.shape[0]))
    agree = agreement_factor(torch.where(has_teacher, expected.float(),
                                         torch.full_like(expected.float(), math.nan)),
                             gold, agreement_scale)
    cons = consistency_factor(similarity.float().clamp(0.0, 1.0))
    w = combine_factors([conf, off, agree, cons], floor)
    return AugmentWeights(weight=w, confidence=conf, off_label=off, agreement=agree,
                          consistency=cons, has_teacher=has_teacher)


@torch.no_grad()
def text_embeddings(model: Any, texts: Sequence[str], batch_size: int = 64) -> Tensor:
    """Mean-pooled token states (N, d) of ``model.text`` (a
    :class:`students.encoders.TextEncoder`), in eval mode, on ``model.device``."""
    enc = model.text
    was = enc.training
    enc.eval()
    out = []
    try:
        for i in range(0, len(texts), batch_size):
            tok = enc.tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True,
                                max_length=model.cfg.max_text_len, return_tensors="pt")
            tok = {k: v.to(model.device) for k, v in tok.items()}
            out.append(enc(tok["input_ids"], tok["attention_mask"],
                           tok.get("token_type_ids")).pooled.float().cpu())
    finally:
        enc.train(was)
    return torch.cat(out) if out else torch.zeros(0, enc.out_dim)


def rewrite_similarity(model: Any, rewrites: Sequence[str], sources: Sequence[str],
                       batch_size: int = 64) -> Tensor:
    """Cosine similarity (N,) of each rewrite with its source under ``model``'s text
    encoder (each distinct source embedded once)."""
    uniq = sorted(set(sources))
    src = text_embeddings(model, uniq, batch_size)
    pos = {t: i for i, t in enumerate(uniq)}
    a = text_embeddings(model, rewrites, batch_size)
    b = src[[pos[t] for t in sources]] if len(sources) else src[:0]
    return torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-8)


def histogram_text(values: Sequence[float] | np.ndarray, lo: float = 0.0, hi: float = 1.0,
                   bins: int = 10, width: int = 40) -> str:
    """A text histogram: one line per bin ``[a, b)`` (the last closed) with a bar and
    the count."""
    v = np.asarray(values, dtype=float)
    counts, edges = np.histogram(v, bins=bins, range=(lo, hi))
    top = max(1, int(counts.max()) if counts.size else 1)
    lines = []
    for i, c in enumerate(counts):
        close = "]" if i == bins - 1 else ")"
        bar = "#" * int(round(width * c / top))
        lines.append(f"[{edges[i]:.2f}, {edges[i + 1]:.2f}{close} {bar:<{width}} {int(c)}")
    return "\n".join(lines)


def weight_summary(weights: Sequence[float] | np.ndarray, floor: float) -> dict[str, float]:
    """n, mean, std, min, quartiles, max, and the fraction at the floor."""
    w = np.asarray(weights, dtype=float)
    if w.size == 0:
        return {"n": 0}
    q = np.quantile(w, [0.25, 0.5, 0.75])
    return {"n": int(w.size), "mean": float(w.mean()), "std": float(w.std()),
            "min": float(w.min()), "q25": float(q[0]), "median": float(q[1]),
            "q75": float(q[2]), "max": float(w.max()),
            "at_floor": float(np.mean(w <= floor + 1e-6))}


def augment_config(path: str | Path) -> DataConfig:
    """The augmented dataset's data config: ``path`` is its directory (holding
    ``data.yaml``) or the YAML itself."""
    p = Path(path)
    if p.is_dir():
        p = p / DATA_FILE
    if not p.is_file():
        raise ConfigError(f"train.augment_data={str(path)!r} is invalid: no {DATA_FILE} there; "
                          "write one with `workbench data augment --out DIR` and pass DIR")
    return load_config(DataConfig, p)


def load_augmented(path: str | Path, main: MSADataset) -> tuple[DataConfig, MSADataset,
                                                                  list[Sample]]:
    """(config, dataset, samples) of the augmented data, checked against ``main``: every
    sample is a train sample with a ``source_id`` among ``main``'s train ids, no id
    clashes with ``main``, and the features have ``main``'s shapes."""
    cfg = augment_config(path)
    ds = load_dataset(cfg)
    samples = ds.samples()
    where = f"train.augment_data={str(path)!r}"
    if not samples:
        raise ConfigError(f"{where} is invalid: the augmented dataset is empty")
    bad = [s.id for s in samples if s.split != "train"]
    if bad:
        raise ConfigError(f"{where} is invalid: augmented samples must be train samples; "
                          f"{len(bad)} are not (e.g. {bad[:3]})")
    train_ids = {s.id for s in main.iter_samples("train")}
    no_src = [s.id for s in samples if str(s.meta.get(SOURCE_COLUMN, "")) not in train_ids]
    if no_src:
        raise ConfigError(
            f"{where} is invalid: {len(no_src)} of {len(samples)} augmented samples have no "
            f"{SOURCE_COLUMN} among this run's train samples (e.g. {no_src[:3]}); it was made "
            "from other data -- rerun `workbench data augment` on this run's data")
    clash = sorted({s.id for s in samples} & {s.id for s in main.iter_samples()})
    if clash:
        raise ConfigError(f"{where} is invalid: ids {clash[:3]} are also samples of the "
                          "main dataset")
    info, minfo = ds.info, main.info
    for m in minfo.feature_dims:
        if m in info.feature_dims and (info.feature_dims[m] != minfo.feature_dims[m]
                                       or info.feature_kind[m] != minfo.feature_kind[m]):
            raise ConfigError(
                f"{where} is invalid: its {m} features are {info.feature_kind[m]} of size "
                f"{info.feature_dims[m]}, the main data's {minfo.feature_kind[m]} of size "
                f"{minfo.feature_dims[m]}")
    if info.task != minfo.task:
        raise ConfigError(f"{where} is invalid: task {info.task!r}, the main data's is "
                          f"{minfo.task!r}")
    return cfg, ds, samples
