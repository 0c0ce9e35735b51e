"""Datasets: one Sample schema, three readers, validation, fingerprints, masks.

``load_dataset(cfg)`` is what every stage calls: it reads ``cfg.path`` with the right
reader, validates every sample, and returns an :class:`MSADataset`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from workbench.config import DataConfig
from workbench.data.dialogue import add_dialogue_context, drop_context_only
from workbench.data.hf import read_hf
from workbench.data.manifest import read_manifest
from workbench.data.masks import availability, availability_counts
from workbench.data.mmsa import read_mmsa
from workbench.data.schema import FEATURE_MODALITIES, DataError, Media, Sample
from workbench.data.store import INFO_FILE, DataInfo, MSADataset, fingerprint, infer_info
from workbench.data.validate import check_samples, require_labels, unlabelled_ids, validate

__all__ = [
    "DataError", "DataInfo", "MSADataset", "Media", "Sample", "availability",
    "availability_counts", "check_samples", "detect_format", "fingerprint", "imported_info", "load_dataset",
    "read_samples", "require_labels", "unlabelled_ids", "validate",
]

log = logging.getLogger(__name__)

READERS = {"mmsa": read_mmsa, "manifest": read_manifest, "hf": read_hf}


def detect_format(cfg: DataConfig) -> str:
    """The reader for ``cfg.path``: explicit ``cfg.format`` or from the file name."""
    if cfg.format != "auto":
        return cfg.format
    if cfg.split_files:
        return "manifest"
    p = Path(cfg.path)
    if p.is_dir():
        return "hf"
    suffix = p.suffix.lower()
    if suffix in (".pkl", ".pickle"):
        return "mmsa"
    if suffix in (".csv", ".jsonl"):
        return "manifest"
    if not p.exists():
        raise DataError(f"data.path={cfg.path!r} does not exist")
    raise DataError(
        f"cannot tell the format of {cfg.path!r} from its name: set data.format to mmsa "
        "(.pkl), manifest (.csv/.jsonl) or hf (a save_to_disk directory)"
    )


def _fix_nonfinite(samples: list[Sample], cfg: DataConfig) -> None:
    replaced = 0
    for s in samples:
        for mod in FEATURE_MODALITIES:
            feat = s.feature(mod)
            if feat is not None and not np.isfinite(feat).all():
                bad = ~np.isfinite(feat)
                replaced += int(bad.sum())
                feat = feat.copy()
                feat[bad] = 0.0
                setattr(s, mod, feat)
    if replaced:
        log.warning("%s: replaced %d non-finite feature values with 0 (data.nonfinite=zero)",
                    cfg.path, replaced)


def read_samples(cfg: DataConfig) -> list[Sample]:
    """Read and validate every sample at ``cfg.path`` (any source format), with its
    dialogue context (:mod:`workbench.data.dialogue`); context-only rows are dropped
    before validation, so they are never samples."""
    if not cfg.path:
        raise DataError("data.path is empty: point it at a .pkl, .csv/.jsonl or dataset dir")
    fmt = detect_format(cfg)
    if fmt == "hf" and (Path(cfg.path) / INFO_FILE).is_file():
        return MSADataset.load(cfg.path).samples()
    for name in ("context_column", "context_speakers_column", "context_only_column"):
        if getattr(cfg, name) and fmt != "manifest":
            raise DataError(f"data.{name}={getattr(cfg, name)!r} is read from a manifest "
                            f"(.csv/.jsonl), but {cfg.path} is read as {fmt}: unset it, or "
                            "give the context in a manifest")
    samples = READERS[fmt](cfg)
    if cfg.dialogue_column:
        add_dialogue_context(samples, cfg)
    if cfg.context_only_column:  # context for the rows above, never samples
        samples = drop_context_only(samples)
    if cfg.nonfinite == "zero":
        _fix_nonfinite(samples, cfg)
    validate(samples, cfg, cfg.path)
    return samples


def _check_matches(ds: MSADataset, cfg: DataConfig) -> None:
    info = ds.info
    for name, want, have in (
        ("task", cfg.task, info.task),
        ("metric_set", cfg.metric_set, info.metric_set),
        ("label_range", tuple(cfg.label_range), tuple(info.label_range)),
    ):
        if want != have:
            raise DataError(
                f"{cfg.path}: the dataset was imported with {name}={have!r} but the config "
                f"says data.{name}={want!r}; set data.{name} to match or re-import"
            )


def imported_info(path: str) -> DataInfo | None:
    """The info of a directory written by ``workbench data import``, else None."""
    info = Path(path) / INFO_FILE
    if not info.is_file():
        return None
    return DataInfo.from_json(json.loads(info.read_text()))


def load_dataset(cfg: DataConfig) -> MSADataset:
    """The dataset ``cfg`` names, validated, with only ``cfg.modalities`` in its info."""
    if cfg.path and (Path(cfg.path) / INFO_FILE).is_file():
        ds = MSADataset.load(cfg.path)
        _check_matches(ds, cfg)
    else:
        samples = read_samples(cfg)
        ds = MSADataset.from_samples(samples, infer_info(samples, cfg, cfg.path))
    if cfg.subset:
        ds = take_subset(ds, cfg.subset, cfg.subset_seed)
    ds.info.modalities = [m for m in ds.info.modalities if m in cfg.modalities]
    return ds


def subset_ids(ids: list[str], size: float, seed: int) -> set[str]:
    """The ids ``data.subset`` keeps of one split: ``size`` a fraction (< 1, rounded, at
    least 1) or a count, ranked by sha256(seed, id) -- independent of row order, and
    nested (a larger size keeps every smaller one's ids)."""
    n = max(1, round(size * len(ids))) if size < 1 else min(int(size), len(ids))
    ranked = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}\x00{i}".encode()).hexdigest())
    return set(ranked[:n])


def take_subset(ds: MSADataset, subset: dict[str, float], seed: int) -> MSADataset:
    """``ds`` with each split named in ``subset`` cut to its seeded random subset
    (:func:`subset_ids`); the fingerprint is recomputed over what is kept (the whole's is
    kept as ``whole_fingerprint``)."""
    kept: list[Sample] = []
    for split in ds.splits:
        samples = ds.samples(split)
        if split in subset:
            keep = subset_ids([s.id for s in samples], subset[split], seed)
            samples = [s for s in samples if s.id in keep]
            log.info("data.subset: kept %d of %d %s samples (seed %d)", len(samples),
                     ds.num_rows(split), split, seed)
        kept += samples
    info = dataclasses.replace(ds.info, fingerprint=fingerprint(kept),
                               whole_fingerprint=ds.info.whole_fingerprint or ds.fingerprint)
    return MSADataset.from_samples(kept, info)
