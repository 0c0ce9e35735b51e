"""The teacher as a predictor: one soft-label job of a cache scored against gold on a split.

:func:`score_teacher` joins the split's samples to the job through the join training uses
(:func:`workbench.cache.join.teacher_view`: the cache must have been made from this data,
or from the whole dataset a ``data.subset`` was cut from; the template / teacher / job as
named; every ok soft label a distribution; a template that showed the gold label refused
for valid / test). A sample's prediction is the argmax of its soft label (classification;
the bins are the classes in order) or its expected score (regression). Two rows:

- ``teacher (answered n/N)``: the metrics on the ``n`` samples with an ok answer only;
- ``teacher (unanswered = majority class)`` (regression: ``... = train mean``): every
  sample of the split, the unanswered ones predicted as the majority class of train (the
  train mean), so the row is comparable with a student's.

The answer rate is answered / samples of the split (``meta.asked``: how many of them the
job planned); what the unanswered were is counted:
``error: <kind>`` (the teacher failed; the latest error row), ``pending`` (planned, never
answered) and ``not asked`` (the job did not plan the sample, e.g. a cache of the train
split reported on test). The result is a :class:`eval.references.ReferenceTable`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eval.data import labels_of, load_data, split_samples, train_samples
from eval.options import EvalError
from eval.references import ReferenceTable, data_summary
from workbench.cache.join import TeacherView, teacher_view
from workbench.cache.store import DB_FILE, CacheError, CacheStore
from workbench.config import DataConfig
from workbench.data import MSADataset
from workbench.data.schema import Sample
from workbench.data.store import DataInfo
from workbench.metrics import compute_metrics


@dataclass
class TeacherEvalOptions:
    """Which job of a cache to score, and on which split (``workbench eval-teacher``)."""

    split: str = "test"
    template: str = ""
    """The job's template; "" when the cache has soft labels of one template for the data."""
    teacher: str = ""
    """The job's teacher model id (with or without ``@revision``); "": any."""
    job: str = ""
    """A job id (``workbench cache status`` lists them); wins over template and teacher."""


def _soft_label_templates(cache_dir: Path, ds: MSADataset, teacher: str) -> list[str]:
    prints = {ds.fingerprint, ds.info.whole_fingerprint} - {""}
    with CacheStore(cache_dir, create=False) as store:
        jobs = store.jobs()
    return sorted({j["template"] for j in jobs if j.get("output") == "soft_label"
                   and j["data_fingerprint"] in prints
                   and (not teacher or j["teacher"].split("@")[0] == teacher.split("@")[0])})


def pick_template(cache_dir: Path, ds: MSADataset, opts: TeacherEvalOptions) -> str:
    """The template to score: the one given, else the cache's one soft-label template for
    this data (none or several: an error naming what there is)."""
    if opts.template or opts.job:
        return opts.template
    found = _soft_label_templates(cache_dir, ds, opts.teacher)
    if len(found) == 1:
        return found[0]
    if not found:
        raise EvalError(f"cache {cache_dir} has no soft-label job for dataset {ds.info.name!r} "
                        f"(fingerprint {ds.fingerprint}){' and teacher ' + opts.teacher if opts.teacher else ''}; "
                        "`workbench cache status` lists its jobs; score one with --template / "
                        "--job, or fill it with `workbench cache run` on this data")
    raise EvalError(f"cache {cache_dir} has soft labels of several templates for this data "
                    f"({', '.join(found)}); name one with --template")


def open_view(cache_dir: Path, ds: MSADataset, samples: Sequence[Sample],
              opts: TeacherEvalOptions) -> TeacherView:
    """The job's ok outputs for ``samples`` (:func:`teacher_view`), a soft-label job."""
    if not (cache_dir / DB_FILE).is_file():
        raise EvalError(f"no teacher cache at {cache_dir} (no {DB_FILE}); name the directory "
                        "`workbench cache run` filled (its cache.dir)")
    template = pick_template(cache_dir, ds, opts)
    try:
        view = teacher_view(cache_dir, {s.id: s.split for s in samples}, ds.fingerprint,
                            template=template, teacher=opts.teacher, job=opts.job,
                            whole_fingerprint=ds.info.whole_fingerprint)
    except CacheError as e:
        raise EvalError(str(e)) from None
    if view.job.get("output") != "soft_label":
        raise EvalError(f"cache {cache_dir} job {view.job['job']} (template "
                        f"{view.job['template']!r}) stores {view.job.get('output')!r} outputs, "
                        "no soft labels; score a soft-label job (--template / --job)")
    return view


def unanswered_reasons(cache_dir: Path, job: str, missing: Sequence[str]) -> dict[str, int]:
    """Why each unanswered sample has no answer: ``error: <kind>``, ``pending``, ``not asked``."""
    with CacheStore(cache_dir, create=False) as store:
        keys = store.sample_keys(job)
        current = store.current(job)
    why: Counter[str] = Counter()
    for sid in missing:
        if sid not in keys:
            why["not asked"] += 1
            continue
        out = current.get(keys[sid][1])
        why["pending" if out is None else f"error: {out.status}" if not out.ok
            else "no soft label"] += 1
    return dict(sorted(why.items()))


def teacher_predictions(view: TeacherView, ids: Sequence[str], info: DataInfo) -> np.ndarray:
    """Argmax class ids (classification) or expected scores (regression) for ``ids``."""
    if info.task == "classification":
        k = len(info.class_names)
        bins = {len(view.outputs[i].soft_label.probs) for i in ids}
        if bins != {k}:
            raise EvalError(f"cache {view.cache_dir} job {view.job['job']}: its soft labels "
                            f"have {sorted(bins)} bins, dataset {info.name!r} {k} classes "
                            f"{info.class_names}; score a job made on this data's classes")
        return np.array([int(np.argmax(view.outputs[i].soft_label.probs)) for i in ids])
    return np.array([float(view.outputs[i].soft_label.expected) for i in ids])


def _fallback(info: DataInfo, train: Sequence[Sample]) -> tuple[str, float | int]:
    y = labels_of(train, info)
    if info.task == "classification":
        k = int(np.bincount(y, minlength=len(info.class_names)).argmax())
        return f"majority class ({info.class_names[k]})", k
    return "train mean", float(np.mean(y))


def _rows(view: TeacherView, samples: Sequence[Sample], info: DataInfo,
          train: Sequence[Sample]) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    answered = [s.id for s in samples if s.id in view.outputs]
    if not answered:
        return {}, {}, answered
    labels = labels_of(samples, info)
    preds = teacher_predictions(view, answered, info)
    mask = np.array([s.id in view.outputs for s in samples])
    fill_name, fill = _fallback(info, train)
    full = np.full(len(samples), fill, dtype=np.int64 if info.task == "classification"
                   else np.float64)
    full[mask] = preds
    n, total = len(answered), len(samples)
    a_name = f"teacher (answered {n}/{total})"
    f_name = f"teacher (unanswered = {fill_name.split(' (')[0]})"
    rows = {a_name: compute_metrics(info.metric_set, preds, labels[mask]),
            f_name: compute_metrics(info.metric_set, full, labels)}
    about = {a_name: {"kind": "teacher", "samples": "answered only", "n": n},
             f_name: {"kind": "teacher", "samples": f"all; unanswered predicted as {fill_name}",
                      "fill": fill, "n": total}}
    return rows, about, answered


def score_teacher(cache_dir: str | Path, data: DataConfig, opts: TeacherEvalOptions,
                  datasets: dict[str, MSADataset] | None = None) -> ReferenceTable:
    """The teacher's rows of the module docstring on ``opts.split`` of ``data``.

    Raises :class:`EvalError` for a missing split, a cache from other data, a missing or
    ambiguous job, or a split the job answered nothing of; :class:`workbench.data.DataError`
    for unlabelled samples."""
    t0 = time.perf_counter()
    cache = Path(cache_dir)
    ds = load_data(data, "--data", cache, datasets)
    info = ds.info
    samples = split_samples(ds, opts.split, info)
    train = train_samples(ds, "unanswered samples are predicted as its majority class / mean")
    view = open_view(cache, ds, samples, opts)
    rows, about, answered = _rows(view, samples, info, train)
    missing = [s.id for s in samples if s.id not in view.outputs]
    reasons = unanswered_reasons(cache, view.job["job"], missing)
    if not rows:
        raise EvalError(f"cache {cache} job {view.job['job']} ({view.job['template']}, "
                        f"teacher {view.job['teacher']}) answered none of the {len(samples)} "
                        f"{opts.split!r} samples ({reasons}); fill it for that split "
                        f"(`workbench cache run ... --splits {opts.split}`) or report another")
    asked = len(samples) - reasons.get("not asked", 0)
    meta = {"cache": str(cache), "job": view.job, "answered": len(answered),
            "samples": len(samples), "asked": asked,
            "answer_rate": len(answered) / len(samples), "unanswered": reasons,
            "seconds": time.perf_counter() - t0}
    return ReferenceTable(title="teacher", metric_set=info.metric_set, split=opts.split,
                          n_samples=len(samples), data=data_summary(data, ds, samples),
                          rows=rows, about=about, meta=meta)
