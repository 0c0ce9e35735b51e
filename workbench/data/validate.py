"""Checks every load runs: one pass over the samples, every problem collected, then one
error that lists them all with offending ids (first few and a count) and the file."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from workbench.config import SPLITS, DataConfig
from workbench.data.schema import FEATURE_MODALITIES, DataError, Sample

SHOW_IDS = 5


@dataclass
class Problem:
    code: str
    """Short kind: duplicate_id, empty_text, nonfinite, dim_mismatch, label_range, ..."""
    message: str
    ids: list[str] = field(default_factory=list)

    def render(self, source: str) -> str:
        shown = ", ".join(self.ids[:SHOW_IDS])
        more = f" (+{len(self.ids) - SHOW_IDS} more)" if len(self.ids) > SHOW_IDS else ""
        count = f" [{len(self.ids)} sample(s): {shown}{more}]" if self.ids else ""
        return f"{source}: {self.code}: {self.message}{count}"


def check_samples(samples: list[Sample], cfg: DataConfig) -> list[Problem]:
    """All problems with ``samples`` under ``cfg``; an empty list means valid."""
    problems: list[Problem] = []
    ids = Counter(s.id for s in samples)
    dups = [i for i, n in ids.items() if n > 1]
    if dups:
        problems.append(Problem("duplicate_id", "ids must be unique", dups))
    if not samples:
        problems.append(Problem("empty", "the dataset has no samples"))
        return problems

    bad_split = [s.id for s in samples if s.split not in SPLITS]
    if bad_split:
        seen = sorted({s.split for s in samples if s.split not in SPLITS})
        problems.append(Problem(
            "unknown_split",
            f"split values {seen} are not train/valid/test; map them with data.split_names",
            bad_split,
        ))

    if "text" in cfg.modalities:
        empty = [s.id for s in samples if not s.text.strip()]
        if empty:
            problems.append(Problem("empty_text", "transcript is empty", empty))

    lo, hi = cfg.label_range
    if cfg.task == "regression":
        out = [s.id for s in samples if s.label is not None and not (lo <= s.label <= hi)]
        if out:
            problems.append(Problem(
                "label_range", f"label outside data.label_range=[{lo}, {hi}]", out))
        nan = [s.id for s in samples if s.label is not None and not np.isfinite(s.label)]
        if nan:
            problems.append(Problem("label_nonfinite", "label is NaN or inf", nan))
        unlabelled = [s.id for s in samples if s.label is None]
        if unlabelled and cfg.labels == "required":
            problems.append(Problem(
                "label_missing", f"regression label is missing (data.label_column="
                f"{cfg.label_column!r}); for data a trained model is only applied to, set "
                "data.labels=optional (data validate --unlabeled, predict --new-data)",
                unlabelled))
    else:
        k = len(cfg.class_names)
        out = [s.id for s in samples if s.label_class is not None and not (0 <= s.label_class < k)]
        if out:
            problems.append(Problem(
                "label_class", f"class index outside 0..{k - 1} ({cfg.class_names}) in "
                f"data.class_column={cfg.class_column!r}", out))
        missing = [s.id for s in samples if s.label_class is None]
        if missing and cfg.labels == "required":
            where = (f"data.class_column={cfg.class_column!r} is empty for them" if cfg.class_column
                     else "data.class_column is not set: name the column holding the class "
                     "names or indices (label_column is the numeric score of a regression task)")
            problems.append(Problem(
                "label_missing", f"class label missing: {where}; for data a trained model is "
                "only applied to, set data.labels=optional (data validate --unlabeled, "
                "predict --new-data)", missing))

    for mod in FEATURE_MODALITIES:
        if mod not in cfg.modalities:
            continue
        nonfinite: list[str] = []
        dims: dict[tuple[int, int], list[str]] = defaultdict(list)
        bad_len: list[str] = []
        for s in samples:
            feat = s.feature(mod)
            if feat is None:
                continue
            dims[(feat.ndim, feat.shape[-1] if feat.ndim else 0)].append(s.id)
            if not np.isfinite(feat).all():
                nonfinite.append(s.id)
            n = s.length(mod)
            if feat.ndim == 2 and n is not None and not (0 <= n <= feat.shape[0]):
                bad_len.append(s.id)
        if nonfinite:
            problems.append(Problem(
                "nonfinite", f"{mod} features contain NaN or inf: set data.nonfinite=zero to "
                "replace them with 0 (as the MMSA toolkit does), or fix the extractor", nonfinite))
        if len(dims) > 1:
            (ndim, d), _ = max(dims.items(), key=lambda kv: len(kv[1]))
            odd = [i for key, v in dims.items() if key != (ndim, d) for i in v]
            desc = ", ".join(f"{len(v)} with ndim={k[0]} dim={k[1]}" for k, v in dims.items())
            problems.append(Problem(
                "dim_mismatch", f"{mod} feature shapes differ across samples ({desc})", odd))
        if bad_len:
            problems.append(Problem(
                "bad_length", f"{mod}_length is negative or longer than the sequence", bad_len))

    if cfg.check_media:
        missing = [s.id for s in samples for p in s.media.paths() if not Path(p).exists()]
        if missing:
            first = next(p for s in samples for p in s.media.paths() if not Path(p).exists())
            problems.append(Problem(
                "missing_media", f"media file(s) not found (first: {first}); fix the paths, "
                "set data.media_root, or data.check_media=false", sorted(set(missing))))
    return problems


def validate(samples: list[Sample], cfg: DataConfig, source: str) -> None:
    """Raise one :class:`DataError` listing every problem, or return silently."""
    problems = check_samples(samples, cfg)
    if problems:
        lines = "\n  ".join(p.render(source) for p in problems)
        raise DataError(f"{len(problems)} problem(s) in {source}:\n  {lines}")


def unlabelled_ids(samples: list[Sample], task: str) -> list[str]:
    """Ids of the samples without a gold label (a class index for classification)."""
    classification = task == "classification"
    return [s.id for s in samples
            if (s.label_class is None if classification else s.label is None)]


def require_labels(samples: list[Sample], task: str, *, dataset: str, split: str,
                   why: str) -> None:
    """The one "every sample is labelled" check: raise :class:`DataError` naming the
    dataset, the split, how many samples lack a label (with the first ids) and ``why``
    they are needed (e.g. "validation metrics need every label")."""
    missing = unlabelled_ids(samples, task)
    if missing:
        raise DataError(f"{len(missing)} of {len(samples)} {split!r} samples of {dataset!r} "
                        f"have no label (e.g. {missing[:3]}); {why}")
