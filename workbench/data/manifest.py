"""Reader for a manifest (CSV or JSONL: id, text, label, split, media paths) plus an
optional ``.npz`` of per-sample feature arrays keyed by id.

The ``.npz`` holds an id array (``data.features_id_key``) and, per modality, an array of
utterance vectors ``(N, d)`` or padded sequences ``(N, T, d)`` with an optional
``<key>_lengths`` array. A modality that covers only some samples has its own id array
``<key>_ids``. Rows of the manifest without a feature row simply lack that
modality.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import io
import json
import logging
import string
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from workbench.config import DataConfig
from workbench.data.arrays import check_npz
from workbench.data.dialogue import (
    CONTEXT_KEY,
    CONTEXT_ONLY_KEY,
    SPEAKER_KEY,
    context_only,
    list_context,
)
from workbench.data.schema import DataError, Media, Sample

log = logging.getLogger(__name__)


def read_text(path: Path, encoding: str) -> str:
    """The text of ``path`` decoded with ``encoding`` (``utf-8`` also takes a leading BOM);
    a byte that does not decode is a :class:`DataError` naming its line and column and
    ``data.encoding``."""
    raw = path.read_bytes()
    codec = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
    try:
        return raw.decode(codec)
    except UnicodeDecodeError as e:
        lineno = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(
            f"{path}:{lineno}: byte {raw[e.start:e.start + 1]!r} at column {column} is not "
            f"valid {encoding} (data.encoding={encoding}); save the file "
            "as UTF-8, or set data.encoding to the encoding it was written in, e.g. "
            "data.encoding=latin-1 or data.encoding=cp1252"
        ) from None


def _rows(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) pairs; line numbers as an editor shows them."""
    text = read_text(path, encoding)
    if path.suffix.lower() == ".jsonl":
        for lineno, line in enumerate(io.StringIO(text, newline=None), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: each line must be a JSON object")
            yield lineno, row
    else:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        for row in reader:
            yield reader.line_num, row


def _id_builder(cfg: DataConfig, path: Path):
    if cfg.id_format:
        fields = [f for _, f, _, _ in string.Formatter().parse(cfg.id_format) if f]

        def build(row: dict[str, Any], lineno: int) -> str:
            missing = [f for f in fields if f not in row]
            if missing:
                raise DataError(
                    f"{path}:{lineno}: data.id_format={cfg.id_format!r} needs column(s) "
                    f"{missing}; the file has {sorted(row)}"
                )
            return cfg.id_format.format(**{k: str(v) for k, v in row.items()})

        return build

    def build_col(row: dict[str, Any], lineno: int) -> str:
        if cfg.id_column not in row:
            raise DataError(
                f"{path}:{lineno}: no id column {cfg.id_column!r} (columns: {sorted(row)}); "
                "set data.id_column or data.id_format"
            )
        return str(row[cfg.id_column])

    return build_col


def _optional_float(value: Any, path: Path, lineno: int, column: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataError(
            f"{path}:{lineno}: {column}={value!r} is not a number: data.label_column is the "
            "numeric score of a regression task; for class names or indices set "
            f"data.class_column={column} with data.task=classification and data.class_names"
        ) from None


def _class_index(value: Any, cfg: DataConfig, path: Path, lineno: int) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str) and value in cfg.class_names:
        return cfg.class_names.index(value)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DataError(
            f"{path}:{lineno}: {cfg.class_column}={value!r} is neither a class index nor one "
            f"of data.class_names={cfg.class_names}"
        ) from None


def load_features(cfg: DataConfig) -> dict[str, tuple[dict[str, int], np.ndarray, np.ndarray | None]]:
    """Per modality: (id -> row, array, lengths or None) from ``cfg.features``."""
    if not cfg.features:
        return {}
    fpath = Path(cfg.features)
    if not fpath.is_file():
        raise DataError(f"feature file {fpath} does not exist: check data.features")
    try:
        return _read_npz(cfg, fpath)
    except DataError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
        raise DataError(
            f"{fpath}: not a readable .npz feature file ({type(e).__name__}: {e}); it may be "
            "truncated or damaged: write it again with numpy.savez (plain arrays, no objects) "
            "or point data.features at the right file"
        ) from None


def _read_npz(cfg: DataConfig, fpath: Path) -> dict[str, tuple[dict[str, int], np.ndarray, np.ndarray | None]]:
    out = {}
    check_npz(fpath, "write it again with numpy.savez (plain arrays, no objects) or point "
                     "data.features at the right file")
    with np.load(fpath, allow_pickle=False) as npz:
        ids = [str(x) for x in npz[cfg.features_id_key]] if cfg.features_id_key in npz.files else None
        for mod in ("audio", "vision"):
            if mod not in cfg.modalities or mod not in cfg.feature_keys:
                continue
            key = cfg.feature_keys[mod]
            if key not in npz.files:
                raise DataError(
                    f"{fpath}: no array {key!r} for {mod} (arrays: {npz.files}); "
                    f"fix data.feature_keys.{mod} or drop {mod} from data.modalities"
                )
            # A modality may cover a subset of samples: then its ids are in `<key>_ids`.
            mod_ids = [str(x) for x in npz[f"{key}_ids"]] if f"{key}_ids" in npz.files else ids
            if mod_ids is None:
                raise DataError(
                    f"{fpath}: no id array {cfg.features_id_key!r} or {key + '_ids'!r} "
                    f"(arrays: {npz.files}); set data.features_id_key"
                )
            index = {sid: i for i, sid in enumerate(mod_ids)}
            if len(index) != len(mod_ids):
                dup = sorted({s for s in mod_ids if mod_ids.count(s) > 1})
                raise DataError(f"{fpath}: duplicate ids for {key!r}: {dup[:10]}")
            arr = npz[key]
            if arr.shape[0] != len(mod_ids):
                raise DataError(f"{fpath}: {key!r} has {arr.shape[0]} rows for {len(mod_ids)} ids")
            if arr.ndim not in (2, 3):
                raise DataError(f"{fpath}: {key!r} must be (N, d) or (N, T, d), got {arr.shape}")
            lengths = npz[f"{key}_lengths"] if f"{key}_lengths" in npz.files else None
            out[mod] = (index, arr.astype(np.float32, copy=False), lengths)
    return out


def not_unicode(value: Any, where: str = "") -> tuple[str, str] | None:
    """(where, character) of the first lone UTF-16 surrogate in ``value`` (a string, or a
    dict / list of them, keys included), which no UTF-8 encoder accepts; None when there
    is none. ``where`` is the column, with ``[i]`` / ``.key`` for nested values."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            return where, value[e.start]
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            key = f"{where}.{k}" if where else str(k)
            found = not_unicode(k, key) or not_unicode(v, key)
            if found:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = not_unicode(v, f"{where}[{i}]")
            if found:
                return found
    return None


def _require_unicode(row: dict[str, Any], sid: str, path: Path, lineno: int) -> None:
    """Refuse a row holding a lone surrogate (a JSON escape such as ``"\\ud800"`` that
    ``json.loads`` takes but no UTF-8 writer does), naming its line, sample and column."""
    found = not_unicode(row)
    if found:
        column, char = found
        raise DataError(
            f"{path}:{lineno}: sample {ascii(sid)}: column {ascii(column)} holds "
            f"{ascii(char)}, half of a UTF-16 surrogate pair with no other half, which is not "
            "text and cannot be stored; fix the encoding of that row: write it again from "
            "correctly decoded text (a surrogate escape comes from text cut inside an emoji "
            "or decoded with the wrong codec), or remove the broken escape")


def _require_columns(row: dict[str, Any], cfg: DataConfig, path: Path, lineno: int) -> None:
    """Refuse a row without its text or split column, saying how to give each."""
    if cfg.text_column not in row:
        raise DataError(f"{path}:{lineno}: no column {cfg.text_column!r} (columns: "
                        f"{sorted(row)}); name the text column with data.text_column")
    if cfg.split_column not in row:
        raise DataError(
            f"{path}:{lineno}: no column {cfg.split_column!r} (columns: {sorted(row)}); give "
            "each row a split (train/valid/test) in that column, name the column with "
            "data.split_column, give one file per split with data.split_files, or, for new "
            "data a trained model is applied to, set data.default_split=test")


def read_manifest(cfg: DataConfig, split: str | None = None) -> list[Sample]:
    """Read a CSV/JSONL manifest (and its optional feature file) into samples.

    With ``data.split_files`` (one file per split, named relative to ``data.path``, a
    folder) each file is read with its split given (``split``), which ``id_format`` may
    use as ``{split}``."""
    if cfg.split_files and split is None:
        root = Path(cfg.path)
        out: list[Sample] = []
        for sp, name in cfg.split_files.items():
            out += read_manifest(dataclasses.replace(cfg, path=str(root / name)), split=sp)
        return out
    path = Path(cfg.path)
    if not path.is_file():
        raise DataError(f"manifest {path} does not exist: check data.path")
    media_root = Path(cfg.media_root) if cfg.media_root else path.parent
    make_id = _id_builder(cfg, path)
    feats = load_features(cfg)
    samples: list[Sample] = []
    unused_context = False
    for lineno, row in _rows(path, cfg.encoding):
        if split is not None:  # one file per split
            row.setdefault(cfg.split_column, split)
            row.setdefault("split", split)
        elif cfg.default_split:
            row.setdefault(cfg.split_column, cfg.default_split)
        _require_columns(row, cfg, path, lineno)
        is_context = bool(cfg.context_only_column) and context_only(
            row.get(cfg.context_only_column), cfg, f"{path}:{lineno}")
        try:
            sid = make_id(row, lineno)
        except DataError:
            if not is_context:  # a context-only row needs no id: it is never a sample
                raise
            sid = f"context-only:{path.name}:{lineno}"
        _require_unicode(row, sid, path, lineno)
        raw_split = str(row[cfg.split_column]).strip()
        row_split = cfg.split_names.get(raw_split, raw_split)
        media = Media(
            frames=[
                str(media_root / p.strip())
                for p in str(row.get(cfg.frames_column) or "").split(";")
                if p.strip()
            ]
            if cfg.frames_column
            else [],
            audio_file=str(media_root / row[cfg.audio_file_column])
            if cfg.audio_file_column and row.get(cfg.audio_file_column)
            else None,
            video_file=str(media_root / row[cfg.video_file_column])
            if cfg.video_file_column and row.get(cfg.video_file_column)
            else None,
        )
        used = {cfg.id_column, cfg.text_column, cfg.label_column, cfg.split_column,
                cfg.class_column, cfg.frames_column, cfg.audio_file_column, cfg.video_file_column,
                cfg.context_column, cfg.context_speakers_column, cfg.context_only_column,
                CONTEXT_KEY}  # meta["context"] is the dialogue context, set below or not at all
        s = Sample(
            id=sid,
            text=str(row[cfg.text_column] or "").strip(),
            split=row_split,
            label=_optional_float(row.get(cfg.label_column), path, lineno, cfg.label_column)
            if cfg.task == "regression" and not is_context else None,
            label_class=_class_index(row.get(cfg.class_column), cfg, path, lineno)
            if cfg.class_column and not is_context
            else None,
            media=media,
            meta={k: v for k, v in row.items() if k not in used and v not in (None, "")},
        )
        s.meta["source_line"] = lineno
        if is_context:
            s.meta[CONTEXT_ONLY_KEY] = True
        if cfg.context_column:
            s.meta[CONTEXT_KEY] = list_context(row, cfg, f"{path}:{lineno} (sample {sid!r})")
            if cfg.speaker_column:
                s.meta[SPEAKER_KEY] = str(row.get(cfg.speaker_column) or "")
        if (cfg.context_column != CONTEXT_KEY and not cfg.dialogue_column
                and row.get(CONTEXT_KEY) not in (None, "", []) and not unused_context):
            unused_context = True
            log.warning("%s: column %r is not shown to templates (data.context_column=%r); "
                        "set data.context_column=%s to show its lines as the dialogue context",
                        path, CONTEXT_KEY, cfg.context_column, CONTEXT_KEY)
        for mod, (index, arr, lengths) in feats.items():
            j = index.get(sid)
            if j is None:
                continue
            setattr(s, mod, arr[j])
            if arr.ndim == 3:
                setattr(s, f"{mod}_length", int(lengths[j]) if lengths is not None else arr.shape[1])
        samples.append(s)
    if feats:
        known = {s.id for s in samples}
        for mod, (index, _, _) in feats.items():
            extra = len(set(index) - known)
            if extra:
                log.warning("%s: %d %s feature rows have no manifest row", cfg.features, extra, mod)
    n_context = sum(1 for s in samples if s.meta.get(CONTEXT_ONLY_KEY))
    log.info("read %d samples%s from %s", len(samples) - n_context,
             f" (+ {n_context} context-only rows)" if n_context else "", path)
    return samples
