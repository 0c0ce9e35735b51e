"""The distillation training loop, on ``accelerate``.

``train(cfg)`` is what ``accelerate launch distill.py --config ...`` runs:

1. **Checks before any work.** The output directory must be new (or ``--resume`` /
   ``train.overwrite``); the selection metric must exist in the dataset's metric set; the
   teacher cache (``signals.cache_dir``) must have been made from this very data
   (fingerprint), with the templates and teacher the config names, and hold enough ok
   answers (``signals.min_ok_fraction``); outputs of a template that showed the gold label
   are refused for valid samples (:func:`workbench.cache.join.teacher_view`).
2. **Stage 1** (``train.privileged.enabled``): the prompted network -- the student
   architecture plus a branch reading the teacher's cached descriptions -- is trained on
   gold labels into ``<output_dir>/prompted/`` (or ``train.privileged.checkpoint`` is
   reused). Its outputs on the training samples (prediction, fused representation,
   fusion attention) are computed once, frozen, from complete inputs.
3. **Stage 2** (or the only stage): the plain student trains on gold labels (task loss),
   the teacher's soft labels (KL over the label bins + expected-score loss), privileged KD
   from the prompted network, optionally per-modality auxiliary heads; with quality-aware
   sample weights (``train.weighting``) and, with ``train.augment``, teacher-augmented
   samples (:mod:`students.augment`). The plain student's batches carry no descriptions.
   The methods the config switches on (:mod:`students.methods`, one config object each,
   off by default) read the train split first (their ``prepare`` hook), then act in the
   model, the batches' masks and the loss through their hooks.

The loop: AdamW with two learning rates (``encoder_lr`` for the text encoder, ``lr`` for
the rest), linear warmup then cosine decay, gradient accumulation and clipping and mixed
precision through the :class:`accelerate.Accelerator`, so the same code runs on one CPU,
several GPUs (DDP) or FSDP, as the ``accelerate launch`` config says
(``configs/accelerate/``).

Model selection uses the validation split only (``train.select_metric``); the test split
is never read. After each epoch: validation metrics, ``checkpoint-best/`` when they
improve (:mod:`students.checkpoint`), then the full accelerate state in ``last/`` so
``--resume`` continues a stopped run. Every epoch's data order, dropout seed and masks
depend only on (seed, epoch), so a resumed run ends exactly where an unbroken one would.

This module assembles the stages; the pieces live beside it: the teacher signals
(:mod:`students.signals`), batching (:mod:`students.batching`), the loss plan and terms
(:mod:`students.objective`), the run directory (:mod:`students.rundir`), stage 1
(:mod:`students.privileged`) and the loop of one stage (:mod:`students.recipe`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from accelerate.logging import get_logger

from students.batching import PrivilegedTarget
from students.collate import StudentItem, TeacherSignal
from students.folds import fold_split
from students.methods import active
from students.objective import plan_losses
from students.privileged import privileged_stage
from students.recipe import Stage, fit, selection_mode
from students.rundir import RUN_CONFIG, TrainError, flatten_config, prepare_output_dir
from students.signals import (
    TeacherSignals,
    apply_control,
    description,
    join_augmented,
    join_signals,
    report_teacher_quality,
    soft_signal,
    teacher_output,
    with_description,
)
from workbench.config import ConfigError, DistillConfig, dump_config, to_dict
from workbench.data import MSADataset, Sample, load_dataset, require_labels
from workbench.data.domains import domain_names, sample_domain
from workbench.data.lengths import warn_truncation
from workbench.data.store import DataInfo

__all__ = ["Stage", "TrainError", "train"]

log = get_logger(__name__)


def train(cfg: DistillConfig, resume: bool = False) -> Path:
    """Run the distillation the config describes; returns ``checkpoint-best``'s path.

    ``resume`` continues the run in ``train.output_dir`` from its last finished epoch
    (the config must be the one it started with).
    """
    threads = torch.get_num_threads()
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    try:
        return _run(cfg, resume)
    finally:
        torch.set_num_threads(threads)


def _make_accelerator(cfg: DistillConfig) -> Any:
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    log_with = None
    if cfg.train.log_with == "tensorboard":
        from accelerate.utils import is_tensorboard_available

        if not is_tensorboard_available():
            raise TrainError("train.log_with=tensorboard needs the tensorboard package, which "
                             "is not installed here: pip install tensorboard, or set "
                             "train.log_with=none")
        log_with = "tensorboard"
    out = Path(cfg.train.output_dir)
    return Accelerator(
        mixed_precision=cfg.train.mixed_precision,
        gradient_accumulation_steps=cfg.train.grad_accum,
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=str(out),
                                            logging_dir=str(out / "logs")),
    )


def _check_splits(ds: MSADataset) -> None:
    for split in ("train", "valid"):
        if split not in ds.splits or ds.num_rows(split) == 0:
            raise TrainError(
                f"dataset {ds.info.name!r} has no {split!r} samples (splits: "
                f"{ {s: ds.num_rows(s) for s in ds.splits} }); training needs train and valid "
                "splits (selection uses valid only): map your split names with "
                "data.split_names")


def _check_labels(samples: list[Sample], info: DataInfo, split: str) -> None:
    require_labels(samples, info.task, dataset=info.name, split=split,
                   why="validation metrics need every label")


def _held_in(cfg: DistillConfig, info: DataInfo, samples: list[Sample], split: str
             ) -> list[Sample]:
    """``samples`` without those of ``train.holdout_domain`` (all of them when unset)."""
    held = cfg.train.holdout_domain
    if not held:
        return samples
    if not cfg.data.domain:
        raise ConfigError(f"train.holdout_domain={held!r} is invalid without domains: set "
                          "data.domain (name, column:COL or source:N)")
    kept = [s for s in samples if sample_domain(s, cfg.data.domain, info.name) != held]
    if len(kept) == len(samples):
        found = domain_names(samples, cfg.data.domain, info.name)
        raise ConfigError(f"train.holdout_domain={held!r} is invalid: no {split} sample of "
                          f"dataset {info.name!r} has that domain (data.domain="
                          f"{cfg.data.domain!r} gives {found}); name one of them")
    if not kept:
        raise TrainError(f"train.holdout_domain={held!r} leaves no {split} sample; every "
                         f"{split} sample of {info.name!r} is in that domain")
    logging.getLogger(__name__).info("holding out domain %r: %d of %d %s samples left", held,
                                     len(kept), len(samples), split)
    return kept


SMALL_VALID = 100
"""Below this many validation samples, selecting on a rate (F1, accuracy) is noisy."""


def _warn_small_valid(cfg: DistillConfig, n_valid: int) -> None:
    """Warn when a few dozen validation samples select on a metric that jumps by whole
    samples (the small-data recipes average the last epochs instead, or cross-validate)."""
    metric = cfg.train.select_metric
    if (n_valid >= SMALL_VALID or cfg.train.average_epochs
            or metric in ("valid_loss", "valid_mae", "valid_corr")):
        return
    log.warning("selecting on %s over %d validation samples: one sample moves it by about "
                "%.1f points, so the chosen epoch is partly luck; train.average_epochs=5 "
                "(with train.early_stop_patience=0) averages the last epochs instead, "
                "train.select_metric=valid_loss moves smoothly, and train.folds=5 validates "
                "on a fifth of train + valid (configs/distill/*_small_*.yaml average)", metric, n_valid,
                100 / max(n_valid, 1))


def _set_domains(items: list[StudentItem], spec: str, dataset: str) -> None:
    """Each item's domain index (sorted domain names), in the batch's ``domain`` (what a
    method that compares domains reads)."""
    names = domain_names([it.sample for it in items], spec, dataset)
    index = {d: i for i, d in enumerate(names)}
    for it in items:
        it.domain = index.get(sample_domain(it.sample, spec, dataset), -1)
    logging.getLogger(__name__).info("domains (%s): %s", spec, ", ".join(names))


def _items(signals: TeacherSignals, train_samples: list[Sample], valid_samples: list[Sample],
           *, prompted: bool) -> tuple[list[StudentItem], list[StudentItem]]:
    """The train items (their soft labels; a prompted network's also their descriptions)
    and the valid items (a prompted network's with their descriptions)."""
    if prompted:
        train = [StudentItem(s, with_description(
            soft_signal(teacher_output(signals.soft, s.id)),
            description(signals.descriptions, s.id))) for s in train_samples]
        valid = [StudentItem(s, TeacherSignal(description=description(signals.descriptions,
                                                                       s.id)))
                 for s in valid_samples]
        return train, valid
    train = [StudentItem(s, soft_signal(teacher_output(signals.soft, s.id)))
             for s in train_samples]
    return train, [StudentItem(s) for s in valid_samples]


def _run(cfg: DistillConfig, resume: bool) -> Path:
    accelerator = _make_accelerator(cfg)
    out = Path(cfg.train.output_dir)
    prepare_output_dir(cfg, out, resume, accelerator)
    ds = load_dataset(cfg.data)
    info = ds.info
    selection_mode(cfg.train, info)
    _check_splits(ds)
    if cfg.student.prompted and not (cfg.signals.cache_dir and cfg.signals.description_template):
        raise ConfigError("student.prompted=true is invalid without descriptions: set "
                          "signals.cache_dir and signals.description_template, or use "
                          "train.privileged.enabled=true to train it as stage 1")
    privileged = cfg.train.privileged.enabled
    train_samples = _held_in(cfg, info, ds.samples("train"), "train")
    valid_samples = _held_in(cfg, info, ds.samples("valid"), "valid")
    tc = cfg.train
    if tc.folds:
        train_samples, valid_samples = fold_split(
            train_samples, valid_samples, folds=tc.folds, fold=tc.fold, seed=tc.fold_seed,
            classification=info.task == "classification")
        log.info("train.folds=%d: fold %d validates (%d samples), the other %d folds train "
                 "(%d)", tc.folds, tc.fold, len(valid_samples), tc.folds - 1,
                 len(train_samples))
    _check_labels(valid_samples, info, "valid")
    _warn_small_valid(cfg, len(valid_samples))
    signals = join_signals(cfg.signals, ds, descriptions=privileged or cfg.student.prompted,
                           train_ids=[s.id for s in train_samples],
                           valid_ids=[s.id for s in valid_samples])
    warn_truncation(cfg.student, {"train": train_samples, "valid": valid_samples})
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if not resume:
            dump_config(cfg, out, RUN_CONFIG)
    accelerator.wait_for_everyone()
    if cfg.train.log_with != "none":
        accelerator.init_trackers(out.name or "distill",
                                  config={k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                          for k, v in flatten_config(to_dict(cfg)).items()})
    manifest = signals.manifest()
    augment: list[StudentItem] | None = None
    if cfg.train.augment.enabled:
        augment, manifest["augment"] = join_augmented(cfg.signals, cfg.train.augment, ds, signals)
    try:
        priv_targets: dict[str, PrivilegedTarget] | None = None
        plan = plan_losses(cfg.loss, cfg.data, task_kind=tc.task_loss,
                           methods=active(cfg.student, tc), soft_labels=signals.soft is not None,
                           privileged=tc.privileged if privileged else None)
        for method in plan.methods:
            method.prepare(train_samples, info)
        if privileged:
            priv_targets, priv_manifest = privileged_stage(
                accelerator, cfg, ds, signals, plan, train_samples, valid_samples, out, resume)
            manifest = {**manifest, "privileged": priv_manifest}
        else:
            manifest = {**manifest, "privileged": None}
        train_items, valid_items = _items(signals, train_samples, valid_samples,
                                          prompted=cfg.student.prompted)
        if cfg.signals.control == "none":
            report_teacher_quality(train_items, info.task == "classification", signals.bins)
        apply_control(train_items, cfg.signals.control, tc.seed, signals.bins)
        if cfg.data.domain:
            _set_domains(train_items, cfg.data.domain, info.name)
        stage = Stage(name="prompted" if cfg.student.prompted else "student", cfg=cfg,
                      out_dir=out, train_items=train_items, valid_items=valid_items,
                      bins=signals.bins, plan=plan, manifest=manifest,
                      valid_batch_size=cfg.eval.batch_size, privileged=priv_targets,
                      augment=augment)
        best = fit(accelerator, stage, info, resume)
    finally:
        accelerator.end_training()
    return best
