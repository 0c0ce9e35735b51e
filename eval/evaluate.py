"""Evaluate one student checkpoint: metrics on a split, missing-modality robustness, cost.

One checkpoint (:func:`evaluate_checkpoint`):

1. its files are checked (:func:`students.checkpoint.check_files`: each missing one is
   named with what writes it), its recorded selection and teacher jobs go through the
   protocol guards (:mod:`eval.protocol`);
2. the data is its own training data config (``config.yaml``'s ``data`` section) unless
   another is given; either must be the dataset it was trained on: same fingerprint,
   task, metric set and feature dims as its ``data_info.json`` (:mod:`eval.data`);
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
5b. CyIN's protocol (with ``dataset_rates`` / ``instance_probs``): the fixed subsets are
   the patterns of 4 (every non-empty subset kept: 7 for text / audio / vision, 3 for
   text + audio); per dataset-level missing rate and per instance-level missing
   probability, one run per seed (:func:`students.robustness.dataset_missing`,
   :func:`~students.robustness.instance_missing`), summarised like the sweep, in
   ``results.json`` under ``cyin_protocol``;
6. cost and speed (:mod:`eval.cost`).

How to evaluate (split, rates, seeds, patterns, device, ...) is an
:class:`eval.options.EvalOptions`; several checkpoints are compared by
:mod:`eval.leaderboard`.

Files (:func:`write_checkpoint_results`): ``results.json`` / ``results.md``
(:func:`eval.report.write_results`), ``robustness.png``
(:func:`eval.plots.robustness_curve`), ``runs.csv`` (every prediction pass, unrounded).

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
import io
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eval.cost import cost_report, rss_bytes
from eval.data import check_data_matches, eval_items, labels_of, load_data, split_samples
from eval.options import (
    EvalError,
    EvalOptions,
    check_finite_predictions,
    pattern_name,
    run_config,
)
from eval.plots import DEFAULT_ROBUSTNESS_METRICS, robustness_curve
from eval.protocol import check_protocol
from eval.report import order_metrics, robustness_summary, write_results
from students.checkpoint import (
    BEST_DIR,
    CONFIG_FILE,
    STUDENT_FILE,
    CheckpointMeta,
    check_files,
    checkpoint_name,
    load_checkpoint,
    read_meta,
)
from students.inference import predict
from students.robustness import dataset_missing, drop_modalities, fixed_rate, instance_missing
from workbench.config import MODALITIES, DataConfig
from workbench.data import MSADataset, fingerprint
from workbench.data.domains import domain_names, sample_domain
from workbench.metrics import compute_metrics

log = logging.getLogger(__name__)

COMPLETE = "complete"
"""Name of the condition with every modality present."""

Progress = Callable[[str, int, int], None]
"""``progress(label, done, total)``: called after every prediction pass."""


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
    random_missing: dict[str, dict[float, list[dict[str, float]]]] | None = None
    """CyIN's random protocols: ``dataset_rate`` / ``instance_prob`` -> value -> metrics
    per seed; None without them."""

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


def in_domain(samples: list[Any], data_cfg: DataConfig, dataset: str, domain: str,
              split: str, where: Path) -> list[Any]:
    """The samples of ``domain`` (under ``data_cfg.domain``); refuses an empty result."""
    if not data_cfg.domain:
        raise EvalError(f"evaluating {where} on domain {domain!r}: the data config declares no "
                        "domains; set data.domain (name, column:COL or source:N)")
    kept = [s for s in samples if sample_domain(s, data_cfg.domain, dataset) == domain]
    if not kept:
        raise EvalError(f"evaluating {where} on domain {domain!r}: no {split} sample has it "
                        f"(data.domain={data_cfg.domain!r} gives "
                        f"{domain_names(samples, data_cfg.domain, dataset)}); name one of them")
    return kept


def evaluate_checkpoint(path: str | Path, opts: EvalOptions, data: DataConfig | None = None,
                        *, data_source: str = "", datasets: dict[str, MSADataset] | None = None,
                        name: str | None = None, progress: Progress | None = None
                        ) -> CheckpointEval:
    """Evaluate one checkpoint as the module docstring describes.

    ``data`` overrides the checkpoint's own data config (``data_source`` names it in
    messages); ``datasets`` caches loaded datasets across calls. Raises
    :class:`eval.options.EvalError`, :class:`eval.protocol.ProtocolError`,
    :class:`students.checkpoint.CheckpointError` or :class:`workbench.data.DataError` with
    what is wrong and what to do.
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
    if opts.domain:
        samples = in_domain(samples, data_cfg, ds.info.name, opts.domain, opts.split, p)
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
    total = 1 + len(patterns) + (len(opts.missing_rates) + len(opts.dataset_rates)
                                 + len(opts.instance_probs)) * len(opts.seeds)
    done = 0
    label = name or checkpoint_name(p)

    def run(masking: Any, what: str) -> dict[str, float]:
        nonlocal done
        preds = predict(model, items, opts.batch_size, masking=masking)
        check_finite_predictions(preds, [s.id for s in samples], p,
                                 f"split {opts.split!r} ({what})")
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
    random_missing = None
    if opts.dataset_rates or opts.instance_probs:
        mods = tuple(modalities)
        random_missing = {
            "dataset_rate": {r: [run(dataset_missing(r, seed, mods), f"dataset rate {r:g} seed "
                                     f"{seed}") for seed in opts.seeds]
                             for r in opts.dataset_rates},
            "instance_prob": {q: [run(instance_missing(q, seed, mods), f"instance prob {q:g} "
                                      f"seed {seed}") for seed in opts.seeds]
                              for q in opts.instance_probs}}
    cost = cost_report(model, p, items, meta.teacher_manifest, ds, batch_size=opts.batch_size,
                       recorded_parameters=meta.student.get("parameters"),
                       latency_samples=opts.latency_samples, speed_samples=opts.speed_samples,
                       device_cost_per_hour=opts.device_cost_per_hour,
                       rss_baseline=rss_before, measure=opts.cost)
    ev = CheckpointEval(
        name=label, path=p, meta=meta, split=opts.split, n_samples=len(samples),
        metric_set=meta.info.metric_set, conditions=conditions, patterns=patterns, sweep=sweep,
        seeds=list(opts.seeds), modalities=modalities, protocol=protocol, cost=cost,
        data={"name": ds.info.name, "fingerprint": ds.fingerprint, "source": ds.info.source,
              "path": data_cfg.path, "split_fingerprint": fingerprint(samples),
              "splits": {s: ds.num_rows(s) for s in ds.splits}},
        options=opts, device=str(device), seconds=time.perf_counter() - t0,
        random_missing=random_missing)
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
    if ev.random_missing is not None:
        out["cyin_protocol"] = cyin_protocol(ev)
    return out


def cyin_protocol(ev: CheckpointEval) -> dict[str, Any]:
    """CyIN's evaluation table: ``fixed_subsets`` (kept modalities, named by initials as
    in CyIN, -> metrics; deterministic), and per random protocol (``dataset_rate``,
    ``instance_prob``) the summary of :func:`eval.report.robustness_summary` (per value
    the mean / sample std over seeds, and the average over values)."""
    assert ev.random_missing is not None
    fixed = {"+".join(m[0] for m in ev.modalities): ev.conditions[COMPLETE]}
    for pname, drop in ev.patterns.items():
        kept = [m for m in ev.modalities if m not in drop]
        if kept:
            fixed["+".join(m[0] for m in kept)] = ev.conditions[pname]
    out: dict[str, Any] = {"fixed_subsets": fixed, "seeds": ev.seeds}
    for kind, runs in ev.random_missing.items():
        if runs:
            out[kind] = robustness_summary(runs)
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


def plot_metrics(metric_set: str, have: Sequence[str]) -> list[str]:
    """The metrics a robustness plot shows: the metric set's preferred ones present in
    ``have``, else the first three of ``have``."""
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
        paths.append(robustness_curve({ev.name: rob}, plot_metrics(ev.metric_set, ev.metrics),
                                      out_path=out / "robustness.png"))
    return paths


def default_out_dir(path: Path, split: str) -> Path:
    """Where results go without ``--out``: ``<run>/eval-<split>`` beside ``checkpoint-best``
    (``<parent>/eval-<split>-<name>`` for another checkpoint directory)."""
    if path.name == BEST_DIR:
        return path.parent / f"eval-{split}"
    return path.parent / f"eval-{split}-{path.name}"
