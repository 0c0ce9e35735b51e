"""The training loop of one stage, as a short recipe (after torchtune's recipes).

A :class:`Stage` says what to train (config, items, loss plan, where it goes);
:class:`StageRecipe` trains it: :meth:`~StageRecipe.setup` (the model, frozen heads,
augmented-sample weights, collators, loaders, optimizer, scheduler,
``accelerator.prepare``, the resumed state), :meth:`~StageRecipe.train_epoch`,
:meth:`~StageRecipe.validate`, :meth:`~StageRecipe.save_best` (``checkpoint-best/`` when
the validation metric improves) or, with ``train.average_epochs``,
:meth:`~StageRecipe.update_average` and :meth:`~StageRecipe.save_average` (the mean of the
last epochs' weights), :meth:`~StageRecipe.save_last` (``last/``, for ``--resume``), and
:meth:`~StageRecipe.run` looping over the epochs. The pieces live
beside it: losses in :mod:`students.objective`, batching in :mod:`students.batching`,
checkpoints in :mod:`students.checkpoint`, the run directory in :mod:`students.rundir`.

Every epoch's data order, dropout seed and masks depend only on (seed, epoch), so a
resumed run ends exactly where an unbroken one would.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.logging import get_logger
from torch.utils.data import DataLoader

from students.augment import weigh_augmented
from students.batching import (
    EpochBatchSampler,
    EpochSampler,
    ItemDataset,
    PrivilegedTarget,
    TrainCollator,
    epoch_seed,
    length_batches,
)
from students.checkpoint import BEST_DIR, SELECTION_FILE, disk_full_named, save_checkpoint
from students.collate import Collator, StudentItem
from students.inference import item_text
from students.losses import task_loss
from students.model import StudentModel, build_student
from students.objective import LossPlan, freeze_unused, training_losses
from students.rundir import (
    AUGMENT_WEIGHTS_FILE,
    LAST_DIR,
    STATE_FILE,
    TrainState,
    load_average,
    rng_state_problem,
    save_last,
)
from workbench.config import ConfigError, DistillConfig, TrainConfig
from workbench.data.store import DataInfo
from workbench.io import recover_dir
from workbench.metrics import METRIC_NAMES, compute_metrics, higher_is_better

log = get_logger(__name__)
RNG_SKIPPED = ("%s: %s; it is not unpickled, nothing in it runs. Training goes on: every "
               "epoch reseeds from train.seed, so the run is the same as an unbroken one. A "
               "file nobody but this run wrote should load: check who can write to %s")


@dataclass
class Stage:
    """One model to train: its config, items, loss terms and where it goes."""

    name: str
    """``prompted`` (stage 1) or ``student``."""
    cfg: DistillConfig
    """The run config its checkpoint records (``student.prompted`` says which model); the
    loop reads its ``student`` and ``train`` sections."""
    out_dir: Path
    train_items: list[StudentItem]
    valid_items: list[StudentItem]
    bins: list[float] | None
    plan: LossPlan
    manifest: dict[str, Any]
    valid_batch_size: int = 32
    """Batch size of validation and of weighing the augmented samples (the run's
    ``eval.batch_size``)."""
    privileged: dict[str, PrivilegedTarget] | None = None
    augment: list[StudentItem] | None = None
    """Teacher-augmented train samples (``train.augment``), weighted in
    :meth:`StageRecipe.setup`."""

    @property
    def epochs(self) -> int:
        return self.cfg.train.epochs


SELECT_LOSS = "loss"
"""``train.select_metric=valid_loss``: the unweighted task loss on the validation split."""


def selection_mode(train: TrainConfig, info: DataInfo) -> tuple[str, str]:
    """(metric name without ``valid_``, ``min``/``max``) of ``train.select_metric``,
    checked against the dataset's metric set."""
    metric = train.select_metric.removeprefix("valid_")
    names = (*METRIC_NAMES.get(info.metric_set, ()), SELECT_LOSS)
    if metric not in names:
        raise ConfigError(
            f"train.select_metric={train.select_metric!r} is invalid: dataset "
            f"{info.name!r} uses metric set {info.metric_set!r}, whose metrics are "
            f"{list(names)}; use valid_<one of those>")
    mode = "min" if metric == SELECT_LOSS else ("max" if higher_is_better(metric) else "min")
    if train.select_mode not in ("auto", mode):
        raise ConfigError(
            f"train.select_mode={train.select_mode!r} is invalid: {metric} is better when "
            f"{'larger' if mode == 'max' else 'smaller'}; set train.select_mode=auto")
    return metric, mode


def better(value: float, best: float | None, mode: str) -> bool:
    """Whether ``value`` beats ``best`` (None: nothing yet) in ``mode``; NaN never does."""
    if best is None:
        return True
    if not math.isfinite(value):
        return False
    if not math.isfinite(best):
        return True
    return value > best if mode == "max" else value < best


COLLAPSE_SHARE = 0.9
"""A classifier that gives one class to at least this share of the validation samples
(when gold gives it to fewer) has collapsed towards it."""
COLLAPSE_SPREAD = 0.1
"""A regressor whose predictions' std is below this fraction of gold's has collapsed
towards one score."""


def prediction_spread(preds: np.ndarray, labels: np.ndarray, task: str) -> dict[str, float]:
    """How spread the predictions are against gold: ``top_share`` / ``gold_top_share``
    and ``top_class`` (classification: the most predicted class and the shares it gets
    from the predictions and from gold), or ``pred_std`` / ``gold_std`` (regression)."""
    if task == "classification":
        pred_ids = preds.argmax(-1) if preds.ndim == 2 else preds.astype(int)
        top = int(np.bincount(pred_ids).argmax())
        return {"top_class": top, "top_share": float(np.mean(pred_ids == top)),
                "gold_top_share": float(np.mean(labels.astype(int) == top))}
    return {"pred_std": float(np.std(preds.reshape(-1))), "gold_std": float(np.std(labels))}


def collapse_note(spread: dict[str, float], class_names: list[str]) -> str:
    """A sentence when ``spread`` (:func:`prediction_spread`) says the predictions collapsed
    towards one answer, else ''."""
    if "top_share" in spread:
        share, gold = spread["top_share"], spread["gold_top_share"]
        if share >= COLLAPSE_SHARE and gold < COLLAPSE_SHARE:
            top = int(spread["top_class"])
            name = class_names[top] if top < len(class_names) else str(top)
            return (f"it predicts {name!r} for {100 * share:.0f}% of the validation samples "
                    f"(gold: {100 * gold:.0f}%)")
        return ""
    if spread["pred_std"] < COLLAPSE_SPREAD * spread["gold_std"]:
        return (f"its predictions' std is {spread['pred_std']:.3f} against gold's "
                f"{spread['gold_std']:.3f}")
    return ""


@torch.no_grad()
def validate(model: Any, loader: Any, accelerator: Any, info: DataInfo, task_kind: str = ""
             ) -> tuple[dict[str, float], dict[str, float]]:
    """Metrics of the dataset's metric set on the (prepared) validation loader, plus
    ``loss`` (the unweighted task loss ``task_kind``, when given), and the predictions'
    :func:`prediction_spread`."""
    model.eval()
    preds, labels = [], []
    for batch in loader:
        pred = model(batch).pred.float()
        target = batch["label_class"] if info.task == "classification" else batch["labels"]
        pred, target = accelerator.gather_for_metrics((pred, target))
        preds.append(pred.cpu())
        labels.append(target.cpu())
    pred_t, label_t = torch.cat(preds), torch.cat(labels)
    p, y = pred_t.numpy(), label_t.numpy()
    metrics = compute_metrics(info.metric_set, p, y)
    if task_kind:
        metrics[SELECT_LOSS] = float(task_loss(pred_t, label_t, task_kind))  # type: ignore[arg-type]
    return metrics, prediction_spread(p, y, info.task)


class StageRecipe:
    """Train one :class:`Stage` with ``accelerator``; :meth:`run` returns its
    ``checkpoint-best`` directory."""

    def __init__(self, accelerator: Any, stage: Stage, info: DataInfo, resume: bool) -> None:
        self.accelerator = accelerator
        self.stage = stage
        self.info = info
        self.resume = resume
        self.cfg, self.tc = stage.cfg, stage.cfg.train
        self.best_dir = stage.out_dir / BEST_DIR
        self.last_dir = stage.out_dir / LAST_DIR
        self.state_path = self.last_dir / STATE_FILE
        self.metric, self.mode = selection_mode(self.tc, info)
        self.state = TrainState()
        self.average: dict[str, torch.Tensor] = {}
        """The running mean of the trainable weights (``train.average_epochs``)."""
        if resume:  # a crash between the two renames of a directory swap: take the old one
            if accelerator.is_main_process:
                recover_dir(self.last_dir)
                recover_dir(self.best_dir)
            accelerator.wait_for_everyone()

    def finished_before(self) -> bool:
        """Resuming a stage that already finished: nothing to do."""
        if self.resume and self.state_path.is_file():
            saved = TrainState.load(self.state_path)
            if saved.finished:
                log.info("%s: already finished (%s); using %s", self.stage.name,
                         saved.stop_reason, self.best_dir)
                return True
        return False

    def setup(self) -> None:
        """Model, frozen heads, collators, loaders, optimizer, scheduler, prepared by
        accelerate; the saved state when resuming."""
        from accelerate.utils import set_seed
        from transformers import get_cosine_schedule_with_warmup

        stage, cfg, tc, accelerator = self.stage, self.cfg, self.tc, self.accelerator
        set_seed(tc.seed)
        model = build_student(cfg.student, self.info, stage.bins, device=accelerator.device,
                              methods=list(stage.plan.methods))
        frozen = freeze_unused(model, stage.plan)
        if frozen:
            log.info("%s: frozen (no loss reads them): %s", stage.name, ", ".join(frozen))
        prompted = model.prompt is not None
        train_items = stage.train_items
        item_weights: dict[str, float] | None = None
        if stage.augment:
            # Weighed with the text encoder as built, before any training step.
            item_weights = weigh_augmented(
                model, stage.augment, stage.train_items, bins=stage.bins,
                label_range=self.info.label_range,
                agreement_scale=tc.weighting.agreement_scale, floor=tc.weighting.floor,
                batch_size=stage.valid_batch_size,
                csv_path=stage.out_dir / AUGMENT_WEIGHTS_FILE, name=stage.name,
                accelerator=accelerator)
            train_items = train_items + stage.augment
        base = Collator.for_model(model)
        self.collator = TrainCollator(base, weighting=tc.weighting,
                                      privileged=stage.privileged, drop_descriptions=not prompted,
                                      item_weights=item_weights)
        valid_collator = TrainCollator(Collator.for_model(model), drop_descriptions=not prompted)
        tok = model.tokenizer

        def n_tokens(item: StudentItem) -> int:
            return len(tok(item.sample.text or "", truncation=True,
                           max_length=cfg.student.max_text_len)["input_ids"])

        lengths = [n_tokens(it) for it in train_items] if tc.group_by_length else None
        train_loader, total_steps = self.train_loader_for(train_items, lengths)
        steps_per_epoch = math.ceil(total_steps / stage.epochs)
        valid_loader = self.valid_loader_for(stage.valid_items, valid_collator, n_tokens)
        optimizer = torch.optim.AdamW(model.param_groups(tc.lr, tc.encoder_lr, tc.weight_decay))
        scheduler = get_cosine_schedule_with_warmup(optimizer,
                                                    round(tc.warmup_ratio * total_steps),
                                                    total_steps)
        (self.model, self.optimizer, self.train_loader, self.valid_loader,
         self.scheduler) = accelerator.prepare(model, optimizer, train_loader, valid_loader,
                                               scheduler)
        raw_model: StudentModel = accelerator.unwrap_model(self.model)
        self.raw_model = raw_model
        self.bins = raw_model.bins if raw_model.bin_values is not None else None
        counts = raw_model.parameter_counts()["all"]
        log.info("%s: %d train (%d augmented) / %d valid samples, %d epochs x %d steps, %d "
                 "trainable of %d parameters, selecting on valid_%s (%s)", stage.name,
                 len(train_items), len(stage.augment or []), len(stage.valid_items),
                 stage.epochs, steps_per_epoch, counts.trainable, counts.total, self.metric,
                 self.mode)

        if self.resume and self.state_path.is_file():
            if problem := rng_state_problem(self.last_dir, accelerator.process_index):
                log.warning(RNG_SKIPPED, stage.name, problem, self.last_dir, main_process_only=False)
            accelerator.load_state(str(self.last_dir))
            self.state = TrainState.load(self.state_path)
            self.average = load_average(self.last_dir)
            log.info("%s: resumed after epoch %d (best valid_%s=%s at epoch %d)", stage.name,
                     self.state.epochs_done, self.metric, self.state.best_value,
                     self.state.best_epoch)
        self.want_attn = stage.plan.priv_attn > 0

    def train_loader_for(self, items: list[StudentItem], lengths: list[int] | None
                         ) -> tuple[DataLoader, int]:
        """The training loader (:class:`EpochSampler`: ``train.batch_size`` samples, or
        with ``train.batch_tokens`` as many as fit the budget) and the optimizer steps of
        all epochs (batches of every epoch counted, since a budget's batches vary)."""
        tc, epochs = self.tc, self.stage.epochs
        sampler = EpochSampler(len(items), tc.seed, lengths, tc.batch_size,
                               batch_tokens=tc.batch_tokens)
        if tc.batch_tokens:
            loader = DataLoader(ItemDataset(items), batch_sampler=EpochBatchSampler(sampler),
                                collate_fn=self.collator, num_workers=tc.num_workers)
            return loader, sum(math.ceil(len(sampler.batches(e)) / tc.grad_accum)
                               for e in range(epochs))
        loader = DataLoader(ItemDataset(items), batch_size=tc.batch_size, sampler=sampler,
                            collate_fn=self.collator, num_workers=tc.num_workers)
        return loader, math.ceil(len(loader) / tc.grad_accum) * epochs

    def valid_loader_for(self, items: list[StudentItem], collator: Any,
                         n_tokens: Any) -> DataLoader:
        """Validation batches: in one process, sorted by token count and cut at
        ``eval.batch_size`` x the mean count of tokens (:func:`length_batches`), so they
        pad little; with several processes ``eval.batch_size`` samples (accelerate's
        :meth:`gather_for_metrics` drops the duplicated tail only for equal batches).
        The order does not change the metrics."""
        size, workers = self.stage.valid_batch_size, self.tc.num_workers
        if self.accelerator.num_processes > 1:
            items = sorted(items, key=lambda it: -len(item_text(it)))
            return DataLoader(ItemDataset(items), batch_size=size, shuffle=False,
                              collate_fn=collator, num_workers=workers)
        batches = length_batches([n_tokens(it) for it in items], size)
        return DataLoader(ItemDataset(items), batch_sampler=[b.tolist() for b in batches],
                          collate_fn=collator, num_workers=workers)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One epoch of optimisation; returns the mean of each loss term."""
        from accelerate.utils import set_seed
        from tqdm.auto import tqdm

        stage, tc, accelerator, model = self.stage, self.tc, self.accelerator, self.model
        set_seed(epoch_seed(tc.seed, epoch), device_specific=True)
        streams = ("text", *self.raw_model.modalities)
        masks = {m.name: spec for m in stage.plan.methods
                 if (spec := m.masking(tc.seed, epoch, streams)) is not None}
        if len(masks) > 1:
            raise ConfigError(f"methods {sorted(masks)} all mask the training batches; "
                              "switch all but one off")
        for spec in masks.values():
            self.collator.set_masking(spec)
        self.train_loader.set_epoch(epoch)
        model.train()
        sums: dict[str, float] = {}
        n_batches = 0
        bar = tqdm(self.train_loader, desc=f"{stage.name} epoch {epoch + 1}/{stage.epochs}",
                   # None: tqdm's own rule, no bar where stderr is not a terminal (a log)
                   disable=None if accelerator.is_local_main_process else True, leave=False,
                   dynamic_ncols=True, mininterval=1.0)
        for step, batch in enumerate(bar):
            with accelerator.accumulate(model):
                rng = np.random.default_rng([tc.seed, epoch, step, accelerator.process_index, 2])
                losses = training_losses(model, batch, stage.plan, self.bins,
                                         want_attn=self.want_attn, rng=rng,
                                         raw_model=self.raw_model)
                accelerator.backward(losses["total"])
                if accelerator.sync_gradients:
                    if tc.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(model.parameters(), tc.max_grad_norm)
                    self.state.global_step += 1
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            n_batches += 1
            bar.set_postfix(loss=f"{sums['total'] / n_batches:.4f}")
        bar.close()
        return {k: v / max(1, n_batches) for k, v in sums.items()}

    def validate(self) -> dict[str, float]:
        """Validation metrics (the dataset's metric set, and ``loss``) of the model as it
        is now; the predictions' spread is kept for :meth:`save_best`."""
        metrics, self.spread = validate(self.model, self.valid_loader, self.accelerator,
                                        self.info, self.stage.plan.task_kind)
        return metrics

    def save_best(self, epoch: int, valid: dict[str, float]) -> bool:
        """``checkpoint-best/`` when ``valid`` improves the selection metric; whether it
        did."""
        state = self.state
        if self.tc.average_epochs:  # the average is the checkpoint (save_average)
            return False
        value = valid[self.metric]
        improved = better(value, state.best_value, self.mode)
        if improved:
            state.best_value, state.best_epoch, state.bad_epochs = value, epoch + 1, 0
            self.write_best(epoch, valid)
        else:
            state.bad_epochs += 1
        return improved

    def write_best(self, epoch: int, valid: dict[str, float], **record: Any) -> None:
        """The model as it is now into ``checkpoint-best/``, its ``selection.json`` saying
        how it was chosen (``valid``, the spread, ``record``'s extra fields)."""
        accelerator = self.accelerator
        selection = {"split": "valid", "metric": f"valid_{self.metric}", "mode": self.mode,
                     "epoch": epoch + 1, "value": valid[self.metric], **record,
                     "metrics": {f"valid_{k}": v for k, v in valid.items()},
                     "spread": self.spread, "stage": self.stage.name}
        full_sd = {k: v for k, v in accelerator.get_state_dict(self.model).items()
                   if not k.startswith(self.raw_model.training_only_prefixes())}
        if accelerator.is_main_process:
            save_checkpoint(self.raw_model, self.cfg, self.best_dir, selection=selection,
                            teacher_manifest=self.stage.manifest, state_dict=full_sd)
        accelerator.wait_for_everyone()

    def update_average(self, epoch: int) -> None:
        """Add this epoch's trainable weights to the running mean when the epoch is one of
        the last ``train.average_epochs`` (the frozen ones are the same every epoch). Reads
        the unwrapped model's parameters: one process or DDP, not sharded (FSDP) ones."""
        n = self.tc.average_epochs
        if not n or epoch < self.stage.epochs - n:
            return
        k = self.state.averaged
        for name, p in self.raw_model.named_parameters():
            if p.requires_grad:
                now = p.detach().float().cpu()
                self.average[name] = now.clone() if k == 0 else (
                    self.average[name] + (now - self.average[name]) / (k + 1))
        self.state.averaged = k + 1

    def save_average(self, epoch: int) -> None:
        """Load the weight average into the model, validate it and write it as
        ``checkpoint-best/`` (``selection.json`` names the averaged epochs)."""
        first = epoch + 2 - self.state.averaged
        with torch.no_grad():
            for name, p in self.raw_model.named_parameters():
                if name in self.average:
                    p.copy_(self.average[name].to(device=p.device, dtype=p.dtype))
        valid = self.validate()
        self.state.best_value, self.state.best_epoch = valid[self.metric], epoch + 1
        self.write_best(epoch, valid, averaged_epochs=[first, epoch + 1])
        log.info("%s: weights averaged over epochs %d-%d: valid %s", self.stage.name, first,
                 epoch + 1, " ".join(f"{k}={v:.4f}" for k, v in valid.items()))

    def end_epoch(self, epoch: int, train_losses: dict[str, float], valid: dict[str, float],
                  improved: bool, seconds: float) -> None:
        """Record the epoch (history, trackers, the log line) and apply the stop rules."""
        stage, state, tc = self.stage, self.state, self.tc
        state.history.append({"epoch": epoch + 1, "train": train_losses,
                              "valid": {f"valid_{k}": v for k, v in valid.items()},
                              "lr": [g["lr"] for g in self.optimizer.param_groups],
                              "seconds": seconds, "best": improved})
        self.accelerator.log({**{f"{stage.name}/train_{k}": v for k, v in train_losses.items()},
                              **{f"{stage.name}/valid_{k}": v for k, v in valid.items()}},
                             step=epoch + 1)
        log.info("%s epoch %d/%d (%.0fs): train loss %.4f | valid %s%s", stage.name, epoch + 1,
                 stage.epochs, seconds, train_losses.get("total", float("nan")),
                 " ".join(f"{k}={v:.4f}" for k, v in valid.items()),
                 " *best*" if improved else "")
        state.epochs_done = epoch + 1
        if tc.early_stop_patience and state.bad_epochs >= tc.early_stop_patience:
            state.finished, state.stop_reason = True, (
                f"early stop: no better valid_{self.metric} for {state.bad_epochs} epochs")
        elif state.epochs_done >= stage.epochs:
            state.finished, state.stop_reason = True, f"all {stage.epochs} epochs"

    def save_last(self) -> None:
        """The accelerate state and :class:`TrainState` into ``last/`` (a full disk ends the
        run with one :class:`~students.checkpoint.DiskFullError`)."""
        kept = ("the last/ already there is left as it was" if self.last_dir.exists()
                else "nothing was left in last/")
        with disk_full_named(self.last_dir, "the state --resume continues from",
                             f"{self.best_dir} is complete and {kept}. Free space on that "
                             "disk and continue the run with --resume"):
            save_last(self.accelerator, self.last_dir, self.state, self.average)

    def run(self) -> Path:
        """Set up, train every remaining epoch (validate, save) and return
        ``checkpoint-best``'s path."""
        if self.finished_before():
            return self.best_dir
        self.setup()
        for epoch in range(self.state.epochs_done, self.stage.epochs):
            t0 = time.perf_counter()
            train_losses = self.train_epoch(epoch)
            valid = self.validate()
            improved = self.save_best(epoch, valid)
            self.end_epoch(epoch, train_losses, valid, improved, time.perf_counter() - t0)
            self.update_average(epoch)
            if self.state.finished and self.tc.average_epochs:
                self.save_average(epoch)
            self.save_last()
            if self.state.finished and self.state.stop_reason.startswith("early"):
                log.info("%s: %s", self.stage.name, self.state.stop_reason)
                break
        if not self.tc.average_epochs:
            log.info("%s: best valid_%s=%.4f at epoch %d -> %s", self.stage.name, self.metric,
                     float("nan") if self.state.best_value is None else self.state.best_value,
                     self.state.best_epoch, self.best_dir)
        self.warn_collapse()
        self.accelerator.free_memory()
        return self.best_dir

    def warn_collapse(self) -> None:
        """Warn when the selected checkpoint's validation predictions collapsed towards one
        answer (:func:`selected_collapse`), saying what to try."""
        note = selected_collapse(self.best_dir, self.info.class_names)
        if note and self.accelerator.is_main_process:
            log.warning(
                "%s: the selected checkpoint (epoch %d) may have collapsed: %s. With few "
                "validation samples selection is noisy: try train.select_metric=valid_loss, "
                "cross-validation (train.folds=5), more epochs, or a lower train.lr",
                self.stage.name, self.state.best_epoch, note)


def selected_collapse(best_dir: Path, class_names: list[str]) -> str:
    """:func:`collapse_note` of the checkpoint in ``best_dir`` (its ``selection.json``
    spread); '' when it did not collapse or records no spread."""
    sel = best_dir / SELECTION_FILE
    spread = json.loads(sel.read_text()).get("spread") if sel.is_file() else None
    return collapse_note(spread, class_names) if spread else ""


def fit(accelerator: Any, stage: Stage, info: DataInfo, resume: bool) -> Path:
    """Train one stage; returns its ``checkpoint-best`` directory."""
    return StageRecipe(accelerator, stage, info, resume).run()
