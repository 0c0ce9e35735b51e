"""The internal dataset format: Hugging Face ``datasets`` on disk (Arrow, memory-mapped).

:class:`MSADataset` holds one Arrow table per split plus a small ``DataInfo`` (what the
dataset is: task, metric set, label range, modalities, feature dims, fingerprint).
``workbench data import`` writes one with :meth:`MSADataset.save`; later stages open it
with :meth:`MSADataset.load` and read rows without copying the table into memory.

Features are stored flattened (``audio`` as ``list<float32>`` plus ``audio_shape``), so
utterance vectors ``(d,)`` and padded sequences ``(T, d)`` share one column type.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from workbench.config import SPLITS, DataConfig
from workbench.data.schema import FEATURE_MODALITIES, DataError, Media, Sample

log = logging.getLogger(__name__)

INFO_FILE = "workbench_dataset.json"
FORMAT_VERSION = 1

ARROW_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("text", pa.string()),
    ("split", pa.string()),
    ("label", pa.float64()),
    ("label_class", pa.int32()),
    ("audio", pa.list_(pa.float32())),
    ("audio_shape", pa.list_(pa.int32())),
    ("audio_length", pa.int32()),
    ("vision", pa.list_(pa.float32())),
    ("vision_shape", pa.list_(pa.int32())),
    ("vision_length", pa.int32()),
    ("frames", pa.list_(pa.string())),
    ("audio_file", pa.string()),
    ("video_file", pa.string()),
    ("meta", pa.string()),
])


@dataclass
class DataInfo:
    """What a dataset is; stored next to the Arrow files and in every checkpoint."""

    name: str
    task: str
    metric_set: str
    label_range: tuple[float, float]
    class_names: list[str]
    modalities: list[str]
    feature_dims: dict[str, int] = field(default_factory=dict)
    """Last dimension of each feature modality present."""
    feature_kind: dict[str, str] = field(default_factory=dict)
    """``vector`` (utterance level) or ``sequence`` per feature modality."""
    fingerprint: str = ""
    source: str = ""
    format_version: int = FORMAT_VERSION
    whole_fingerprint: str = ""
    """For a seeded subset (``data.subset``): the fingerprint of the whole dataset it was
    cut from, so a teacher cache made on the whole still serves it; "" for the whole."""

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["label_range"] = list(self.label_range)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DataInfo:
        """The info :meth:`to_json` wrote. A ``label_range`` of null (what an export records
        for a classification set, which has classes, not a score range) reads as the
        :class:`DataConfig` default; a classification model's predictions do not use it."""
        d = dict(d)
        rng = d.get("label_range")
        d["label_range"] = tuple(rng) if rng is not None else DataConfig().label_range
        return cls(**d)


# ------------------------------------------------------------------ fingerprints

_MEDIA_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """Content hash of a media file, memoised on (path, size, mtime)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    cached = _MEDIA_HASHES.get(key)
    if cached is None:
        h = hashlib.sha256()
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        cached = _MEDIA_HASHES[key] = h.hexdigest()
    return cached


def media_hashes(sample: Sample) -> list[str]:
    return [file_sha256(p) if Path(p).exists() else f"missing:{p}" for p in sample.media.paths()]


def _update_sample_hash(h: Any, s: Sample) -> None:
    h.update(json.dumps([s.id, s.text, s.split, s.label, s.label_class], default=str).encode())
    for mod in FEATURE_MODALITIES:
        feat = s.feature(mod)
        if feat is None:
            h.update(b"\x00none")
            continue
        a = np.ascontiguousarray(feat, dtype="<f4")
        h.update(json.dumps([mod, list(a.shape), s.length(mod)]).encode())
        h.update(a.tobytes())
    h.update(json.dumps(media_hashes(s)).encode())


def fingerprint(samples: list[Sample]) -> str:
    """Content hash of a dataset: ids, texts, labels, splits, features, media bytes.

    Independent of sample order, so the same data read through another reader hashes
    the same.
    """
    h = hashlib.sha256(f"workbench-data-v{FORMAT_VERSION}".encode())
    for s in sorted(samples, key=lambda s: s.id):
        _update_sample_hash(h, s)
    return h.hexdigest()[:16]


# ------------------------------------------------------------------ conversions


def _feature_column(samples: list[Sample], mod: str) -> tuple[pa.Array, list, list]:
    """The flattened feature column of ``mod`` built from offsets (no per-row conversion)."""
    feats = [s.feature(mod) for s in samples]
    flat = [np.asarray(f, dtype=np.float32).reshape(-1) for f in feats if f is not None]
    sizes = np.array([0 if f is None else f.size for f in feats], dtype=np.int64)
    offsets = np.zeros(len(feats) + 1, dtype=np.int32)
    np.cumsum(sizes, out=offsets[1:])
    values = pa.array(np.concatenate(flat) if flat else np.zeros(0, np.float32), type=pa.float32())
    mask = pa.array([f is None for f in feats], type=pa.bool_())
    column = pa.ListArray.from_arrays(pa.array(offsets), values, mask=mask)
    shapes = [None if f is None else list(f.shape) for f in feats]
    return column, shapes, [s.length(mod) for s in samples]


def samples_to_table(samples: list[Sample]) -> pa.Table:
    cols: dict[str, Any] = {
        "id": [s.id for s in samples],
        "text": [s.text for s in samples],
        "split": [s.split for s in samples],
        "label": [s.label for s in samples],
        "label_class": [s.label_class for s in samples],
        "frames": [s.media.frames for s in samples],
        "audio_file": [s.media.audio_file for s in samples],
        "video_file": [s.media.video_file for s in samples],
        "meta": [json.dumps(s.meta, default=str) if s.meta else None for s in samples],
    }
    for mod in FEATURE_MODALITIES:
        cols[mod], cols[f"{mod}_shape"], cols[f"{mod}_length"] = _feature_column(samples, mod)
    return pa.table({name: cols[name] for name in ARROW_SCHEMA.names}, schema=ARROW_SCHEMA)


_SCALARS = ("id", "text", "split", "label", "label_class", "frames", "audio_file", "video_file",
            "meta", "audio_shape", "audio_length", "vision_shape", "vision_length")


def _batch_samples(table: pa.Table) -> list[Sample]:
    """Samples of a (small) table slice; feature arrays are zero-copy views of its buffers."""
    rows = table.select(list(_SCALARS)).to_pylist()
    feats = {}
    for mod in FEATURE_MODALITIES:
        col = table.column(mod).combine_chunks()
        offsets = col.offsets.to_numpy()
        feats[mod] = (col.is_valid().to_numpy(zero_copy_only=False),
                      col.values.to_numpy(zero_copy_only=False), offsets)
    out = []
    for i, r in enumerate(rows):
        s = Sample(
            id=r["id"], text=r["text"], split=r["split"], label=r["label"], label_class=r["label_class"],
            media=Media(frames=r["frames"] or [], audio_file=r["audio_file"], video_file=r["video_file"]),
            meta=json.loads(r["meta"]) if r["meta"] else {},
        )
        for mod, (valid, values, offsets) in feats.items():
            if valid[i]:
                setattr(s, mod, values[offsets[i]:offsets[i + 1]].reshape(r[f"{mod}_shape"]))
                setattr(s, f"{mod}_length", r[f"{mod}_length"])
        out.append(s)
    return out


def infer_info(samples: list[Sample], cfg: DataConfig, source: str) -> DataInfo:
    dims: dict[str, int] = {}
    kind: dict[str, str] = {}
    for mod in FEATURE_MODALITIES:
        feat = next((s.feature(mod) for s in samples if s.feature(mod) is not None), None)
        if feat is not None:
            dims[mod] = int(feat.shape[-1])
            kind[mod] = "vector" if feat.ndim == 1 else "sequence"
    present = [m for m in cfg.modalities if m == "text" or m in dims
               or any(s.has(m) for s in samples)]
    return DataInfo(
        name=cfg.name or Path(source).stem,
        task=cfg.task,
        metric_set=cfg.metric_set,
        label_range=tuple(cfg.label_range),  # type: ignore[arg-type]
        class_names=list(cfg.class_names),
        modalities=present,
        feature_dims=dims,
        feature_kind=kind,
        fingerprint=fingerprint(samples),
        source=str(source),
    )


def _not_utf8(samples: list[Sample], source: str) -> DataError:
    """The error naming the first sample with a string Arrow cannot encode as UTF-8 (a lone
    surrogate), its row in ``source`` where the reader recorded one, and the field."""
    from workbench.data.manifest import not_unicode

    for s in samples:
        fields = {"id": s.id, "text": s.text, "split": s.split, "frames": s.media.frames,
                  "audio_file": s.media.audio_file, "video_file": s.media.video_file}
        found = not_unicode(fields)
        if found:
            line = s.meta.get("source_line")
            where = f"{source}:{line}" if line else source
            return DataError(
                f"{where}: sample {ascii(s.id)}: {found[0]} holds {ascii(found[1])}, half of "
                "a UTF-16 surrogate pair with no other half, which is not text and cannot be "
                "stored; fix the encoding of that row in the source: write it again from "
                "correctly decoded text, or remove the broken character")
    return DataError(f"{source}: a string of the dataset is not valid UTF-8 text; fix the "
                     "encoding of the source")


# ------------------------------------------------------------------ the dataset


class MSADataset:
    """Samples of one dataset, by split, backed by Arrow tables."""

    def __init__(self, tables: dict[str, pa.Table], info: DataInfo) -> None:
        self.tables = tables
        self.info = info

    # construction -----------------------------------------------------------
    @classmethod
    def from_samples(cls, samples: list[Sample], info: DataInfo) -> MSADataset:
        by_split: dict[str, list[Sample]] = {}
        for s in samples:
            by_split.setdefault(s.split, []).append(s)
        try:
            tables = {sp: samples_to_table(by_split[sp]) for sp in SPLITS if sp in by_split}
        except UnicodeEncodeError:
            raise _not_utf8(samples, info.source) from None
        return cls(tables, info)

    def save(self, out_dir: str | Path) -> Path:
        """Write as a Hugging Face ``DatasetDict`` on disk plus ``workbench_dataset.json``."""
        import datasets.utils as hf_tqdm
        from datasets import Dataset, DatasetDict

        out = Path(out_dir)
        dd = DatasetDict({sp: Dataset(t) for sp, t in self.tables.items()})
        was_disabled = hf_tqdm.are_progress_bars_disabled()
        hf_tqdm.disable_progress_bars()  # library code: no progress bars of its own
        try:
            dd.save_to_disk(str(out))
        finally:
            if not was_disabled:
                hf_tqdm.enable_progress_bars()
        (out / INFO_FILE).write_text(json.dumps(self.info.to_json(), indent=2) + "\n")
        return out

    @classmethod
    def load(cls, path: str | Path) -> MSADataset:
        """Open a directory written by :meth:`save` (memory-mapped)."""
        from datasets import load_from_disk

        p = Path(path)
        info_path = p / INFO_FILE
        if not info_path.is_file():
            raise DataError(
                f"{p} is not a workbench dataset (no {INFO_FILE}); create one with "
                "`workbench data import`, or point data.path at the source file"
            )
        info = DataInfo.from_json(json.loads(info_path.read_text()))
        if info.format_version != FORMAT_VERSION:
            raise DataError(
                f"{p}: dataset format v{info.format_version}, this workbench reads "
                f"v{FORMAT_VERSION}; re-run `workbench data import`"
            )
        dd = load_from_disk(str(p))
        tables = {sp: dd[sp].data.table for sp in dd}
        return cls(tables, info)

    # access -----------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        return self.info.fingerprint

    @property
    def splits(self) -> list[str]:
        return list(self.tables)

    def num_rows(self, split: str | None = None) -> int:
        if split is None:
            return sum(t.num_rows for t in self.tables.values())
        return self.table(split).num_rows

    def table(self, split: str) -> pa.Table:
        if split not in self.tables:
            raise DataError(
                f"split {split!r} is not in dataset {self.info.name!r} "
                f"(it has {self.splits}); choose one of those"
            )
        return self.tables[split]

    def sample(self, split: str, i: int) -> Sample:
        return _batch_samples(self.table(split).slice(i, 1))[0]

    def iter_samples(self, split: str | None = None, batch: int = 1024) -> Iterator[Sample]:
        for sp in [split] if split else self.splits:
            t = self.table(sp)
            for start in range(0, t.num_rows, batch):
                yield from _batch_samples(t.slice(start, batch))

    def samples(self, split: str | None = None) -> list[Sample]:
        return list(self.iter_samples(split))

    def column(self, split: str, name: str) -> list[Any]:
        return self.table(split).column(name).to_pylist()

    def __repr__(self) -> str:
        sizes = ", ".join(f"{sp}={t.num_rows}" for sp, t in self.tables.items())
        return f"MSADataset({self.info.name!r}, {sizes}, fingerprint={self.fingerprint})"
