"""Describe a dataset: split sizes, label distribution, modality availability, and text
lengths in the student text encoder's tokens.

``workbench data stats`` prints :func:`dataset_stats` and :func:`token_stats` (as a table
or ``--json``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from workbench.data.lengths import length_stats, sample_text, token_counter, truncation_warning
from workbench.data.masks import availability_counts
from workbench.data.store import MSADataset
from workbench.models import ModelNotFound


def label_stats(values: list[float]) -> dict[str, Any]:
    """Mean, std, range and sign counts of score labels (empty for no labels)."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {}
    return {
        "mean": round(float(a.mean()), 4), "std": round(float(a.std()), 4),
        "min": float(a.min()), "max": float(a.max()),
        "positive": int((a > 0).sum()), "negative": int((a < 0).sum()), "zero": int((a == 0).sum()),
    }


def dataset_stats(ds: MSADataset) -> dict[str, Any]:
    """Split sizes, label distribution and modality availability of ``ds`` (JSON-able).

    Per split: ``n``; for regression the label statistics (:func:`label_stats`) and a
    histogram of the labels rounded to the integers of ``label_range``; for
    classification the count per class; ``available``: samples having each modality.
    """
    out: dict[str, Any] = {
        "name": ds.info.name, "fingerprint": ds.fingerprint, "task": ds.info.task,
        "metric_set": ds.info.metric_set, "modalities": ds.info.modalities,
        "feature_dims": ds.info.feature_dims, "feature_kind": ds.info.feature_kind, "splits": {},
    }
    for split in ds.splits:
        samples = ds.samples(split)
        entry: dict[str, Any] = {"n": len(samples)}
        if ds.info.task == "regression":
            labels = [s.label for s in samples if s.label is not None]
            entry["label"] = label_stats(labels)
            lo, hi = ds.info.label_range
            if labels:
                r = np.clip(np.round(np.asarray(labels)), lo, hi).astype(int)
                entry["label_hist"] = {int(k): int((r == k).sum())
                                       for k in range(int(lo), int(hi) + 1)}
        else:
            names = ds.info.class_names
            entry["classes"] = {names[k]: sum(1 for s in samples if s.label_class == k)
                                for k in range(len(names))}
        entry["available"] = availability_counts(samples, ds.info.modalities)
        out["splits"][split] = entry
    return out


def token_stats(ds: MSADataset, encoder: str = "minilm", limit: int | None = None) -> dict[str, Any]:
    """Text lengths per split in ``encoder``'s tokens (special tokens included; see
    :mod:`workbench.data.lengths`): ``p50``, ``p95``, ``max``; with ``limit`` (a
    ``student.max_text_len``) also ``over`` and ``share`` per split and ``warning``, what the
    limit cuts and what to set (``None`` when nothing). When the tokenizer is not here:
    ``note`` says why, and there are no figures."""
    out: dict[str, Any] = {"encoder": encoder, "limit": limit}
    try:
        count, max_positions = token_counter(encoder)
    except ModelNotFound as e:
        out["note"] = f"no token lengths: {e}"
        return out
    lengths = {split: count([sample_text(s) for s in ds.samples(split)]) for split in ds.splits}
    out["max_positions"] = max_positions
    out["splits"] = {split: length_stats(ls, limit) for split, ls in lengths.items()}
    if limit is not None:
        out["warning"] = truncation_warning(lengths, limit, max_positions)
    return out
