"""Teacher-augmented training samples with decoupled quality weights (after QASA).

``train.augment.data`` names a dataset written by ``workbench data augment``
(:mod:`workbench.data.augment`): the teacher's rewrites of the train transcripts, each
with its ``source_id``, the source's label and features. :func:`load_augmented` reads
it and checks it was made from this run's train split. The rewrites' soft labels come
from a second teacher pass on that dataset (same ``signals.cache_dir``).

Each rewrite gets one fixed weight (:func:`augment_weights`) from three decoupled
factors, combined with :func:`students.weighting.combine_factors` and the run's
``train.weighting.floor``:

* **confidence** of the teacher in the rewrite's sentiment: ``1 - H(p)/log(n_bins)``
  times ``1 - off_label_mass`` (a rewrite the teacher gave no soft label gets 0: it
  is not trusted, but keeps the floor);
* **agreement** of the teacher's expected score on the rewrite with the source's gold
  label: ``clip(1 - |E_p - gold| / scale, 0, 1)``;
* **consistency** with the source: the cosine similarity of the rewrite and the
  source transcript under the student's text encoder *before training* (mean-pooled
  token states), clipped to [0, 1].

``w = floor + (1 - floor) * confidence * agreement * consistency``: down-weighted,
never dropped. :func:`weigh_augmented` computes them for a run, before its first
training step, and logs and saves them.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.logging import get_logger
from torch import Tensor

from students.collate import StudentItem
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

log = get_logger(__name__)


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
        raise ConfigError(f"train.augment.data={str(path)!r} is invalid: no {DATA_FILE} there; "
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
    where = f"train.augment.data={str(path)!r}"
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


def weigh_augmented(model: Any, items: list[StudentItem], train_items: Sequence[StudentItem],
                    *, bins: Sequence[float] | None, label_range: tuple[float, float],
                    agreement_scale: float, floor: float, batch_size: int, csv_path: Path,
                    name: str, accelerator: Any) -> dict[str, float]:
    """Quality weights of the augmented ``items`` (:func:`augment_weights`) against their
    sources among ``train_items``, with the text encoder of ``model`` as it is now; their
    consistency set on the items; logged (``name``: the stage), histogrammed and saved as
    ``csv_path`` (main process). ``agreement_scale`` 0: half the label range. Returns
    sample id -> weight."""
    assert items
    sources = {it.sample.id: it.sample for it in train_items}
    src = [sources[str(it.sample.meta["source_id"])] for it in items]
    n_bins = next((len(it.teacher.probs) for it in items
                   if it.teacher is not None and it.teacher.probs is not None),
                  len(bins or []) or 2)
    nan = float("nan")
    probs = torch.full((len(items), n_bins), nan)
    off = torch.full((len(items),), nan)
    expected = torch.full((len(items),), nan)
    for r, it in enumerate(items):
        t = it.teacher
        if t is not None and t.probs is not None:
            probs[r] = torch.as_tensor(np.asarray(t.probs, dtype=np.float32))
            off[r] = nan if t.off_mass is None else float(t.off_mass)
            expected[r] = nan if t.expected is None else float(t.expected)
    gold = torch.tensor([nan if s.label is None else float(s.label) for s in src])
    t0 = time.perf_counter()
    sim = rewrite_similarity(model, [it.sample.text for it in items], [s.text for s in src],
                             batch_size=batch_size)
    lo, hi = label_range
    aw = augment_weights(probs=probs, off_mass=off, expected=expected, gold=gold,
                         similarity=sim, agreement_scale=agreement_scale
                         or (hi - lo) / 2.0, floor=floor)
    for it, c in zip(items, aw.consistency.tolist(), strict=True):
        it.consistency = float(c)
    weights = aw.weight.numpy()
    summary = weight_summary(weights, floor)
    log.info("%s: %d augmented samples weighted in %.1fs (%d without a teacher soft label): "
             "%s\naugment weights histogram:\n%s", name, len(items),
             time.perf_counter() - t0, int((~aw.has_teacher).sum()),
             " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in summary.items()),
             histogram_text(weights, lo=0.0, hi=1.0))
    accelerator.log({f"{name}/augment_weight_{k}": v for k, v in summary.items()}, step=0)
    for tracker in getattr(accelerator, "trackers", []):
        writer = getattr(tracker, "writer", None)
        if writer is not None and hasattr(writer, "add_histogram"):
            writer.add_histogram(f"{name}/augment_weights", weights, 0)
    if accelerator.is_main_process:
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        with csv_path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "source_id", "weight", "confidence", "off_label", "agreement",
                        "consistency", "similarity", "has_teacher"])
            for r, it in enumerate(items):
                w.writerow([it.sample.id, src[r].id, f"{weights[r]:.6f}",
                            f"{float(aw.confidence[r]):.6f}", f"{float(aw.off_label[r]):.6f}",
                            f"{float(aw.agreement[r]):.6f}", f"{float(aw.consistency[r]):.6f}",
                            f"{float(sim[r]):.6f}", int(aw.has_teacher[r])])
    return {it.sample.id: float(wt) for it, wt in zip(items, weights, strict=True)}
