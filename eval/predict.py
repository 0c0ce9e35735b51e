"""Per-sample predictions of a student checkpoint, written as CSV or JSONL.

``workbench predict CHECKPOINT --data DATA --out FILE.csv|FILE.jsonl`` runs
:func:`predict_checkpoint`. The checkpoint and the data go through the same checks as
``workbench eval`` (:func:`students.checkpoint.check_files`, :func:`eval.data.load_data`,
:func:`eval.data.check_data_matches`): the data must be the dataset the checkpoint was
trained on (same fingerprint, task, metric set and features) unless ``new_data`` is set,
which keeps every check but the fingerprint (new utterances with the same features); a
manifest of new data needs no split column (its rows are ``test``, :func:`applied_data`).
Unlike ``eval``, any split may be predicted (nothing is reported as a score) and labels
are optional.

Columns, one row per sample, in the data's order (splits in the data's order for
``all``):

* ``id``, ``split``;
* regression: ``score`` (the model's prediction) and its classes as the metrics count
  them (:mod:`workbench.metrics`): metric set ``mosi``: ``polarity`` (``negative`` /
  ``neutral`` / ``positive``: the score clipped to [-1, 1] and rounded, as ``acc3``
  does) and ``class7`` (clipped to [-3, 3] and rounded: -3..3, as ``acc7``); metric set
  ``sims``: ``polarity`` from the ``acc3`` bins (-0.1, 0.1] and ``class5`` (-2..2) from
  the ``acc5`` bins;
* classification: ``class`` (predicted class name), ``class_id``, and ``prob_<name>``
  (softmax of the logits) per class;
* ``text_avail``, ``audio_avail``, ``vision_avail``: 1 when the sample's data has the
  modality (non-empty text; a feature array with at least one real, non-zero frame; for
  a modality the dataset has only as raw media, the media), else 0. A modality removed
  with ``drop`` (``--missing-modality``) is 0 for every sample: the columns say what the
  model received;
* ``label``: the gold score or class name where the sample has one, empty where it has
  none (labels are optional here: unlabelled rows, with no label/class column or an empty
  cell, are predicted like any other).

The format follows the file's suffix (``.csv`` or ``.jsonl``); JSONL writes numbers as
numbers, a missing label as ``null`` and every text exactly. CSV is made safe to open in a
spreadsheet (OWASP's CSV-injection rule, :func:`csv_text`): a text cell (id, split, class
name, label) that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a
leading ``'``, unless it is a plain number such as ``-1``; text cells are quoted; numbers
(scores, classes, probabilities, numeric labels, negative ones included) are written bare.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eval.data import check_data_matches, eval_items, load_data
from eval.options import (
    EvalError,
    check_finite_predictions,
    parse_patterns,
    resolve_device,
    run_config,
)
from students.checkpoint import STUDENT_FILE, check_files, load_checkpoint, read_meta
from students.export import EXPORT_FILE, read_export
from students.inference import predict
from students.robustness import drop_modalities
from students.serving import RUNTIMES, load_served
from workbench.config import MODALITIES, DataConfig
from workbench.data.schema import Sample
from workbench.data.store import DataInfo
from workbench.io import atomic_write_text
from workbench.metrics import SIMS_EDGES_3, SIMS_EDGES_5, sims_bins

log = logging.getLogger(__name__)

FORMATS = (".csv", ".jsonl")
ALL_SPLITS = "all"
POLARITY = ("negative", "neutral", "positive")
NEW_DATA_SPLIT = "test"
"""Split of new data's manifest rows that have no split column (``--new-data``)."""


class PredictError(EvalError):
    """A prediction cannot run as asked; the message says what and what to do."""


@dataclass
class PredictOptions:
    """How to predict (the ``workbench predict`` options)."""

    split: str = "test"
    """A split of the data, or ``all``."""
    batch_size: int = 64
    device: str = "auto"
    """``auto`` (cuda when available), ``cpu``, ``cuda`` or ``cuda:N``."""
    drop: tuple[str, ...] = ()
    """Modalities removed for every sample (text -> ``[UNK]``, features -> zeros)."""
    new_data: bool = False
    """Accept data other than the training data if task, metric set and features match."""
    runtime: str = "torch"
    """For an export directory: ``torch`` (float, or int8 as exported) or ``onnx`` (ONNX
    Runtime, ``model.onnx``); a checkpoint runs in PyTorch only."""

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise PredictError(f"--runtime={self.runtime!r}: use one of {list(RUNTIMES)}")
        if self.batch_size < 1:
            raise PredictError(f"--batch-size={self.batch_size}: use at least 1")
        bad = [m for m in self.drop if m not in MODALITIES]
        if bad:
            raise PredictError(f"--missing-modality: {bad} are not modalities; name some of "
                               f"{list(MODALITIES)}")

    def resolved_device(self) -> torch.device:
        return resolve_device(self.device, PredictError)


def parse_drop(specs: Sequence[str] | None) -> tuple[str, ...]:
    """Modalities to remove from ``--missing-modality`` values (``audio``, ``audio,vision``,
    repeatable; ``none`` or nothing: remove none), in canonical order."""
    if not specs:
        return ()
    mods = {m for pattern in parse_patterns(list(specs)) for m in pattern}
    return tuple(m for m in MODALITIES if m in mods)


def output_format(out: str | Path) -> str:
    """``csv`` or ``jsonl`` from the output file's suffix."""
    suffix = Path(out).suffix.lower()
    if suffix not in FORMATS:
        raise PredictError(f"--out {out}: the format follows the suffix; use a .csv or .jsonl "
                           "file name")
    return suffix[1:]


# ----------------------------------------------------------------------------- columns


def modality_available(sample: Sample, modality: str) -> bool:
    """Whether ``sample``'s data carries ``modality``: non-empty text; a feature array with
    a real frame that is not all zeros; raw media where there is no feature array."""
    if modality == "text":
        return bool(sample.text and sample.text.strip())
    feat = sample.feature(modality)
    if feat is None:
        return sample.has(modality)
    arr = np.asarray(feat)
    n = sample.length(modality)
    if arr.ndim == 2 and n is not None:
        arr = arr[: int(n)]
    return bool(arr.size > 0 and np.any(arr != 0))


def regression_classes(scores: np.ndarray, metric_set: str) -> dict[str, list[Any]]:
    """Per-sample class columns of regression scores, as :mod:`workbench.metrics` counts them."""
    s = np.asarray(scores, dtype=np.float64)
    if metric_set == "sims":
        s = np.clip(s, -1.0, 1.0)
        pol = sims_bins(s, SIMS_EDGES_3)
        return {"polarity": [POLARITY[int(i)] for i in pol],
                "class5": [int(i) - 2 for i in sims_bins(s, SIMS_EDGES_5)]}
    pol = np.round(np.clip(s, -1.0, 1.0)).astype(np.int64)  # acc3: -1, 0, 1
    return {"polarity": [POLARITY[int(i) + 1] for i in pol],
            "class7": [int(v) for v in np.round(np.clip(s, -3.0, 3.0)).astype(np.int64)]}


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def prediction_columns(preds: np.ndarray, task: str, metric_set: str,
                       class_names: Sequence[str]) -> dict[str, list[Any]]:
    """The prediction columns (module docstring) for ``preds`` (scores or logits)."""
    if task == "classification":
        probs = _softmax(np.asarray(preds, dtype=np.float64))
        ids = probs.argmax(axis=1)
        cols: dict[str, list[Any]] = {"class": [class_names[int(i)] for i in ids],
                                      "class_id": [int(i) for i in ids]}
        for j, name in enumerate(class_names):
            cols[f"prob_{name}"] = [float(p) for p in probs[:, j]]
        return cols
    scores = np.asarray(preds, dtype=np.float64).reshape(-1)
    return {"score": [float(v) for v in scores], **regression_classes(scores, metric_set)}


def _label(sample: Sample, task: str, class_names: Sequence[str]) -> Any:
    if task == "classification":
        return None if sample.label_class is None else class_names[int(sample.label_class)]
    return None if sample.label is None else float(sample.label)


# ------------------------------------------------------------------------------- write


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""First characters that make a spreadsheet run a cell as a formula (OWASP, CSV injection)."""
_PLAIN_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def csv_text(text: str) -> str:
    """``text`` safe for a spreadsheet: a leading ``'`` when it starts with a character
    of :data:`FORMULA_STARTS` (OWASP's rule), unless it is a plain number such as ``-1``
    (which a spreadsheet reads as that number, runs nothing)."""
    if text.startswith(FORMULA_STARTS) and not _PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text


def _csv_cell(v: Any) -> str | int | float:
    """A value as the CSV writer gets it: numbers as numbers (written bare, negative ones
    too), NaN and None as an empty cell, everything else as text through :func:`csv_text`."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, float)):
        return "" if isinstance(v, float) and math.isnan(v) else v
    return csv_text(str(v))


def write_rows(rows: Sequence[dict[str, Any]], columns: Sequence[str], out: str | Path) -> Path:
    """Write ``rows`` as CSV or JSONL (from the suffix), atomically
    (:func:`workbench.io.atomic_write_text`).

    CSV is written for spreadsheets: text cells are quoted (so a carriage return or newline
    inside one cannot start a new row) and neutralised by :func:`csv_text`; numbers are
    bare. JSONL keeps every value exactly as it is.
    """
    fmt = output_format(out)
    buf = io.StringIO()
    if fmt == "csv":
        writer = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC)
        writer.writerow([csv_text(c) for c in columns])
        for r in rows:
            writer.writerow([_csv_cell(r.get(c)) for c in columns])
    else:
        for r in rows:
            clean = {c: (None if isinstance(r.get(c), float) and math.isnan(r[c]) else r.get(c))
                     for c in columns}
            buf.write(json.dumps(clean, ensure_ascii=False) + "\n")
    return atomic_write_text(Path(out), buf.getvalue())


# ------------------------------------------------------------------------------ predict


@dataclass
class Predictions:
    """What :func:`predict_checkpoint` produced."""

    columns: list[str]
    rows: list[dict[str, Any]]
    splits: dict[str, int]
    """Rows per split."""
    task: str
    dropped: tuple[str, ...]
    device: str
    out: Path | None = None


def _splits(ds: Any, split: str) -> list[str]:
    present = {s: ds.num_rows(s) for s in ds.splits}
    if split == ALL_SPLITS:
        chosen = [s for s, n in present.items() if n > 0]
        if not chosen:
            raise PredictError(f"dataset {ds.info.name!r} has no samples in any split")
        return chosen
    if split not in present or present[split] == 0:
        raise PredictError(f"split {split!r} is not in dataset {ds.info.name!r} (it has "
                           f"{present}); choose one of those or 'all' with --split, or map "
                           "split names in the data config (split_names)")
    return [split]


def is_export(path: str | Path) -> bool:
    """Whether ``path`` is a student export (``workbench export``), not a checkpoint."""
    return (Path(path) / EXPORT_FILE).is_file()


def predict_samples(path: str | Path, opts: PredictOptions, data: DataConfig | None = None,
                    *, data_source: str = "") -> Predictions:
    """Predict every sample of ``opts.split`` (or all splits) with checkpoint ``path``, or
    with the export directory ``path`` (served by ``opts.runtime``).

    ``data`` overrides the checkpoint's own data config (``data_source`` names it in
    messages; an export reads the data config of the checkpoint it came from). Raises
    :class:`PredictError` / :class:`eval.options.EvalError` /
    :class:`students.checkpoint.CheckpointError` saying what is wrong.
    """
    p = Path(path)
    if is_export(p):
        return _predict_export(p, opts, data, data_source)
    if opts.runtime != "torch":
        raise PredictError(f"--runtime {opts.runtime}: {p} is a checkpoint, which runs in "
                           "PyTorch; export it first (workbench export CHECKPOINT --out DIR "
                           "--onnx) and predict with the export directory")
    check_files(p)
    meta = read_meta(p)
    device = opts.resolved_device()
    data_cfg = applied_data(data if data is not None else run_config(p).data, opts)
    source = data_source or f"(data section of {p / 'config.yaml'})"
    ds = load_data(data_cfg, data_source or "checkpoint", p)
    _check_data(meta.info, ds, source, p, opts)
    modalities = list(meta.student.get("modalities") or ["text", *meta.info.feature_dims])
    _check_drop(opts, modalities, p, f"per its {STUDENT_FILE}")
    splits = _splits(ds, opts.split)
    per_split = {sp: ds.samples(sp) for sp in splits}
    items = {sp: eval_items(meta, s, ds, sp) for sp, s in per_split.items()}
    model, _, meta = load_checkpoint(p, device=device)
    return _predictions(model, meta.info, per_split, items, opts, p, str(device))


def applied_data(data: DataConfig, opts: PredictOptions) -> DataConfig:
    """``data`` as a model is applied to it: rows without a gold label are fine (their label
    is empty), and with ``opts.new_data`` manifest rows without a split column are ``test``
    (unless ``data.default_split`` names another split)."""
    split = data.default_split or (NEW_DATA_SPLIT if opts.new_data else "")
    return dataclasses.replace(data, labels="optional", default_split=split)


def _check_data(trained: DataInfo, ds: Any, source: str, p: Path, opts: PredictOptions) -> None:
    trained = dataclasses.replace(trained, fingerprint="") if opts.new_data else trained
    try:
        check_data_matches(trained, ds, source, p)
    except EvalError as e:
        if opts.new_data or "fingerprint" not in str(e):
            raise
        raise PredictError(f"{e}. To predict on other data with the same task and "
                           "features, pass --new-data") from None


def _check_drop(opts: PredictOptions, modalities: list[str], p: Path, why: str) -> None:
    absent = [m for m in opts.drop if m not in modalities]
    if absent:
        raise PredictError(f"--missing-modality {','.join(opts.drop)}: {p} has no "
                           f"{', '.join(absent)} input (it reads {modalities}, {why}); "
                           "name only those")


def _predict_export(p: Path, opts: PredictOptions, data: DataConfig | None,
                    data_source: str) -> Predictions:
    spec = read_export(p)
    if spec.get("kind") == "prompted":
        raise PredictError(f"export {p} is a prompted network, which reads teacher "
                           "descriptions; predict with its checkpoint instead")
    device = opts.resolved_device()
    if opts.runtime == "onnx" and device.type != "cpu":
        raise PredictError(f"--runtime onnx serves on the CPU; pass --device cpu (not {device})")
    info = DataInfo.from_json(spec["data_info"])
    if data is None:
        ckpt = Path((spec.get("source") or {}).get("checkpoint") or "")
        if not (ckpt / "config.yaml").is_file():
            raise PredictError(f"export {p}: the checkpoint it came from ({ckpt}) is not here "
                               "to give the data config; pass --data")
        data, where = run_config(ckpt).data, ckpt
        source = data_source or f"(data section of {ckpt / 'config.yaml'})"
    else:
        where, source = p, data_source or "--data"
    data = applied_data(data, opts)
    ds = load_data(data, data_source or "checkpoint", where)
    _check_data(info, ds, source, p, opts)
    _check_drop(opts, list(spec["modalities"]), p, f"per its {EXPORT_FILE}")
    splits = _splits(ds, opts.split)
    per_split = {sp: ds.samples(sp) for sp in splits}
    model = load_served(p, opts.runtime)
    if opts.runtime == "torch":
        model = model.to(device)
    where_run = "onnxruntime (cpu)" if opts.runtime == "onnx" else str(device)
    return _predictions(model, info, per_split, per_split, opts, p, where_run)


def _predictions(model: Any, info: DataInfo, per_split: dict[str, list[Sample]],
                 items: dict[str, Any], opts: PredictOptions, p: Path,
                 device: str) -> Predictions:
    task = info.task
    masking = drop_modalities(opts.drop) if opts.drop else None
    rows: list[dict[str, Any]] = []
    for sp, samples in per_split.items():
        preds = predict(model, items[sp], opts.batch_size, masking=masking)
        check_finite_predictions(preds, [s.id for s in samples], p, f"split {sp!r}",
                                 PredictError)
        cols = prediction_columns(preds, task, info.metric_set, info.class_names)
        for i, s in enumerate(samples):
            row: dict[str, Any] = {"id": s.id, "split": sp}
            row.update({k: v[i] for k, v in cols.items()})
            for m in MODALITIES:
                row[f"{m}_avail"] = int(m not in opts.drop and modality_available(s, m))
            row["label"] = _label(s, task, info.class_names)
            rows.append(row)
    pred_cols = [c for c in rows[0] if c not in ("id", "split", "label")
                 and not c.endswith("_avail")]
    columns = ["id", "split", *pred_cols, *[f"{m}_avail" for m in MODALITIES], "label"]
    splits = list(per_split)
    log.info("predicted %d samples (%s) with %s on %s%s", len(rows), ", ".join(splits), p,
             device, f", without {'+'.join(opts.drop)}" if opts.drop else "")
    return Predictions(columns=columns, rows=rows, splits={sp: len(per_split[sp]) for sp in splits},
                       task=task, dropped=opts.drop, device=device)


def predict_checkpoint(path: str | Path, out: str | Path, opts: PredictOptions,
                       data: DataConfig | None = None, *, data_source: str = "") -> Predictions:
    """:func:`predict_samples`, written to ``out`` (``.csv`` / ``.jsonl``)."""
    output_format(out)  # refuse a bad suffix before any work
    res = predict_samples(path, opts, data, data_source=data_source)
    res.out = write_rows(res.rows, res.columns, out)
    return res
