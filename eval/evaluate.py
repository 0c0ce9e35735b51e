"""Evaluate student checkpoints: metrics on a split, missing-modality robustness, cost.

One checkpoint (:func:`evaluate_checkpoint`):

1. its files are checked (each missing one is named with what writes it), its recorded
   selection and teacher jobs go through the protocol guards (:mod:`eval.protocol`);
2. the data is its own training data config (``config.yaml``'s ``data`` section) unless
   another is given; either must be the dataset it was trained on: same fingerprint,
   task, metric set and feature dims as its ``data_info.json``;
3. predictions on the split with complete inputs give the headline metrics
   (:func:`workbench.metrics.compute_metrics`, the dataset's metric set);
4. whole-modality-absent patterns (e.g. no audio, no audio+vision) give one run each:
   the modality's text tokens become ``[UNK]`` / its features zeros for every sample, so
   no seed is involved;
5. the LNLN sweep: for every missing rate and seed, one rate for every modality, text
   tokens -> ``[UNK]`` (``[CLS]``/``[SEP]`` kept), audio / visual units zeroed, masks
   seeded per (seed, sample id) (:func:`students.robustness.fixed_rate`); per rate the
   mean and sample std over seeds and the average over rates
   (:func:`eval.report.robustness_summary`);
6. cost and speed (:mod:`eval.cost`).

Several checkpoints (:func:`leaderboard`): one row per checkpoint plus the mean ± std
across checkpoints with complete inputs, and the LNLN average per checkpoint (mean ± std
over its seeds) plus across checkpoints × seeds.

Files (:func:`write_checkpoint_results`, :func:`write_leaderboard`): ``results.json`` /
``results.md`` (:func:`eval.report.write_results`), ``robustness.png``
(:func:`eval.plots.robustness_curve`), ``runs.csv`` (every prediction pass, unrounded);
for several checkpoints also ``leaderboard.md`` and ``leaderboard.csv`` (and
``leaderboard_lnln.csv`` with a sweep).

``results.json`` of one checkpoint, beyond the schema of :mod:`eval.report`::

    "leaderboard": {"complete": {metric: value}, "no audio": {...}, ...}  # conditions
    "robustness":  {"<checkpoint name>": sweep summary}                    # with a sweep
    "meta":        checkpoint, name, kind, split, n_samples, data, seeds, missing_rates,
                   masked_modalities, missing_modality_patterns, batch_size, device, ...
    "protocol":    selection statement, gold-label jobs, assumptions (eval.protocol)
    "cost":        parameters, size, speed, teacher, comparison (eval.cost)
"""

from __future__ import annotations

import csv
import glob
import io
import itertools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eval.cost import cost_report, rss_bytes
from eval.plots import DEFAULT_ROBUSTNESS_METRICS, robustness_curve
from eval.protocol import check_protocol
from eval.report import (
    csv_table,
    markdown_table,
    order_metrics,
    robustness_summary,
    summarize,
    write_results,
)
from students.checkpoint import (
    ADAPTER_DIR,
    CONFIG_FILE,
    DATA_INFO_FILE,
    SELECTION_FILE,
    STUDENT_FILE,
    TEACHER_MANIFEST_FILE,
    TEXT_ENCODER_FILE,
    VERSIONS_FILE,
    WEIGHTS_FILE,
    CheckpointMeta,
    load_checkpoint,
    read_meta,
)
from students.collate import StudentItem, TeacherSignal
from students.inference import predict
from students.robustness import drop_modalities, fixed_rate
from workbench.cache.join import teacher_view
from workbench.cache.store import DB_FILE, CacheError
from workbench.config import (
    MODALITIES,
    ConfigError,
    DataConfig,
    DistillConfig,
    load_config,
    to_dict,
)
from workbench.data import DataError, MSADataset, load_dataset
from workbench.data.schema import Sample
from workbench.data.store import DataInfo
from workbench.errors import WorkbenchError
from workbench.metrics import compute_metrics

log = logging.getLogger(__name__)

COMPLETE = "complete"
"""Name of the condition with every modality present."""
BEST_DIR = "checkpoint-best"

WRITTEN_BY = "the trainer's save_checkpoint (students.checkpoint), run by `distill.py` after " \
             "each epoch that improves the validation metric"
REQUIRED_FILES: dict[str, str] = {
    CONFIG_FILE: "the resolved training config",
    STUDENT_FILE: "format version, model kind, label bins, text mode",
    DATA_INFO_FILE: "the training dataset's info and fingerprint",
    WEIGHTS_FILE: "the heads, feature encoders and fusion weights",
    SELECTION_FILE: "how the checkpoint was selected",
    TEACHER_MANIFEST_FILE: "the teacher cache jobs the run trained on",
    VERSIONS_FILE: "the package versions that produced it",
}


class EvalError(WorkbenchError, RuntimeError):
    """An evaluation cannot run as asked; the message says what, where, and what to do."""


Progress = Callable[[str, int, int], None]
"""``progress(label, done, total)``: called after every prediction pass."""


# ------------------------------------------------------------------------------ options


def parse_rates(spec: str) -> list[float]:
    """Missing rates from ``a:b:step`` (inclusive end), a comma list, or ``none``.

    ``0:0.9:0.1`` -> ``[0.0, 0.1, ..., 0.9]`` (10 rates); ``0,0.5,1`` -> three rates;
    ``none`` or ``""`` -> no sweep. Every rate must lie in ``[0, 1]``.
    """
    text = spec.strip().lower()
    if text in ("", "none", "no", "off"):
        return []
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            if len(parts) != 3:
                raise ValueError
            start, stop, step = parts
            if step <= 0 or stop < start:
                raise EvalError(f"--missing-rates={spec!r}: need start <= stop and step > 0 "
                                "(e.g. 0:0.9:0.1)")
            n = int(math.floor((stop - start) / step + 1e-9)) + 1
            rates = [round(start + i * step, 10) for i in range(n)]
        else:
            rates = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise EvalError(f"--missing-rates={spec!r} is not a:b:step (e.g. 0:0.9:0.1), a comma "
                        "list of rates (e.g. 0,0.5), or none") from None
    bad = [r for r in rates if not 0.0 <= r <= 1.0]
    if bad:
        raise EvalError(f"--missing-rates={spec!r} gives rates {bad} outside [0, 1]; missing "
                        "rates are fractions")
    if len(set(rates)) != len(rates):
        raise EvalError(f"--missing-rates={spec!r} repeats a rate: {rates}")
    return sorted(rates)


def parse_seeds(spec: str) -> list[int]:
    """Seeds from a comma list (``1111,1112,1113``)."""
    try:
        seeds = [int(p) for p in spec.split(",") if p.strip()]
    except ValueError:
        raise EvalError(f"--seeds={spec!r}: use comma-separated integers, e.g. "
                        "1111,1112,1113") from None
    if not seeds:
        raise EvalError(f"--seeds={spec!r} names no seed; e.g. 1111,1112,1113")
    if len(set(seeds)) != len(seeds):
        raise EvalError(f"--seeds={spec!r} repeats a seed")
    return seeds


def parse_patterns(specs: Sequence[str]) -> list[tuple[str, ...]]:
    """Whole-modality-absent patterns from ``["audio", "audio,vision", ...]``.

    Each item names the modalities removed together; ``none`` alone means no patterns.
    """
    if [s.strip().lower() for s in specs] == ["none"]:
        return []
    out: list[tuple[str, ...]] = []
    for spec in specs:
        mods = tuple(dict.fromkeys(m.strip() for m in spec.split(",") if m.strip()))
        bad = [m for m in mods if m not in MODALITIES]
        if not mods or bad:
            raise EvalError(f"--missing-modality={spec!r}: name modalities from "
                            f"{list(MODALITIES)}, several joined by commas (e.g. audio,vision), "
                            "or 'none' for no patterns")
        ordered = tuple(m for m in MODALITIES if m in mods)
        if ordered not in out:
            out.append(ordered)
    return out


def pattern_name(drop: Sequence[str]) -> str:
    """Row name of a pattern: ``no audio``, ``no audio+vision``."""
    return "no " + "+".join(drop)


@dataclass
class EvalOptions:
    """How to evaluate (the ``workbench eval`` options)."""

    split: str = "test"
    missing_rates: list[float] = field(default_factory=list)
    """LNLN sweep rates; empty: no sweep."""
    seeds: list[int] = field(default_factory=lambda: [1111, 1112, 1113])
    patterns: list[tuple[str, ...]] | None = None
    """Modalities removed together, one pattern each; None: every pattern the checkpoint's
    modalities allow (each non-empty proper subset removed); []: none."""
    batch_size: int = 64
    cost: bool = True
    """Measure speed and memory and compare with the teacher (parameters and size always)."""
    latency_samples: int = 50
    device: str = "auto"
    """``auto`` (cuda when available), ``cpu``, ``cuda`` or ``cuda:N``."""
    device_cost_per_hour: float = 0.0
    """USD per hour of the machine running the student (for the cost ratio); 0: unknown."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise EvalError(f"--batch-size={self.batch_size}: use at least 1")
        if self.latency_samples < 1:
            raise EvalError(f"--latency-samples={self.latency_samples}: use at least 1")
        if self.missing_rates and not self.seeds:
            raise EvalError("a missing-rate sweep needs at least one seed (--seeds)")
        if self.device_cost_per_hour < 0:
            raise EvalError(f"--device-cost-per-hour={self.device_cost_per_hour}: a price "
                            "cannot be negative")

    def resolved_device(self) -> torch.device:
        return resolve_device(self.device)


def resolve_device(spec: str, error: type[EvalError] = EvalError) -> torch.device:
    """The torch device of a ``--device`` value: ``auto`` (cuda when available), ``cpu``,
    ``cuda`` or ``cuda:N``; anything else, or CUDA where there is none, raises ``error``."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise error(f"--device={spec!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise error(f"--device={spec}: CUDA is not available here; use cpu or auto")
    if dev.type not in ("cpu", "cuda"):
        raise error(f"--device={spec!r}: use auto, cpu, cuda or cuda:N")
    return dev


def run_config(path: Path) -> DistillConfig:
    """The resolved training config a checkpoint holds (``config.yaml``)."""
    try:
        return load_config(DistillConfig, path / CONFIG_FILE)
    except ConfigError as e:
        raise EvalError(f"checkpoint {path}: its {CONFIG_FILE} does not load with this "
                        f"workbench: {e}") from None


def options_for(path: str | Path, *, split: str | None = None,
                missing_rates: list[float] | None = None, seeds: list[int] | None = None,
                batch_size: int | None = None, **rest: Any) -> EvalOptions:
    """:class:`EvalOptions` for a checkpoint: what is given, else its config's ``eval``
    section (``split``, ``missing_rates``, ``seeds``, ``batch_size``); ``rest`` are the other
    :class:`EvalOptions` fields."""
    p = Path(path)
    check_files(p)
    ec = run_config(p).eval
    return EvalOptions(
        split=split if split is not None else ec.split,
        missing_rates=list(missing_rates) if missing_rates is not None else sorted(
            ec.missing_rates),
        seeds=list(seeds) if seeds is not None else list(ec.seeds),
        batch_size=batch_size if batch_size is not None else ec.batch_size,
        **rest)


# --------------------------------------------------------------------------- checkpoints


def checkpoint_name(path: Path) -> str:
    """``runs/x/checkpoint-best`` -> ``x``; any other directory -> its own name."""
    return path.parent.name if path.name == BEST_DIR and path.parent.name else path.name


CHECKPOINT_MARKERS = (STUDENT_FILE, DATA_INFO_FILE, WEIGHTS_FILE, SELECTION_FILE,
                      TEACHER_MANIFEST_FILE)
"""Files only a checkpoint directory holds (a run directory has config.yaml too)."""


def _is_checkpoint(p: Path) -> bool:
    """Whether ``p`` looks like a checkpoint (complete or not: check_files names the gaps)."""
    return p.is_dir() and any((p / f).is_file() for f in CHECKPOINT_MARKERS)


def find_checkpoints(args: Sequence[str]) -> list[Path]:
    """Checkpoint directories from arguments: checkpoints, run dirs, dirs of runs, globs.

    An argument may be a checkpoint directory, a run directory holding ``checkpoint-best/``,
    a directory of runs (each run's ``checkpoint-best/``), or a glob of any of these
    (``runs/*``; glob matches that are none of them are skipped).
    """
    found: list[Path] = []
    for arg in args:
        is_glob = any(c in arg for c in "*?[") and not Path(arg).exists()
        paths = [Path(p) for p in sorted(glob.glob(arg))] if is_glob else [Path(arg)]
        if is_glob and not paths:
            raise EvalError(f"{arg!r} matches nothing; pass checkpoint directories "
                            "(e.g. runs/*/checkpoint-best) or run directories")
        hits: list[Path] = []
        for p in paths:
            if _is_checkpoint(p / BEST_DIR):
                hits.append(p / BEST_DIR)
            elif _is_checkpoint(p):
                hits.append(p)
            elif p.is_dir():
                hits += [c / BEST_DIR for c in sorted(p.iterdir())
                         if c.is_dir() and _is_checkpoint(c / BEST_DIR)]
        if not hits:
            if not any(p.exists() for p in paths):
                raise EvalError(f"checkpoint {arg} does not exist; pass a run's "
                                f"{BEST_DIR}/ directory (written by distill.py)")
            raise EvalError(
                f"{arg} is not a checkpoint (no {STUDENT_FILE}), holds no {BEST_DIR}/, and "
                f"holds no run directories with one; {BEST_DIR}/ is written by {WRITTEN_BY}")
        found += hits
    unique: dict[Path, Path] = {}
    for p in found:
        unique.setdefault(p.resolve(), p)
    return list(unique.values())


def unique_names(paths: Sequence[Path]) -> list[str]:
    """Short names for checkpoints (:func:`checkpoint_name`); when two collide, every name
    becomes its path relative to the checkpoints' common parent (without
    ``/checkpoint-best``)."""
    names = [checkpoint_name(p) for p in paths]
    if len(set(names)) == len(names):
        return names
    resolved = [p.resolve() for p in paths]
    common = Path(os.path.commonpath(resolved))
    out = []
    for r in resolved:
        rel = r.relative_to(common) if r != common else Path(r.name)
        if rel.name == BEST_DIR and len(rel.parts) > 1:
            rel = rel.parent
        out.append(rel.as_posix())
    return out


def check_files(path: Path) -> None:
    """Raise :class:`EvalError` naming every missing checkpoint file and what writes it."""
    if not path.is_dir():
        raise EvalError(f"checkpoint {path} does not exist or is not a directory; pass a run's "
                        f"{BEST_DIR}/ directory (written by distill.py)")
    missing = [f"{name} ({what})" for name, what in REQUIRED_FILES.items()
               if not (path / name).is_file()]
    student = path / STUDENT_FILE
    if student.is_file():
        try:
            mode = json.loads(student.read_text()).get("text_mode")
        except json.JSONDecodeError as e:
            raise EvalError(f"{student}: not valid JSON ({e}); the checkpoint is damaged, "
                            "re-save it from its run") from None
        if mode == "lora":
            for name in ("adapter_config.json", "adapter_model.safetensors"):
                if not (path / ADAPTER_DIR / name).is_file():
                    missing.append(f"{ADAPTER_DIR}/{name} (the LoRA adapter, text_mode lora)")
        elif mode == "full" and not (path / TEXT_ENCODER_FILE).is_file():
            missing.append(f"{TEXT_ENCODER_FILE} (the fine-tuned text encoder, text_mode full)")
    if missing:
        raise EvalError(
            f"checkpoint {path} is missing {', '.join(missing)}. These files are written by "
            f"{WRITTEN_BY}; the run may have stopped before its first validation or the "
            "directory was copied in part. Point at a complete checkpoint or re-run training")


# --------------------------------------------------------------------------------- data


def check_data_matches(trained: DataInfo, ds: MSADataset, source: str, where: Path) -> None:
    """Refuse data other than the checkpoint's training data (fingerprint, task, features)."""
    have = ds.info
    problems = []
    for name in ("task", "metric_set"):
        if getattr(trained, name) != getattr(have, name):
            problems.append(f"{name} {getattr(have, name)!r} (checkpoint: "
                            f"{getattr(trained, name)!r})")
    for m, dim in trained.feature_dims.items():
        if m not in have.feature_dims or m not in have.modalities:
            problems.append(f"no {m} features (checkpoint: {m} d={dim})")
        elif have.feature_dims[m] != dim or have.feature_kind.get(m) != trained.feature_kind.get(m):
            problems.append(f"{m} {have.feature_kind.get(m)} d={have.feature_dims[m]} "
                            f"(checkpoint: {trained.feature_kind.get(m)} d={dim})")
    if trained.fingerprint and have.fingerprint != trained.fingerprint:
        problems.append(f"fingerprint {have.fingerprint} (checkpoint: {trained.fingerprint})")
    if problems:
        raise EvalError(
            f"--data {source} is not the dataset checkpoint {where} was trained on "
            f"({trained.name!r} per its {DATA_INFO_FILE}): the data has "
            f"{'; '.join(problems)}. Evaluate on the data it was trained on: leave --data out "
            f"to use the data section of its {CONFIG_FILE}, or pass that data's config")


def _data_key(cfg: DataConfig) -> str:
    return json.dumps(to_dict(cfg), sort_keys=True, default=str)


def load_data(cfg: DataConfig, source: str, where: Path,
              cache: dict[str, MSADataset] | None = None) -> MSADataset:
    """The dataset ``cfg`` names (reused from ``cache`` when the same config was loaded)."""
    key = _data_key(cfg)
    if cache is not None and key in cache:
        return cache[key]
    try:
        ds = load_dataset(cfg)
    except (DataError, OSError) as e:
        hint = ("" if source != "checkpoint" else
                f" (the data section of {where / CONFIG_FILE}; relative paths are read from "
                f"the current directory {os.getcwd()}: run from where the training ran, or "
                "pass --data)")
        raise EvalError(f"cannot load the evaluation data{hint}: {e}") from None
    if cache is not None:
        cache[key] = ds
    return ds


def split_samples(ds: MSADataset, split: str, info: DataInfo) -> list[Sample]:
    """The labelled samples of ``split``; errors name the splits the data has."""
    present = {s: ds.num_rows(s) for s in ds.splits}
    if split not in present or present[split] == 0:
        raise EvalError(f"split {split!r} is not in dataset {ds.info.name!r} (it has "
                        f"{present}); choose one of those with --split, or map split names "
                        "in the data config (split_names)")
    samples = ds.samples(split)
    classification = info.task == "classification"
    unlabelled = [s.id for s in samples
                  if (s.label_class is None if classification else s.label is None)]
    if unlabelled:
        raise EvalError(f"{len(unlabelled)} of {len(samples)} {split!r} samples of "
                        f"{ds.info.name!r} have no label (e.g. {unlabelled[:3]}); metrics "
                        "need every label")
    return samples


def labels_of(samples: Sequence[Sample], info: DataInfo) -> np.ndarray:
    """Gold labels: scores (regression) or class ids (classification)."""
    if info.task == "classification":
        return np.array([s.label_class for s in samples], dtype=np.int64)
    return np.array([s.label for s in samples], dtype=np.float64)


def eval_items(meta: CheckpointMeta, samples: list[Sample], ds: MSADataset, split: str
               ) -> list[Sample] | list[StudentItem]:
    """What ``predict`` gets: the samples, plus the teacher's descriptions for a prompted
    network (read from the description job it trained with; gold-label jobs refused)."""
    if meta.kind != "prompted":
        return samples
    entry = meta.teacher_manifest.get("descriptions") or {}
    job = entry.get("job") or {}
    cache_dir = entry.get("cache_dir") or ""
    if not job or not (Path(cache_dir) / DB_FILE).is_file():
        raise EvalError(
            f"checkpoint {meta.path} is a prompted network: it reads the teacher's descriptions, "
            f"which come from cache {cache_dir!r} (job {job.get('job')}), not found here. "
            "Mount that cache at the same path, or evaluate the plain student instead")
    try:
        view = teacher_view(cache_dir, {s.id: split for s in samples}, ds.fingerprint,
                            template=str(job.get("template", "")), job=str(job.get("job", "")))
    except CacheError as e:
        raise EvalError(f"checkpoint {meta.path} (prompted network): {e}") from None
    log.info("prompted network: teacher descriptions for %d of %d %s samples", len(view.outputs),
             len(samples), split)
    return [StudentItem(s, TeacherSignal(description=(view.outputs[s.id].description or "")
                                         if s.id in view.outputs else ""))
            for s in samples]


# ---------------------------------------------------------------------------- evaluation


@dataclass
class CheckpointEval:
    """Everything one evaluation found."""

    name: str
    path: Path
    meta: CheckpointMeta
    split: str
    n_samples: int
    metric_set: str
    conditions: dict[str, dict[str, float]]
    """``complete`` and each pattern (``no audio``, ...) -> metrics."""
    patterns: dict[str, list[str]]
    """Pattern name -> modalities removed."""
    sweep: dict[float, list[dict[str, float]]]
    """Missing rate -> metrics per seed (in ``seeds`` order); empty without a sweep."""
    seeds: list[int]
    modalities: list[str]
    """Modalities the model reads (masked together in the sweep)."""
    protocol: dict[str, Any]
    cost: dict[str, Any] | None
    data: dict[str, Any]
    options: EvalOptions
    device: str
    seconds: float = 0.0

    @property
    def metrics(self) -> dict[str, float]:
        """Metrics with complete inputs."""
        return self.conditions[COMPLETE]

    def robustness(self) -> dict[str, Any] | None:
        """The sweep summary (:func:`eval.report.robustness_summary`), or None."""
        return robustness_summary(self.sweep) if self.sweep else None

    def seed_averages(self) -> list[dict[str, float]]:
        """Per seed: each metric averaged over the sweep's rates (for across-seed spread)."""
        if not self.sweep:
            return []
        rates = sorted(self.sweep)
        names = list(self.sweep[rates[0]][0])
        return [{m: float(np.mean([self.sweep[r][i][m] for r in rates])) for m in names}
                for i in range(len(self.seeds))]


def _resolve_patterns(opts: EvalOptions, modalities: list[str], where: Path
                      ) -> dict[str, list[str]]:
    if opts.patterns is None:
        drops = [tuple(m for m in MODALITIES if m in subset)
                 for k in range(1, len(modalities))
                 for subset in itertools.combinations(modalities, k)]
    else:
        drops = list(opts.patterns)
    out: dict[str, list[str]] = {}
    for drop in drops:
        absent = [m for m in drop if m not in modalities]
        if absent:
            raise EvalError(f"--missing-modality {','.join(drop)}: checkpoint {where} has no "
                            f"{', '.join(absent)} input (it reads {modalities}); name only "
                            "those")
        out[pattern_name(drop)] = list(drop)
    return out


def evaluate_checkpoint(path: str | Path, opts: EvalOptions, data: DataConfig | None = None,
                        *, data_source: str = "", datasets: dict[str, MSADataset] | None = None,
                        name: str | None = None, progress: Progress | None = None
                        ) -> CheckpointEval:
    """Evaluate one checkpoint as the module docstring describes.

    ``data`` overrides the checkpoint's own data config (``data_source`` names it in
    messages); ``datasets`` caches loaded datasets across calls. Raises
    :class:`EvalError`, :class:`eval.protocol.ProtocolError` or
    :class:`students.checkpoint.CheckpointError` with what is wrong and what to do.
    """
    t0 = time.perf_counter()
    p = Path(path)
    check_files(p)
    meta = read_meta(p)
    protocol = check_protocol(meta.selection, meta.teacher_manifest, opts.split, p)
    device = opts.resolved_device()
    # Everything that can be refused is checked before the model is built.
    data_cfg = data if data is not None else run_config(p).data
    ds = load_data(data_cfg, data_source or "checkpoint", p, datasets)
    check_data_matches(meta.info, ds, data_source or f"(data section of {p / CONFIG_FILE})", p)
    samples = split_samples(ds, opts.split, meta.info)
    items = eval_items(meta, samples, ds, opts.split)
    labels = labels_of(samples, meta.info)
    modalities = list(meta.student.get("modalities") or ["text", *meta.info.feature_dims])
    patterns = _resolve_patterns(opts, modalities, p)
    rss_before = rss_bytes()
    model, _, meta = load_checkpoint(p, device=device)
    if modalities != ["text", *model.modalities]:
        raise EvalError(f"checkpoint {p}: {STUDENT_FILE} lists modalities {modalities} but its "
                        f"config builds a model reading {['text', *model.modalities]}; the "
                        "checkpoint is inconsistent, re-save it from its run")
    total = 1 + len(patterns) + len(opts.missing_rates) * len(opts.seeds)
    done = 0
    label = name or checkpoint_name(p)

    def run(masking: Any, what: str) -> dict[str, float]:
        nonlocal done
        preds = predict(model, items, opts.batch_size, masking=masking)
        metrics = compute_metrics(meta.info.metric_set, preds, labels)
        done += 1
        if progress is not None:
            progress(f"{label}: {what}", done, total)
        return metrics

    conditions = {COMPLETE: run(None, COMPLETE)}
    for pname, drop in patterns.items():
        conditions[pname] = run(drop_modalities(tuple(drop)), pname)
    sweep: dict[float, list[dict[str, float]]] = {}
    for rate in opts.missing_rates:
        sweep[rate] = [run(fixed_rate(rate, seed, tuple(modalities)),
                           f"rate {rate:g} seed {seed}") for seed in opts.seeds]
    cost = cost_report(model, p, items, meta.teacher_manifest, ds, batch_size=opts.batch_size,
                       recorded_parameters=meta.student.get("parameters"),
                       latency_samples=opts.latency_samples,
                       device_cost_per_hour=opts.device_cost_per_hour,
                       rss_baseline=rss_before, measure=opts.cost)
    ev = CheckpointEval(
        name=label, path=p, meta=meta, split=opts.split, n_samples=len(samples),
        metric_set=meta.info.metric_set, conditions=conditions, patterns=patterns, sweep=sweep,
        seeds=list(opts.seeds), modalities=modalities, protocol=protocol, cost=cost,
        data={"name": ds.info.name, "fingerprint": ds.fingerprint, "source": ds.info.source,
              "path": data_cfg.path,
              "splits": {s: ds.num_rows(s) for s in ds.splits}},
        options=opts, device=str(device), seconds=time.perf_counter() - t0)
    log.info("evaluated %s on %s (%d samples, %d passes) in %.1fs", p, opts.split, len(samples),
             total, ev.seconds)
    return ev


# -------------------------------------------------------------------------------- results


def results_dict(ev: CheckpointEval) -> dict[str, Any]:
    """``results.json`` content for one checkpoint (schema in the module docstring)."""
    out: dict[str, Any] = {
        "metric_set": ev.metric_set,
        "leaderboard": ev.conditions,
        "meta": {
            "checkpoint": str(ev.path),
            "name": ev.name,
            "kind": ev.meta.kind,
            "split": ev.split,
            "n_samples": ev.n_samples,
            "data": ev.data,
            "seeds": ev.seeds if ev.sweep else [],
            "missing_rates": sorted(ev.sweep),
            "masked_modalities": ev.modalities,
            "missing_modality_patterns": ev.patterns,
            "batch_size": ev.options.batch_size,
            "device": ev.device,
            "seconds": ev.seconds,
            "protocol_note": ("complete: every modality present; 'no X': modality X removed "
                              "for every sample (text -> [UNK] keeping [CLS]/[SEP], features "
                              "-> zeros); sweep: one missing rate for every modality, masks "
                              "seeded per (seed, sample id), mean ± sample std over seeds"),
            "trained_with": {"versions": ev.meta.versions},
        },
        "protocol": ev.protocol,
    }
    rob = ev.robustness()
    if rob is not None:
        out["robustness"] = {ev.name: rob}
    if ev.cost is not None:
        out["cost"] = ev.cost
    return out


def runs_csv(evals: Sequence[CheckpointEval]) -> str:
    """Every prediction pass as CSV: checkpoint, condition, rate, seed, each metric."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    names = order_metrics((m for ev in evals for m in ev.metrics), evals[0].metric_set)
    writer.writerow(["checkpoint", "condition", "missing_rate", "seed", *names])
    for ev in evals:
        for cond, metrics in ev.conditions.items():
            writer.writerow([ev.name, cond, "", "", *[repr(metrics.get(m)) for m in names]])
        for rate in sorted(ev.sweep):
            for seed, metrics in zip(ev.seeds, ev.sweep[rate], strict=True):
                writer.writerow([ev.name, "sweep", repr(rate), seed,
                                 *[repr(metrics.get(m)) for m in names]])
    return buf.getvalue()


def _plot_metrics(metric_set: str, have: Sequence[str]) -> list[str]:
    preferred = {"mosi": list(DEFAULT_ROBUSTNESS_METRICS), "sims": ["acc2", "f1", "mae"],
                 "classification": ["acc", "f1_weighted", "f1_macro"]}.get(metric_set, [])
    chosen = [m for m in preferred if m in have]
    return chosen or list(have)[:3]


def write_checkpoint_results(ev: CheckpointEval, out_dir: str | Path) -> list[Path]:
    """``results.json``, ``results.md``, ``runs.csv`` and (with a sweep) ``robustness.png``."""
    out = Path(out_dir)
    json_path, md_path = write_results(out, results_dict(ev))
    paths = [json_path, md_path]
    csv_path = out / "runs.csv"
    csv_path.write_text(runs_csv([ev]), encoding="utf-8")
    paths.append(csv_path)
    rob = ev.robustness()
    if rob is not None:
        paths.append(robustness_curve({ev.name: rob}, _plot_metrics(ev.metric_set, ev.metrics),
                                      out_path=out / "robustness.png"))
    return paths


def default_out_dir(path: Path, split: str) -> Path:
    """Where results go without ``--out``: ``<run>/eval-<split>`` beside ``checkpoint-best``
    (``<parent>/eval-<split>-<name>`` for another checkpoint directory)."""
    if path.name == BEST_DIR:
        return path.parent / f"eval-{split}"
    return path.parent / f"eval-{split}-{path.name}"


def leaderboard(evals: Sequence[CheckpointEval]) -> dict[str, Any]:
    """Rows across checkpoints: complete-input metrics and, with a sweep, LNLN averages.

    Returns ``{"metric_set", "complete": rows, "lnln": rows or {}}`` where rows map a
    checkpoint name to ``{metric: value or (mean, std)}`` and end with an aggregate row
    ``mean ± std (N checkpoints)`` (complete) / ``mean ± std (N checkpoints × S seeds)``
    (LNLN: each checkpoint's per-seed averages over rates, pooled).
    """
    if not evals:
        raise ValueError("leaderboard needs at least one evaluation")
    sets = {ev.metric_set for ev in evals}
    if len(sets) > 1:
        raise EvalError(f"the checkpoints use different metric sets {sorted(sets)}; a "
                        "leaderboard compares checkpoints of one dataset")
    splits = {ev.split for ev in evals}
    if len(splits) > 1:
        raise EvalError(f"the evaluations are on different splits {sorted(splits)}")
    complete: dict[str, Any] = {ev.name: ev.metrics for ev in evals}
    complete[f"mean ± std ({len(evals)} checkpoints)"] = summarize([ev.metrics for ev in evals])
    lnln: dict[str, Any] = {}
    swept = [ev for ev in evals if ev.sweep]
    if swept:
        grids = {(tuple(sorted(ev.sweep)), tuple(ev.seeds)) for ev in swept}
        if len(grids) > 1 or len(swept) != len(evals):
            raise EvalError("the checkpoints were swept over different rates or seeds; "
                            "evaluate them in one call with the same --missing-rates/--seeds")
        pooled: list[dict[str, float]] = []
        for ev in swept:
            per_seed = ev.seed_averages()
            lnln[ev.name] = summarize(per_seed)
            pooled += per_seed
        n_seeds = len(swept[0].seeds)
        lnln[f"mean ± std ({len(swept)} checkpoints × {n_seeds} seeds)"] = summarize(pooled)
    return {"metric_set": evals[0].metric_set, "split": evals[0].split, "complete": complete,
            "lnln": lnln}


def leaderboard_markdown(board: Mapping[str, Any]) -> str:
    """The leaderboard as Markdown: complete inputs, then the LNLN averages."""
    metric_set = board["metric_set"]
    cols = order_metrics((m for row in board["complete"].values() for m in row), metric_set)
    lines = [f"# Leaderboard ({board['split']} split, metric set `{metric_set}`)", "",
             "Accuracies and F1 ×100; MAE and Corr as is.", "",
             "## Complete inputs", "", markdown_table(board["complete"], cols, name_header="checkpoint")]
    if board["lnln"]:
        lines += ["## LNLN average over missing rates (mean ± std over seeds)", "",
                  markdown_table(board["lnln"], cols, name_header="checkpoint")]
    return "\n".join(lines)


def write_leaderboard(evals: Sequence[CheckpointEval], out_dir: str | Path) -> list[Path]:
    """``leaderboard.md``, ``leaderboard.csv`` (+ ``leaderboard_lnln.csv``), the combined
    ``results.json`` / ``results.md``, ``runs.csv`` and (with a sweep) ``robustness.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    board = leaderboard(evals)
    cols = order_metrics((m for row in board["complete"].values() for m in row),
                         board["metric_set"])
    paths = [out / "leaderboard.md", out / "leaderboard.csv"]
    paths[0].write_text(leaderboard_markdown(board), encoding="utf-8")
    paths[1].write_text(csv_table(board["complete"], cols, name_header="checkpoint",
                                  split_std=True), encoding="utf-8")
    if board["lnln"]:
        lnln_path = out / "leaderboard_lnln.csv"
        lnln_path.write_text(csv_table(board["lnln"], cols, name_header="checkpoint",
                                       split_std=True), encoding="utf-8")
        paths.append(lnln_path)
    results: dict[str, Any] = {
        "metric_set": board["metric_set"],
        "leaderboard": board["complete"],
        "meta": {"split": board["split"], "checkpoints": {ev.name: str(ev.path) for ev in evals},
                 "seeds": evals[0].seeds if evals[0].sweep else [],
                 "missing_rates": sorted(evals[0].sweep)},
    }
    if board["lnln"]:
        results["lnln_leaderboard"] = board["lnln"]
        results["robustness"] = {ev.name: ev.robustness() for ev in evals}
    paths += list(write_results(out, results))
    runs = out / "runs.csv"
    runs.write_text(runs_csv(evals), encoding="utf-8")
    paths.append(runs)
    if board["lnln"]:
        paths.append(robustness_curve(results["robustness"],
                                      _plot_metrics(board["metric_set"], cols),
                                      out_path=out / "robustness.png"))
    return paths
