"""Teacher signals: the cached teacher outputs a run joins to its samples.

:func:`join_signals` reads the soft labels (train split) and, for a prompted network, the
descriptions (train and valid) from ``signals.cache_dir``, refusing a cache made from other
data, with another template or teacher, with too few ok rows, or holding gold-label
outputs for valid samples (:func:`workbench.cache.join.teacher_view`).
:func:`join_augmented` does the same for the teacher-augmented samples
(``train.augment.data``). The small helpers turn one sample's cached output into the
:class:`students.collate.TeacherSignal` a :class:`students.collate.StudentItem` carries.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from accelerate.logging import get_logger

from students.augment import load_augmented
from students.collate import StudentItem, TeacherSignal
from workbench.cache.join import TeacherView, teacher_view
from workbench.cache.records import TeacherOutput
from workbench.cache.store import DB_FILE, CacheError
from workbench.config import AugmentConfig, ConfigError, SignalsConfig
from workbench.data import MSADataset

log = get_logger(__name__)


@dataclass
class TeacherSignals:
    """The teacher outputs a run joins to its samples."""

    soft: TeacherView | None = None
    """Soft labels on the train samples (``signals.soft_label_template``)."""
    descriptions: TeacherView | None = None
    """Descriptions on the train and valid samples (``signals.description_template``)."""
    bins: list[float] | None = None
    """The soft labels' bin values, in bin order (e.g. -3..3)."""

    def manifest(self) -> dict[str, Any]:
        """What a checkpoint records about them (each job with its ``uses_gold_label``)."""
        out: dict[str, Any] = {}
        for role, view, splits in (("soft_labels", self.soft, ["train"]),
                                   ("descriptions", self.descriptions, ["train", "valid"])):
            out[role] = None if view is None else {**view.manifest(), "splits": splits}
        out["uses_gold_label"] = any(v is not None and v.job.get("uses_gold_label")
                                     for v in (self.soft, self.descriptions))
        return out


def _view(sig: SignalsConfig, ds: MSADataset, template: str, splits: dict[str, str],
          output: str, role: str) -> TeacherView:
    try:
        view = teacher_view(sig.cache_dir, splits, ds.fingerprint, template=template,
                            teacher=sig.teacher, min_ok_fraction=sig.min_ok_fraction,
                            whole_fingerprint=ds.info.whole_fingerprint)
    except CacheError as e:
        raise CacheError(f"{role} (signals.{role}_template={template!r}): {e}") from None
    if view.job.get("output") != output:
        raise CacheError(
            f"signals.{role}_template={template!r}: job {view.job.get('job')} in "
            f"{sig.cache_dir} produced {view.job.get('output')!r} outputs, but the {role} "
            f"need {output!r}; name a template whose output is {output}")
    log.info("teacher %s: %s job %s teacher=%s, ok for %d/%d samples (%.1f%%)", role,
             template, view.job.get("job"), view.job.get("teacher"), len(view.outputs),
             view.n_samples, 100 * view.ok_fraction)
    return view


def join_signals(sig: SignalsConfig, ds: MSADataset, *, descriptions: bool,
                 train_ids: list[str] | None = None, valid_ids: list[str] | None = None
                 ) -> TeacherSignals:
    """Join the dataset's train (and, for descriptions, valid) samples to the cache.

    ``train_ids`` / ``valid_ids``: the samples that train and validate when they are not
    the dataset's own splits (``train.folds``); default: the ``train`` / ``valid`` split.

    Raises :class:`CacheError` with the numbers when the cache is missing, was made
    from other data, with another template or teacher, has too few ok rows, or holds
    gold-label outputs for valid samples. An empty ``signals.cache_dir``: no signals.
    """
    if not sig.cache_dir:
        if descriptions:
            raise ConfigError("signals.cache_dir='' is invalid: the prompted network reads "
                              "the teacher's descriptions; point it at a teacher cache")
        log.info("signals.cache_dir is empty: training on gold labels only")
        return TeacherSignals()
    if not (Path(sig.cache_dir) / DB_FILE).is_file():
        raise CacheError(
            f"signals.cache_dir={sig.cache_dir!r}: no teacher cache there (no {DB_FILE}). "
            f"Fill one with `workbench cache run --cache {sig.cache_dir} ...`, point "
            "signals.cache_dir at an existing cache, or train on gold labels only "
            "(signals.cache_dir='', e.g. the *_gold.yaml recipe)")
    if train_ids is None:
        train_ids = [s.id for s in ds.iter_samples("train")]
    if valid_ids is None:
        valid_ids = [s.id for s in ds.iter_samples("valid")]
    train_split = {sid: "train" for sid in train_ids}
    out = TeacherSignals()
    if sig.soft_label_template:
        out.soft = _view(sig, ds, sig.soft_label_template, train_split, "soft_label",
                         "soft_label")
        values = _bin_sets(out.soft)
        if len(values) > 1:
            raise CacheError(f"soft labels in {sig.cache_dir} use several bin sets "
                             f"{sorted(values)[:3]}; one job must use one scale")
        if values:
            out.bins = [float(v) for v in values.pop()]
    if descriptions:
        splits = {**train_split, **{sid: "valid" for sid in valid_ids}}
        out.descriptions = _view(sig, ds, sig.description_template, splits, "description",
                                 "description")
    return out


def join_augmented(sig: SignalsConfig, augment: AugmentConfig, ds: MSADataset,
                   signals: TeacherSignals) -> tuple[list[StudentItem], dict[str, Any]]:
    """The augmented train samples of ``train.augment.data`` with their soft labels from
    ``signals.cache_dir`` (joined by the augmented data's own fingerprint, the same
    template, teacher and ``min_ok_fraction`` as the main soft labels), and what the
    checkpoint's manifest records about them."""
    data = augment.data
    acfg, ads, samples = load_augmented(data, ds)
    try:
        view = _view(sig, ads, sig.soft_label_template, {s.id: "train" for s in samples},
                     "soft_label", "soft_label")
    except CacheError as e:
        raise CacheError(
            f"train.augment.data={data!r}: the rewrites' soft labels: {e} "
            f"(score them with `workbench cache run --data {acfg.path} ... --template "
            f"{sig.soft_label_template}` into {sig.cache_dir})") from None
    values = _bin_sets(view)
    if signals.bins is not None and values and values != {tuple(signals.bins)}:
        raise CacheError(f"train.augment.data: the rewrites' soft labels use bins "
                         f"{sorted(values)[:2]}, the main data's {signals.bins}; score both "
                         "with the same template")
    log.info("augmented data %s: %d rewrites of %d train samples, soft labels ok for %d "
             "(%.1f%%)", acfg.path, len(samples),
             len({s.meta.get("source_id") for s in samples}), len(view.outputs),
             100 * view.ok_fraction)
    items = [StudentItem(s, soft_signal(view.outputs.get(s.id))) for s in samples]
    manifest = {"data": acfg.path, "fingerprint": ads.fingerprint, "samples": len(samples),
                "soft_labels": view.manifest()}
    return items, manifest


def _bin_sets(view: TeacherView) -> set[tuple[float, ...]]:
    """The distinct bin-value tuples of a view's soft labels (one job: one scale)."""
    return {tuple(float(v) for v in o.soft_label.values) for o in view.outputs.values()
            if o.soft_label is not None}


def teacher_output(view: TeacherView | None, sample_id: str) -> TeacherOutput | None:
    """The view's ok output for the sample (None without a view or an output)."""
    return None if view is None else view.outputs.get(sample_id)


def soft_signal(out: TeacherOutput | None) -> TeacherSignal | None:
    """The soft-label signal of one output (None without an output or a soft label)."""
    if out is None or out.soft_label is None:
        return None
    sl = out.soft_label
    return TeacherSignal(probs=np.asarray(sl.probs, dtype=np.float32), expected=sl.expected,
                         entropy=sl.entropy, off_mass=sl.off_label_mass)


def apply_control(items: list[StudentItem], control: str, seed: int,
                  bins: list[float] | None) -> int:
    """Replace the soft labels of ``items`` in place by ``signals.control``'s (``uniform``:
    the uniform distribution over the bins, whose expected score is the bins' mean;
    ``shuffled``: another item's soft label, a permutation seeded by ``seed``); items
    without one keep none. Returns how many were replaced."""
    have = [it for it in items if it.teacher is not None and it.teacher.probs is not None]
    if control == "none" or not have:
        return 0
    if control == "uniform":
        for it in have:
            t = it.teacher
            n = len(t.probs)
            t.probs = np.full(n, 1.0 / n, dtype=np.float32)
            t.expected = float(np.mean(bins)) if bins else None
            t.entropy, t.off_mass = float(np.log(n)), 0.0
    elif control == "shuffled":
        order = np.random.default_rng([seed, 7]).permutation(len(have))
        fields = [(it.teacher.probs, it.teacher.expected, it.teacher.entropy,
                   it.teacher.off_mass) for it in have]
        for it, j in zip(have, order, strict=True):
            it.teacher.probs, it.teacher.expected, it.teacher.entropy, it.teacher.off_mass = fields[j]
    else:
        raise ValueError(f"signals.control={control!r}: use none, uniform or shuffled")
    log.info("signals.control=%s: replaced the soft labels of %d train samples", control,
             len(have))
    return len(have)


def teacher_quality(items: list[StudentItem], classification: bool,
                    bins: list[float] | None) -> dict[str, float] | None:
    """How well the soft labels on ``items`` predict their gold labels, against the
    label prior of the same items: for classes, the share whose argmax is the gold class
    (``teacher``) and the majority class's share (``prior``); for scores, the MAE of the
    teacher's expected score and of the gold mean. None without soft labels and gold."""
    pairs = [(it.teacher, it.sample) for it in items
             if it.teacher is not None and it.teacher.probs is not None]
    if classification:
        got = [(int(np.argmax(t.probs)), s.label_class) for t, s in pairs
               if s.label_class is not None]
        if not got:
            return None
        gold = np.array([g for _, g in got])
        return {"teacher": float(np.mean([p == g for p, g in got])),
                "prior": float(np.bincount(gold).max() / len(gold)), "n": len(got)}
    got = [(float(t.expected), float(s.label)) for t, s in pairs
           if s.label is not None and t.expected is not None and np.isfinite(t.expected)]
    if not got or not bins:
        return None
    exp, gold = np.array(got).T
    return {"teacher": float(np.mean(np.abs(exp - gold))),
            "prior": float(np.mean(np.abs(gold.mean() - gold))), "n": len(got)}


def report_teacher_quality(items: list[StudentItem], classification: bool,
                           bins: list[float] | None) -> None:
    """Log :func:`teacher_quality` of the train items, as a warning when the teacher does
    no better than the label prior (its soft labels then act as a regulariser at best)."""
    q = teacher_quality(items, classification, bins)
    if q is None:
        return
    if classification:
        worse = q["teacher"] <= q["prior"]
        line = (f"teacher soft labels on {q['n']} train samples: argmax = gold for "
                f"{100 * q['teacher']:.1f}% (the majority class: {100 * q['prior']:.1f}%)")
    else:
        worse = q["teacher"] >= q["prior"]
        line = (f"teacher soft labels on {q['n']} train samples: expected-score MAE "
                f"{q['teacher']:.3f} against gold (the gold mean: {q['prior']:.3f})")
    if worse:
        log.warning("%s: the teacher does no better than the label prior, so its soft "
                    "labels carry no knowledge of these labels; compare with "
                    "signals.control=uniform (the smoothing alone) before trusting a gain",
                    line)
    else:
        log.info("%s", line)


def description(view: TeacherView | None, sample_id: str) -> str:
    """The teacher's description of the sample ('' without a view or an output)."""
    out = teacher_output(view, sample_id)
    return (out.description or "") if out is not None else ""


def with_description(soft: TeacherSignal | None, text: str) -> TeacherSignal:
    """``soft`` (or an empty signal) carrying the description ``text``."""
    base = soft or TeacherSignal()
    base.description = text
    return base
