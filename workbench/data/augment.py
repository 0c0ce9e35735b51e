"""Teacher augmentation (after QASA): a dataset of the teacher's rewrites of the train
transcripts, ready for a second teacher pass and for training.

A caching job with ``--template paraphrase --variants k --splits train`` stores ``k``
rewrites per train sample under sample ids ``ID#v`` (``ID`` alone when ``k`` is 1).
:func:`build_augmented` turns every ok rewrite of a train sample into a new sample:
id ``ID#v``, text the rewrite, the source's gold label (score / class), split
``train``, the source's audio / visual features and media paths, and ``source_id``.
Rewrites whose request failed (an error row) or never finished, and empty ones, are
skipped and counted by reason. :func:`write_augmented` writes them as a manifest dataset
(``manifest.csv`` + ``features.npz``, what :mod:`workbench.data.manifest` reads) with a
data config ``data.yaml`` beside it, so the rewrites can be scored by the teacher::

    workbench cache run --teacher T.yaml --data OUT/data.yaml --cache CACHE \\
        --template sentiment_polarity

and trained on with ``train.augment_data=OUT`` (their soft labels are read from the
same ``signals.cache_dir``, joined by this dataset's own fingerprint).
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from workbench.cache.join import find_job
from workbench.cache.store import CacheError, CacheStore
from workbench.config import DataConfig
from workbench.data.schema import FEATURE_MODALITIES, DataError, Media, Sample
from workbench.data.store import MSADataset

SOURCE_COLUMN = "source_id"
CLASS_COLUMN = "class"
DATA_FILE = "data.yaml"
MANIFEST_FILE = "manifest.csv"
FEATURES_FILE = "features.npz"
REPORT_FILE = "augment_report.json"


@dataclass
class AugmentReport:
    """What :func:`build_augmented` found in the cache."""

    job: str
    template: str
    teacher: str
    sources: int
    """Train samples of the dataset."""
    requested: int
    """Rewrites the job holds for those train samples."""
    written: int = 0
    skipped: Counter = field(default_factory=Counter)
    """Reason -> count: an error kind (e.g. ``server_error``), ``pending`` (no answer
    yet), ``empty`` (no text left after cleaning)."""
    not_train: int = 0
    """Rewrites of valid / test samples in the job, left out (augmentation is train only)."""
    identical: int = 0
    """Written rewrites identical to their source (kept; they add nothing new)."""
    sources_covered: int = 0
    """Train samples with at least one written rewrite."""

    def to_json(self) -> dict[str, Any]:
        return {"job": self.job, "template": self.template, "teacher": self.teacher,
                "sources": self.sources, "requested": self.requested,
                "written": self.written, "skipped": dict(self.skipped),
                "skipped_total": sum(self.skipped.values()), "not_train": self.not_train,
                "identical": self.identical, "sources_covered": self.sources_covered}


def _clean(text: str) -> str:
    """Whitespace collapsed; one pair of surrounding quotes removed."""
    t = " ".join((text or "").split())
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "\"'":
        t = t[1:-1].strip()
    return t


def split_variant_id(sid: str, train_ids: set[str]) -> tuple[str, int] | None:
    """``(source id, variant)`` of a job's sample id: ``ID`` itself (one variant) or
    ``ID#v``; None when it names no train sample."""
    if sid in train_ids:
        return sid, 0
    base, sep, v = sid.rpartition("#")
    if sep and v.isdigit() and base in train_ids:
        return base, int(v)
    return None


def build_augmented(ds: MSADataset, cache_dir: str | Path, template: str = "paraphrase",
                    teacher: str = "") -> tuple[list[Sample], AugmentReport]:
    """The augmented train samples from ``template``'s job on ``ds`` in ``cache_dir``.

    Raises :class:`CacheError` when the cache has no such job for this data (it lists
    what it has) or the job is not a text-output job.
    """
    train = {s.id: s for s in ds.iter_samples("train")}
    train_ids = set(train)
    if not train:
        raise DataError(f"dataset {ds.info.name!r} has no train samples to augment")
    all_ids = {s.id for s in ds.iter_samples()}
    with CacheStore(cache_dir, create=False) as store:
        spec = find_job(store, template=template, data_fingerprint=ds.fingerprint,
                        teacher=teacher, whole_fingerprint=ds.info.whole_fingerprint)
        if spec.get("output") not in ("text", "description"):
            raise CacheError(f"template {template!r} (job {spec['job']}) produced "
                             f"{spec.get('output')!r} outputs; augmentation needs rewrites "
                             "(a text template such as paraphrase)")
        keys = store.sample_keys(spec["job"])
        current = store.current(spec["job"])
    report = AugmentReport(job=spec["job"], template=template, teacher=spec["teacher"],
                           sources=len(train), requested=0)
    out: list[Sample] = []
    covered: set[str] = set()
    for sid in sorted(keys):
        parsed = split_variant_id(sid, train_ids)
        if parsed is None:
            if sid in all_ids or split_variant_id(sid, all_ids) is not None:
                report.not_train += 1
            continue
        src_id, variant = parsed
        report.requested += 1
        row = current.get(keys[sid][1])
        if row is None:
            report.skipped["pending"] += 1
            continue
        if not row.ok:
            report.skipped[row.status] += 1
            continue
        text = _clean(row.description or row.raw_text)
        if not text:
            report.skipped["empty"] += 1
            continue
        src = train[src_id]
        if text == src.text:
            report.identical += 1
        new_id = f"{src_id}#{variant}"
        out.append(Sample(
            id=new_id, text=text, split="train", label=src.label, label_class=src.label_class,
            audio=src.audio, audio_length=src.audio_length, vision=src.vision,
            vision_length=src.vision_length,
            media=Media(frames=list(src.media.frames), audio_file=src.media.audio_file,
                        video_file=src.media.video_file),
            meta={SOURCE_COLUMN: src_id}))
        covered.add(src_id)
    report.written = len(out)
    report.sources_covered = len(covered)
    return out, report


def _feature_arrays(samples: list[Sample]) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {"id": np.asarray([s.id for s in samples])}
    for m in FEATURE_MODALITIES:
        have = [s for s in samples if s.feature(m) is not None]
        if not have:
            continue
        feats = [np.asarray(s.feature(m), dtype=np.float32) for s in have]
        arrays[f"{m}_ids"] = np.asarray([s.id for s in have])
        if feats[0].ndim == 1:
            arrays[m] = np.stack(feats)
        else:
            t = max(f.shape[0] for f in feats)
            pad = np.zeros((len(feats), t, feats[0].shape[1]), dtype=np.float32)
            for i, f in enumerate(feats):
                pad[i, : f.shape[0]] = f
            arrays[m] = pad
            arrays[f"{m}_lengths"] = np.asarray(
                [f.shape[0] if s.length(m) is None else int(s.length(m))
                 for s, f in zip(have, feats, strict=True)], dtype=np.int64)
    return arrays


def write_augmented(out_dir: str | Path, samples: list[Sample], source: DataConfig,
                    report: AugmentReport, name: str = "") -> Path:
    """Write ``manifest.csv``, ``features.npz``, ``data.yaml`` and ``augment_report.json``
    into ``out_dir``; returns the data config's path."""
    if not samples:
        raise DataError(f"no rewrite to write: {json.dumps(report.to_json())}; finish or "
                        "retry the paraphrase job (`workbench cache status` / `cache retry`)")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    classification = source.task == "classification"
    media_cols = {"frames": any(s.media.frames for s in samples),
                  "audio_file": any(s.media.audio_file for s in samples),
                  "video_file": any(s.media.video_file for s in samples)}
    cols = ["id", "text", "label", "split", SOURCE_COLUMN]
    if classification:
        cols.append(CLASS_COLUMN)
    cols += [c for c, used in media_cols.items() if used]
    with (out / MANIFEST_FILE).open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for s in samples:
            row: dict[str, Any] = {"id": s.id, "text": s.text,
                                   "label": "" if s.label is None else repr(float(s.label)),
                                   "split": "train", SOURCE_COLUMN: s.meta[SOURCE_COLUMN]}
            if classification:
                row[CLASS_COLUMN] = "" if s.label_class is None else int(s.label_class)
            if media_cols["frames"]:
                row["frames"] = ";".join(s.media.frames)
            if media_cols["audio_file"]:
                row["audio_file"] = s.media.audio_file or ""
            if media_cols["video_file"]:
                row["video_file"] = s.media.video_file or ""
            w.writerow(row)
    arrays = _feature_arrays(samples)
    np.savez(out / FEATURES_FILE, **arrays)
    feats = [m for m in FEATURE_MODALITIES if m in arrays]
    cfg: dict[str, Any] = {
        "name": name or f"{source.name or 'data'}_augmented",
        "path": str(out / MANIFEST_FILE),
        "format": "manifest",
        "modalities": list(source.modalities),
        "task": source.task, "metric_set": source.metric_set,
        "label_range": list(source.label_range),
        "class_names": list(source.class_names),
        "class_column": CLASS_COLUMN if classification else "",
        "features": str(out / FEATURES_FILE) if feats else "",
        "feature_keys": {m: m for m in feats},
        "frames_column": "frames" if media_cols["frames"] else "",
        "audio_file_column": "audio_file" if media_cols["audio_file"] else "",
        "video_file_column": "video_file" if media_cols["video_file"] else "",
        "check_media": source.check_media,
    }
    # media paths are absolute already (readers resolve them), so no media_root
    (out / REPORT_FILE).write_text(json.dumps(report.to_json(), indent=2) + "\n")
    path = out / DATA_FILE
    path.write_text(
        f"# Teacher rewrites of {source.name or source.path} (`workbench data augment`, "
        f"job {report.job}).\n# Score them with a soft-label template: workbench cache run "
        f"--data {path} --template sentiment_polarity ...\n"
        + yaml.safe_dump(cfg, sort_keys=False))
    return path
