"""The distillation training loop, on ``accelerate``.

``train(cfg)`` is what ``accelerate launch distill.py --config ...`` runs:

1. **Checks before any work.** The output directory must be new (or ``--resume`` /
   ``train.overwrite``); the selection metric must exist in the dataset's metric set; the
   teacher cache (``signals.cache_dir``) must have been made from this very data
   (fingerprint), with the templates and teacher the config names, and hold enough ok
   answers (``signals.min_ok_fraction``); outputs of a template that showed the gold label
   are refused for valid samples (:func:`workbench.cache.join.teacher_view`).
2. **Stage 1** (``train.privileged: prompted``): the prompted network -- the student
   architecture plus a branch reading the teacher's cached descriptions -- is trained on
   gold labels into ``<output_dir>/prompted/`` (or ``train.prompted_checkpoint`` is
   reused). Its outputs on the training samples (prediction, fused representation,
   fusion attention) are computed once, frozen, from complete inputs.
3. **Stage 2** (or the only stage): the plain student trains on gold labels (task loss),
   the teacher's soft labels (KL over the label bins + expected-score loss), privileged KD
   from the prompted network, optionally per-modality auxiliary heads; with quality-aware
   sample weights (``train.weighting``) and LNLN missing-modality masks
   (``train.missing_train``). The plain student's batches carry no descriptions.
   Robustness and augmentation methods, each a switch that is off by default:
   teacher-augmented samples with quality weights (``train.augment_data``,
   :mod:`students.augment`), MS-Mix (``train.msmix``, :mod:`students.msmix`), the
   conflict-aware gradient penalty and statistical loss (``train.conflict_penalty``,
   :mod:`students.conflict`) and, in the model, cross-sample enhancement of missing
   modalities (``student.enhance``, :mod:`students.enhance`).

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
"""

from __future__ import annotations

import copy
import csv
import json
import math
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from accelerate.logging import get_logger
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from students.augment import (
    augment_weights,
    histogram_text,
    load_augmented,
    rewrite_similarity,
    weight_summary,
)
from students.checkpoint import load_checkpoint, save_checkpoint
from students.collate import Collator, StudentItem, TeacherSignal
from students.conflict import (
    conflict_penalty,
    flatten_grads,
    label_statistics,
    statistical_loss,
)
from students.encoders import Encoded
from students.inference import item_text, to_device
from students.losses import (
    attention_kd,
    expected_score_loss,
    prediction_kd,
    representation_kd,
    soft_label_kd,
    task_loss,
    weighted_mean,
)
from students.model import (
    TRAINING_ONLY_PREFIXES,
    StudentEncoding,
    StudentModel,
    StudentOutput,
    build_student,
)
from students.msmix import (
    draw_pairs,
    gaussian_bins,
    mean_ratio,
    mix_encoded,
    mix_ratios,
    mixed_labels,
    modality_kl,
    select_pairs,
)
from students.robustness import MaskSpec, lnln_train
from students.weighting import batch_weights
from workbench.cache.join import TeacherView, teacher_view
from workbench.cache.records import TeacherOutput
from workbench.cache.store import DB_FILE, CacheError
from workbench.config import ConfigError, DistillConfig, dump_config, to_dict
from workbench.data import MSADataset, Sample, load_dataset
from workbench.data.store import DataInfo
from workbench.errors import WorkbenchError
from workbench.metrics import METRIC_NAMES, compute_metrics, higher_is_better

log = get_logger(__name__)

RUN_CONFIG = "config.yaml"
BEST_DIR = "checkpoint-best"
LAST_DIR = "last"
PROMPTED_DIR = "prompted"
STATE_FILE = "trainer_state.json"
AUGMENT_WEIGHTS_FILE = "augment_weights.csv"
RUN_SUBDIRS = (BEST_DIR, LAST_DIR, PROMPTED_DIR)
RESUME_IGNORED = ("train.overwrite",)
"""Config keys that may differ between a run and its ``--resume``."""


class TrainError(WorkbenchError, RuntimeError):
    """A run cannot start or continue; the message says why and what to do."""


# ------------------------------------------------------------------ teacher signals


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


def _view(cfg: DistillConfig, ds: MSADataset, template: str, splits: dict[str, str],
          output: str, role: str) -> TeacherView:
    sig = cfg.signals
    try:
        view = teacher_view(sig.cache_dir, splits, ds.fingerprint, template=template,
                            teacher=sig.teacher, min_ok_fraction=sig.min_ok_fraction)
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


def join_signals(cfg: DistillConfig, ds: MSADataset, *, descriptions: bool) -> TeacherSignals:
    """Join the dataset's train (and, for descriptions, valid) samples to the cache.

    Raises :class:`CacheError` with the numbers when the cache is missing, was made
    from other data, with another template or teacher, has too few ok rows, or holds
    gold-label outputs for valid samples. An empty ``signals.cache_dir``: no signals.
    """
    sig = cfg.signals
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
    train_ids = {s.id: "train" for s in ds.iter_samples("train")}
    out = TeacherSignals()
    if sig.soft_label_template:
        out.soft = _view(cfg, ds, sig.soft_label_template, train_ids, "soft_label", "soft_label")
        values = _bin_sets(out.soft)
        if len(values) > 1:
            raise CacheError(f"soft labels in {sig.cache_dir} use several bin sets "
                             f"{sorted(values)[:3]}; one job must use one scale")
        if values:
            out.bins = [float(v) for v in values.pop()]
    if descriptions:
        splits = {**train_ids, **{s.id: "valid" for s in ds.iter_samples("valid")}}
        out.descriptions = _view(cfg, ds, sig.description_template, splits, "description",
                                 "description")
    return out


def _bin_sets(view: TeacherView) -> set[tuple[float, ...]]:
    """The distinct bin-value tuples of a view's soft labels (one job: one scale)."""
    return {tuple(float(v) for v in o.soft_label.values) for o in view.outputs.values()
            if o.soft_label is not None}


def _soft_signal(out: TeacherOutput | None) -> TeacherSignal | None:
    if out is None or out.soft_label is None:
        return None
    sl = out.soft_label
    return TeacherSignal(probs=np.asarray(sl.probs, dtype=np.float32), expected=sl.expected,
                         entropy=sl.entropy, off_mass=sl.off_label_mass)


def _description(view: TeacherView | None, sample_id: str) -> str:
    if view is None:
        return ""
    out = view.outputs.get(sample_id)
    return (out.description or "") if out is not None else ""


# ---------------------------------------------------------------------- data plumbing


class ItemDataset(Dataset):
    """A list of :class:`StudentItem` as a map-style dataset."""

    def __init__(self, items: list[StudentItem]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> StudentItem:
        return self.items[i]


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A 32-bit seed that depends only on (seed, epoch, stream)."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0])


class EpochSampler(Sampler[int]):
    """An order of the dataset that depends only on (seed, epoch).

    ``set_epoch`` picks the epoch (accelerate's prepared loader forwards it here), so a
    resumed run sees exactly the order an unbroken run would. With ``lengths`` (text
    lengths) and ``batch_size``, samples are grouped by length: a random permutation is
    cut into groups of ``group`` batches, each group sorted by length and cut into
    batches, and the batches shuffled; the one short batch (if any) comes last, so the
    loader's consecutive batches are exactly these.
    """

    def __init__(self, n: int, seed: int, lengths: Sequence[int] | None = None,
                 batch_size: int = 1, group: int = 50) -> None:
        if lengths is not None and len(lengths) != n:
            raise ValueError(f"lengths has {len(lengths)} entries for {n} samples")
        self.n = n
        self.seed = seed
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.batch_size = batch_size
        self.group = group
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng(epoch_seed(self.seed, self.epoch, stream=1))
        perm = rng.permutation(self.n)
        if self.lengths is None:
            return iter(perm.tolist())
        size = self.batch_size * self.group
        batches: list[np.ndarray] = []
        for start in range(0, self.n, size):
            chunk = perm[start:start + size]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            batches.extend(chunk[i:i + self.batch_size]
                           for i in range(0, len(chunk), self.batch_size))
        full = [b for b in batches if len(b) == self.batch_size]
        short = [b for b in batches if len(b) < self.batch_size]
        order = [full[i] for i in rng.permutation(len(full))] + short
        return iter(np.concatenate(order).tolist() if order else [])


@dataclass
class PrivilegedTarget:
    """The frozen prompted network's outputs for one training sample."""

    pred: Tensor
    """() score or (C,) class logits."""
    fused: Tensor
    """(hidden,) fused representation."""
    attention: dict[str, Tensor] = field(default_factory=dict)
    """Per modality ``m``: ``text_to_<m>`` attention (H, L, K) over the real text tokens."""


class TrainCollator:
    """:class:`students.collate.Collator` plus what the loop needs.

    Adds ``weights`` (per-sample quality weights, computed on the CPU from the teacher
    signals), and with privileged targets ``priv_mask`` (B,), ``priv_pred``,
    ``priv_fused`` (B, h) and ``priv_attn`` (per modality (B, H, L, K)). With
    ``drop_descriptions`` the batch has no ``descriptions`` key at all: what the plain
    student must never see. ``item_weights`` (sample id -> weight) replaces the weight of
    those samples (the augmented ones, weighted once before training); they may also lack
    a privileged target.
    """

    def __init__(self, base: Collator, *, weighting: str = "none", weight_floor: float = 0.1,
                 agreement_scale: float = 0.0,
                 privileged: dict[str, PrivilegedTarget] | None = None,
                 drop_descriptions: bool = True,
                 item_weights: dict[str, float] | None = None) -> None:
        self.base = base
        self.weighting = weighting
        self.weight_floor = weight_floor
        self.agreement_scale = agreement_scale
        self.privileged = privileged
        self.drop_descriptions = drop_descriptions
        self.item_weights = item_weights or {}

    def set_masking(self, masking: MaskSpec | None) -> None:
        self.base.set_masking(masking)

    def __call__(self, items: Sequence[StudentItem]) -> dict[str, Any]:
        batch = self.base(items)
        batch["weights"] = batch_weights(batch, self.weighting, floor=self.weight_floor,
                                         agreement_scale=self.agreement_scale,
                                         label_range=self.base.info.label_range)
        if self.item_weights:
            for b, sid in enumerate(batch["ids"]):
                if sid in self.item_weights:
                    batch["weights"][b] = self.item_weights[sid]
        if self.privileged is not None:
            batch.update(self._privileged(batch))
        if self.drop_descriptions:
            batch.pop("descriptions", None)
        return batch

    def _privileged(self, batch: dict[str, Any]) -> dict[str, Any]:
        ids: list[str] = batch["ids"]
        assert self.privileged is not None
        targets = [self.privileged.get(i) for i in ids]
        have = [t for t in targets if t is not None]
        if not have and (not self.privileged
                         or any(i not in self.item_weights for i in ids)):
            raise ValueError(f"no privileged target for any of {ids[:4]}...; the prompted "
                             "network's outputs were computed for other samples")
        ref = have[0] if have else next(iter(self.privileged.values()))
        mask = torch.tensor([0.0 if t is None else 1.0 for t in targets])
        pred = torch.stack([ref.pred * 0 if t is None else t.pred for t in targets])
        fused = torch.stack([ref.fused * 0 if t is None else t.fused for t in targets])
        out: dict[str, Any] = {"priv_mask": mask, "priv_pred": pred, "priv_fused": fused}
        if ref.attention:
            n_tok = batch["attention_mask"].sum(1).tolist()
            length = batch["attention_mask"].shape[1]
            attn: dict[str, Tensor] = {}
            for m, a in ref.attention.items():
                h, _, k = a.shape
                full = torch.zeros(len(ids), h, length, k)
                for b, t in enumerate(targets):
                    if t is None:
                        continue
                    tm = t.attention[m]
                    if tm.shape[1] != int(n_tok[b]):
                        raise ValueError(
                            f"sample {ids[b]!r}: the prompted network's attention covers "
                            f"{tm.shape[1]} text tokens but the student's tokenizer gives "
                            f"{int(n_tok[b])}; privileged attention KD needs the same text "
                            "encoder and student.max_text_len in both (or set "
                            "loss.privileged_attn=0)")
                    full[b, :, : tm.shape[1]] = tm
                attn[m] = full
            out["priv_attn"] = attn
        return out


# ----------------------------------------------------------------------------- losses


@dataclass(frozen=True)
class LossPlan:
    """Which loss terms a stage computes, with their weights (0: off)."""

    task_kind: str
    classification: bool
    unimodal_aux: float = 0.0
    soft_kd: float = 0.0
    expected: float = 0.0
    temperature: float = 1.0
    priv_pred: float = 0.0
    priv_repr: float = 0.0
    priv_repr_kind: str = "cosine"
    priv_attn: float = 0.0
    msmix: bool = False
    """MS-Mix on (``train.msmix``); its terms: ``msmix_task``, ``msmix_kl``,
    ``msmix_intensity``."""
    msmix_task: float = 0.0
    msmix_kl: float = 0.0
    msmix_intensity: float = 0.0
    msmix_alpha: float = 0.5
    msmix_threshold: float = 0.3
    conflict: bool = False
    """Conflict-aware penalty + statistical loss on (``train.conflict_penalty``)."""
    conflict_weight: float = 0.0
    conflict_tau: float = 1.5
    statistical: float = 0.0
    label_stats: tuple[float, ...] | None = None
    """Gold-label statistics of the train split (mean, std; or class frequencies)."""
    label_range: tuple[float, float] = (-3.0, 3.0)

    @property
    def uses_bins(self) -> bool:
        return self.soft_kd > 0 or self.expected > 0

    @property
    def uses_privileged(self) -> bool:
        return self.priv_pred > 0 or self.priv_repr > 0 or self.priv_attn > 0

    @property
    def needs_encoding(self) -> bool:
        return self.msmix or self.conflict


def plan_losses(cfg: DistillConfig, *, soft_labels: bool, privileged: bool,
                label_stats: tuple[float, ...] | None = None) -> LossPlan:
    """The loss terms of a stage: teacher terms only where their signal exists; the
    method terms only with their switch (``train.msmix``, ``train.conflict_penalty``).
    ``label_stats``: :func:`students.conflict.label_statistics` of the train split (the
    statistical loss needs them)."""
    lc, tc = cfg.loss, cfg.train
    classification = cfg.data.task == "classification"
    return LossPlan(
        task_kind=cfg.train.task_loss, classification=classification,
        unimodal_aux=lc.unimodal_aux,
        soft_kd=lc.soft_label_kd if soft_labels else 0.0,
        expected=lc.expected_score if soft_labels and not classification else 0.0,
        temperature=lc.temperature,
        priv_pred=lc.privileged_pred if privileged else 0.0,
        priv_repr=lc.privileged_repr if privileged else 0.0,
        priv_repr_kind=lc.privileged_repr_kind,
        priv_attn=lc.privileged_attn if privileged else 0.0,
        msmix=tc.msmix,
        msmix_task=lc.msmix if tc.msmix else 0.0,
        msmix_kl=lc.msmix_kl if tc.msmix else 0.0,
        msmix_intensity=lc.msmix_intensity if tc.msmix else 0.0,
        msmix_alpha=tc.msmix_alpha,
        msmix_threshold=tc.msmix_threshold,
        conflict=tc.conflict_penalty,
        conflict_weight=lc.conflict if tc.conflict_penalty else 0.0,
        conflict_tau=lc.conflict_tau,
        statistical=lc.statistical if tc.conflict_penalty else 0.0,
        label_stats=label_stats,
        label_range=tuple(cfg.data.label_range),  # type: ignore[arg-type]
    )


def compute_losses(out: StudentOutput, batch: dict[str, Any], plan: LossPlan,
                   bins: Tensor | None) -> dict[str, Tensor]:
    """Every active loss term and their weighted sum (``total``) for one batch."""
    w = batch["weights"]
    target = batch["label_class"] if plan.classification else batch["labels"]
    label_mask = batch["label_mask"]
    losses: dict[str, Tensor] = {}
    losses["task"] = task_loss(out.pred, target, plan.task_kind, w, label_mask)
    total = losses["task"]
    if plan.unimodal_aux > 0:
        terms = []
        for m, pred in out.unimodal.items():
            avail = batch["text_avail"] if m == "text" else batch[f"{m}_avail"]
            terms.append(task_loss(pred, target, plan.task_kind, w, label_mask * avail))
        losses["unimodal"] = torch.stack(terms).mean()
        total = total + plan.unimodal_aux * losses["unimodal"]
    if plan.uses_bins:
        if out.bin_logits is None:
            raise ValueError("soft-label KD needs the student's bin head; build it with bins")
        tmask = batch["teacher_probs_mask"]
        if plan.soft_kd > 0:
            losses["soft_kd"] = soft_label_kd(out.bin_logits, batch["teacher_probs"],
                                              plan.temperature, w, tmask)
            total = total + plan.soft_kd * losses["soft_kd"]
        if plan.expected > 0:
            assert bins is not None
            texp = torch.nan_to_num(batch["teacher_expected"])
            losses["expected"] = expected_score_loss(out.bin_logits, bins, texp, "l1", w, tmask)
            total = total + plan.expected * losses["expected"]
    if plan.uses_privileged:
        pmask = batch["priv_mask"]
        if plan.priv_pred > 0:
            if plan.classification:
                losses["priv_pred"] = soft_label_kd(out.pred, batch["priv_pred"].softmax(-1),
                                                    plan.temperature, w, pmask)
            else:
                losses["priv_pred"] = prediction_kd(out.pred, batch["priv_pred"], "l1", w, pmask)
            total = total + plan.priv_pred * losses["priv_pred"]
        if plan.priv_repr > 0:
            losses["priv_repr"] = representation_kd(out.projected, batch["priv_fused"],
                                                    plan.priv_repr_kind, w, pmask)  # type: ignore[arg-type]
            total = total + plan.priv_repr * losses["priv_repr"]
        if plan.priv_attn > 0:
            if out.attention is None:
                raise ValueError("attention KD needs forward(..., return_attention=True)")
            terms = [attention_kd(out.attention[f"text_to_{m}"], t, batch["attention_mask"],
                                  "kl", w, pmask) for m, t in batch["priv_attn"].items()]
            losses["priv_attn"] = torch.stack(terms).mean()
            total = total + plan.priv_attn * losses["priv_attn"]
    losses["total"] = total
    return losses


def training_losses(model: Any, batch: dict[str, Any], plan: LossPlan, bins: Tensor | None,
                    *, want_attn: bool = False, rng: np.random.Generator | None = None,
                    raw_model: StudentModel | None = None) -> dict[str, Tensor]:
    """One training step's losses: the forward pass, :func:`compute_losses`, and the
    method terms the plan switches on (MS-Mix, conflict penalty + statistical loss),
    all in ``total``. With every switch off this is exactly
    ``compute_losses(model(batch), ...)``.

    ``model`` is what the loop calls (possibly wrapped by accelerate); ``raw_model``
    the unwrapped :class:`StudentModel` whose halves the methods call (default:
    ``model``); ``rng`` draws MS-Mix's pairs and ratios (seeded per step by the loop).
    """
    raw = raw_model if raw_model is not None else model
    if not plan.needs_encoding:  # the plain step, called exactly as before the methods
        return compute_losses(model(batch, return_attention=want_attn), batch, plan, bins)
    out = model(batch, return_attention=want_attn, return_encoding=True)
    losses = compute_losses(out, batch, plan, bins)
    total = losses.pop("total")
    if plan.msmix:
        if rng is None:
            raise ValueError("MS-Mix needs rng= (a numpy Generator seeded per step)")
        parts = msmix_losses(raw, out, batch, plan, bins, rng)
        total = (total + plan.msmix_task * parts["msmix"] + plan.msmix_kl * parts["msmix_kl"]
                 + plan.msmix_intensity * parts["msmix_intensity"])
        losses.update(parts)
    if plan.conflict:
        parts = conflict_losses(raw, out, batch, plan)
        total = total + plan.conflict_weight * parts["conflict"] \
            + plan.statistical * parts["statistical"]
        losses.update(parts)
    losses["total"] = total
    return losses


def _rows(e: Encoded, idx: Tensor) -> Encoded:
    return Encoded(tokens=e.tokens[idx], mask=e.mask[idx], pooled=e.pooled[idx])


def msmix_losses(model: StudentModel, out: StudentOutput, batch: dict[str, Any],
                 plan: LossPlan, bins: Tensor | None, rng: np.random.Generator
                 ) -> dict[str, Tensor]:
    """MS-Mix's terms (:mod:`students.msmix`): ``msmix`` (task loss on mixed samples
    against mixed labels), ``msmix_kl`` (KL alignment of the modalities' predicted
    distributions on them), ``msmix_intensity`` (intensity heads vs |gold score|) and,
    for the log, ``msmix_frac`` (fraction of the batch mixed, no gradient)."""
    enc = out.encoding
    if enc is None:
        raise ValueError("MS-Mix needs forward(..., return_encoding=True)")
    target, label_mask, w = batch["labels"], batch["label_mask"], batch["weights"]
    device = out.pred.device
    w = w.to(device)
    pooled, avail = enc.pooled(), enc.available()
    intensity = model.intensity(enc)
    gold_abs = torch.nan_to_num(target.float()).abs()
    losses: dict[str, Tensor] = {"msmix_intensity": torch.stack([
        task_loss(intensity[m], gold_abs, "l1", w, label_mask * avail[m]) for m in intensity
    ]).mean()}
    n = target.shape[0]
    perm, lam0 = draw_pairs(n, plan.msmix_alpha, rng)
    perm, lam0 = perm.to(device), lam0.to(device)
    sel = select_pairs({m: p.detach() for m, p in pooled.items()}, avail, perm,
                       plan.msmix_threshold, label_mask)
    i = torch.nonzero(sel).flatten()
    losses["msmix_frac"] = torch.tensor(float(i.numel()) / max(1, n), device=device)
    if i.numel() == 0:
        zero = out.pred.sum() * 0.0
        losses.update(msmix=zero, msmix_kl=zero)
        return losses
    j = perm[i]
    lam = mix_ratios(lam0[i], {m: v[i].detach() for m, v in intensity.items()},
                     {m: v[j].detach() for m, v in intensity.items()})
    mixed = StudentEncoding(
        text=mix_encoded(_rows(enc.text, i), _rows(enc.text, j), lam["text"]),
        others={m: mix_encoded(_rows(e, i), _rows(e, j), lam[m]) for m, e in enc.others.items()},
        avail={m: a[i] for m, a in enc.avail.items()}, text_avail=enc.text_avail[i])
    mo = model.fuse_and_predict(mixed)
    pair_avail = {m: a[i] for m, a in avail.items()}
    lam_bar = mean_ratio(lam, pair_avail)
    y = mixed_labels(target[i], target[j], lam_bar)
    wm = lam_bar * w[i] + (1.0 - lam_bar) * w[j]
    losses["msmix"] = task_loss(mo.pred, y, plan.task_kind, wm)
    if bins is not None and bins.numel() >= 2:
        grid = bins.float().to(device)
    else:
        grid = torch.linspace(plan.label_range[0], plan.label_range[1], 7, device=device)
    sigma = float((grid[-1] - grid[0]) / (grid.numel() - 1))
    dists = {m: gaussian_bins(p, grid, sigma) for m, p in mo.unimodal.items()}
    losses["msmix_kl"] = weighted_mean(modality_kl(dists, pair_avail), wm)
    return losses


def conflict_losses(model: StudentModel, out: StudentOutput, batch: dict[str, Any],
                    plan: LossPlan) -> dict[str, Tensor]:
    """The conflict-aware penalty and the statistical loss (:mod:`students.conflict`):
    ``conflict`` (dominance + opposition of the modalities' gradients on the shared
    weights, differentiable), ``statistical``; for the log ``conflict_dominance``,
    ``conflict_opposition``."""
    if out.contributions is None:
        raise ValueError("the conflict penalty needs the fusion's per-modality contributions")
    if plan.label_stats is None:
        raise ValueError("the statistical loss needs the train labels' statistics: pass "
                         "label_stats to plan_losses")
    target = batch["label_class"] if plan.classification else batch["labels"]
    label_mask, w = batch["label_mask"], batch["weights"]
    avail = out.encoding.available() if out.encoding is not None else {
        "text": batch["text_avail"], **{m: batch[f"{m}_avail"] for m in out.contributions
                                        if m != "text"}}
    params = model.shared_parameters()
    vectors = []
    for m, c in out.contributions.items():
        am = label_mask.to(c.device) * avail[m].to(c.device)
        if not (am > 0).any():
            continue
        loss_m = task_loss(model.shared_tail(c), target, plan.task_kind, w, am)
        grads = torch.autograd.grad(loss_m, params, create_graph=True, allow_unused=True)
        vectors.append(flatten_grads(grads, params))
    stacked = torch.stack(vectors) if vectors else out.pred.new_zeros(0, 1)
    pen = conflict_penalty(stacked, plan.conflict_tau)
    stat = statistical_loss(out.pred, plan.label_stats, label_mask, plan.classification)
    return {"conflict": pen["penalty"], "conflict_dominance": pen["dominance"].detach(),
            "conflict_opposition": pen["opposition"].detach(), "statistical": stat}


@torch.no_grad()
def privileged_targets(teacher: StudentModel, items: Sequence[StudentItem], batch_size: int,
                       with_attention: bool) -> dict[str, PrivilegedTarget]:
    """The frozen prompted network's outputs on complete inputs, per sample id."""
    teacher.eval()
    collator = Collator.for_model(teacher)
    out: dict[str, PrivilegedTarget] = {}
    for i in range(0, len(items), batch_size):
        raw = collator(list(items[i:i + batch_size]))
        batch = to_device(raw, teacher.device)
        res = teacher(batch, return_attention=with_attention)
        n_tok = raw["attention_mask"].sum(1).tolist()
        for b, sid in enumerate(raw["ids"]):
            attn: dict[str, Tensor] = {}
            if with_attention:
                if res.attention is None:
                    raise ValueError("the prompted network returned no attention maps")
                for key, a in res.attention.items():
                    if key.startswith("text_to_"):
                        attn[key[len("text_to_"):]] = a[b, :, : int(n_tok[b])].float().cpu()
            out[sid] = PrivilegedTarget(pred=res.pred[b].float().cpu(),
                                        fused=res.fused[b].float().cpu(), attention=attn)
    return out


# ------------------------------------------------------------------------ run state


@dataclass
class TrainState:
    """Progress of one stage, saved with the accelerate state in ``last/``."""

    epochs_done: int = 0
    global_step: int = 0
    best_value: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0
    finished: bool = False
    stop_reason: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> TrainState:
        return cls(**json.loads(path.read_text()))


def selection_mode(cfg: DistillConfig, info: DataInfo) -> tuple[str, str]:
    """(metric name without ``valid_``, ``min``/``max``), checked against the metric set."""
    metric = cfg.train.select_metric.removeprefix("valid_")
    names = METRIC_NAMES.get(info.metric_set, ())
    if metric not in names:
        raise ConfigError(
            f"train.select_metric={cfg.train.select_metric!r} is invalid: dataset "
            f"{info.name!r} uses metric set {info.metric_set!r}, whose metrics are "
            f"{list(names)}; use valid_<one of those>")
    mode = "max" if higher_is_better(metric) else "min"
    if cfg.train.select_mode not in ("auto", mode):
        raise ConfigError(
            f"train.select_mode={cfg.train.select_mode!r} is invalid: {metric} is better when "
            f"{'larger' if mode == 'max' else 'smaller'}; set train.select_mode=auto")
    return metric, mode


def _better(value: float, best: float | None, mode: str) -> bool:
    if best is None:
        return True
    if not math.isfinite(value):
        return False
    if not math.isfinite(best):
        return True
    return value > best if mode == "max" else value < best


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def _prepare_output_dir(cfg: DistillConfig, out: Path, resume: bool, accelerator: Any) -> None:
    run_cfg = out / RUN_CONFIG
    started = run_cfg.is_file() or any((out / d).exists() for d in RUN_SUBDIRS)
    if resume:
        if not run_cfg.is_file():
            raise TrainError(f"--resume: train.output_dir={str(out)!r} holds no run to continue "
                             f"(no {RUN_CONFIG}); start it without --resume")
        before = _flat(yaml.safe_load(run_cfg.read_text()))
        now = _flat(to_dict(cfg))
        defaults = _flat(to_dict(DistillConfig()))
        # a field added to the config after the run started, left at its default, is no
        # difference: the run trained without it, which is what the default means
        diff = sorted(k for k in set(before) | set(now)
                      if k not in RESUME_IGNORED and before.get(k) != now.get(k)
                      and not (k not in before and k in defaults and now.get(k) == defaults[k]))
        if diff:
            shown = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in diff[:8])
            raise TrainError(f"--resume: the config differs from the one the run in {out} "
                             f"started with ({shown}); resume with the same config and "
                             "overrides, or start a new run in another train.output_dir")
        return
    if started:
        if not cfg.train.overwrite:
            raise TrainError(
                f"train.output_dir={str(out)!r} already holds a run; continue it with "
                "--resume, start afresh there with train.overwrite=true, or choose another "
                "train.output_dir")
        if accelerator.is_main_process:
            for d in RUN_SUBDIRS:
                for p in (out / d, out / f"{d}.tmp", out / f"{d}.old"):
                    if p.exists():
                        shutil.rmtree(p)
            run_cfg.unlink(missing_ok=True)
        accelerator.wait_for_everyone()


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


# ---------------------------------------------------------------------------- stages


@dataclass
class Stage:
    """One model to train: its config, items, loss terms and where it goes."""

    name: str
    """``prompted`` (stage 1) or ``student``."""
    cfg: DistillConfig
    """The config its checkpoint records (``student.prompted`` says which model)."""
    out_dir: Path
    train_items: list[StudentItem]
    valid_items: list[StudentItem]
    bins: list[float] | None
    plan: LossPlan
    manifest: dict[str, Any]
    privileged: dict[str, PrivilegedTarget] | None = None
    augment: list[StudentItem] | None = None
    """Teacher-augmented train samples (``train.augment_data``), weighted in :func:`_fit`."""

    @property
    def epochs(self) -> int:
        return self.cfg.train.epochs


def _freeze_unused(model: StudentModel, plan: LossPlan) -> list[str]:
    """Freeze heads no loss term reads (no trainable weight without a gradient: DDP
    rejects those). Returns their names."""
    frozen = []
    unimodal_used = plan.unimodal_aux > 0 or (plan.msmix and plan.msmix_kl > 0)
    parts = {"bin_head": model.bin_head if not plan.uses_bins else None,
             "unimodal_heads": model.unimodal_heads if not unimodal_used else None,
             "kd_proj": model.kd_proj if plan.priv_repr <= 0 else None,
             "intensity_heads": model.intensity_heads if plan.msmix_intensity <= 0 else None}
    for name, module in parts.items():
        if module is not None:
            module.requires_grad_(False)
            frozen.append(name)
    return frozen


def _fit(accelerator: Any, stage: Stage, info: DataInfo, resume: bool) -> Path:
    """Train one stage; returns its ``checkpoint-best`` directory."""
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    cfg, tc = stage.cfg, stage.cfg.train
    out = stage.out_dir
    best_dir, last_dir = out / BEST_DIR, out / LAST_DIR
    metric, mode = selection_mode(cfg, info)
    state_path = last_dir / STATE_FILE
    if resume and state_path.is_file():
        saved = TrainState.load(state_path)
        if saved.finished:
            log.info("%s: already finished (%s); using %s", stage.name, saved.stop_reason,
                     best_dir)
            return best_dir

    set_seed(tc.seed)
    model = build_student(cfg.student, info, stage.bins, device=accelerator.device,
                          msmix=stage.plan.msmix)
    frozen = _freeze_unused(model, stage.plan)
    if frozen:
        log.info("%s: frozen (no loss reads them): %s", stage.name, ", ".join(frozen))
    prompted = model.prompt is not None
    train_items = stage.train_items
    item_weights: dict[str, float] | None = None
    if stage.augment:
        # Weighed with the text encoder as built, before any training step.
        item_weights = _weigh_augmented(model, stage, info, accelerator)
        train_items = train_items + stage.augment
    base = Collator.for_model(model)
    collator = TrainCollator(base, weighting=tc.weighting, weight_floor=tc.weight_floor,
                             agreement_scale=tc.weight_agreement_scale,
                             privileged=stage.privileged, drop_descriptions=not prompted,
                             item_weights=item_weights)
    valid_collator = TrainCollator(Collator.for_model(model), drop_descriptions=not prompted)
    tok = model.tokenizer

    def n_tokens(item: StudentItem) -> int:
        return len(tok(item.sample.text or "", truncation=True,
                       max_length=cfg.student.max_text_len)["input_ids"])

    lengths = [n_tokens(it) for it in train_items] if tc.group_by_length else None
    sampler = EpochSampler(len(train_items), tc.seed, lengths, tc.batch_size)
    # Validation order does not change the metrics; similar lengths pad less.
    valid_items = sorted(stage.valid_items, key=lambda it: -len(item_text(it)))
    train_loader = DataLoader(ItemDataset(train_items), batch_size=tc.batch_size,
                              sampler=sampler, collate_fn=collator, num_workers=tc.num_workers)
    valid_loader = DataLoader(ItemDataset(valid_items), batch_size=cfg.eval.batch_size,
                              shuffle=False, collate_fn=valid_collator,
                              num_workers=tc.num_workers)
    steps_per_epoch = math.ceil(len(train_loader) / tc.grad_accum)
    total_steps = steps_per_epoch * stage.epochs
    optimizer = torch.optim.AdamW(model.param_groups(tc.lr, tc.encoder_lr, tc.weight_decay))
    scheduler = get_cosine_schedule_with_warmup(optimizer, round(tc.warmup_ratio * total_steps),
                                                total_steps)
    model, optimizer, train_loader, valid_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, valid_loader, scheduler)
    raw_model: StudentModel = accelerator.unwrap_model(model)
    bins = raw_model.bins if raw_model.bin_values is not None else None
    counts = raw_model.parameter_counts()["all"]
    log.info("%s: %d train (%d augmented) / %d valid samples, %d epochs x %d steps, %d "
             "trainable of %d parameters, selecting on valid_%s (%s)", stage.name,
             len(train_items), len(stage.augment or []), len(stage.valid_items), stage.epochs,
             steps_per_epoch, counts.trainable, counts.total, metric, mode)

    state = TrainState()
    if resume and state_path.is_file():
        accelerator.load_state(str(last_dir))
        state = TrainState.load(state_path)
        log.info("%s: resumed after epoch %d (best valid_%s=%s at epoch %d)", stage.name,
                 state.epochs_done, metric, state.best_value, state.best_epoch)

    want_attn = stage.plan.priv_attn > 0
    for epoch in range(state.epochs_done, stage.epochs):
        t0 = time.perf_counter()
        set_seed(epoch_seed(tc.seed, epoch), device_specific=True)
        if tc.missing_train:
            collator.set_masking(lnln_train(tc.seed, epoch, tc.missing_complete_fraction,
                                            ("text", *raw_model.modalities)))
        train_loader.set_epoch(epoch)
        model.train()
        sums: dict[str, float] = {}
        n_batches = 0
        bar = tqdm(train_loader, desc=f"{stage.name} epoch {epoch + 1}/{stage.epochs}",
                   disable=not accelerator.is_local_main_process, leave=False,
                   dynamic_ncols=True, mininterval=1.0)
        for step, batch in enumerate(bar):
            with accelerator.accumulate(model):
                rng = (np.random.default_rng([tc.seed, epoch, step, accelerator.process_index,
                                              2]) if stage.plan.msmix else None)
                losses = training_losses(model, batch, stage.plan, bins, want_attn=want_attn,
                                         rng=rng, raw_model=raw_model)
                accelerator.backward(losses["total"])
                if accelerator.sync_gradients:
                    if tc.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(model.parameters(), tc.max_grad_norm)
                    state.global_step += 1
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            n_batches += 1
            bar.set_postfix(loss=f"{sums['total'] / n_batches:.4f}")
        bar.close()
        train_losses = {k: v / max(1, n_batches) for k, v in sums.items()}
        valid = validate(model, valid_loader, accelerator, info)
        value = valid[metric]
        improved = _better(value, state.best_value, mode)
        if improved:
            state.best_value, state.best_epoch, state.bad_epochs = value, epoch + 1, 0
            selection = {"split": "valid", "metric": f"valid_{metric}", "mode": mode,
                         "epoch": epoch + 1, "value": value,
                         "metrics": {f"valid_{k}": v for k, v in valid.items()},
                         "stage": stage.name}
            full_sd = {k: v for k, v in accelerator.get_state_dict(model).items()
                       if not k.startswith(TRAINING_ONLY_PREFIXES)}
            if accelerator.is_main_process:
                save_checkpoint(raw_model, cfg, best_dir, selection=selection,
                                teacher_manifest=stage.manifest, state_dict=full_sd)
            accelerator.wait_for_everyone()
        else:
            state.bad_epochs += 1
        seconds = time.perf_counter() - t0
        state.history.append({"epoch": epoch + 1, "train": train_losses,
                              "valid": {f"valid_{k}": v for k, v in valid.items()},
                              "lr": [g["lr"] for g in optimizer.param_groups],
                              "seconds": seconds, "best": improved})
        accelerator.log({**{f"{stage.name}/train_{k}": v for k, v in train_losses.items()},
                         **{f"{stage.name}/valid_{k}": v for k, v in valid.items()}},
                        step=epoch + 1)
        log.info("%s epoch %d/%d (%.0fs): train loss %.4f | valid %s%s", stage.name, epoch + 1,
                 stage.epochs, seconds, train_losses.get("total", float("nan")),
                 " ".join(f"{k}={v:.4f}" for k, v in valid.items()),
                 " *best*" if improved else "")
        state.epochs_done = epoch + 1
        if tc.early_stop_patience and state.bad_epochs >= tc.early_stop_patience:
            state.finished, state.stop_reason = True, (
                f"early stop: no better valid_{metric} for {state.bad_epochs} epochs")
        elif state.epochs_done >= stage.epochs:
            state.finished, state.stop_reason = True, f"all {stage.epochs} epochs"
        _save_last(accelerator, last_dir, state)
        if state.finished and state.stop_reason.startswith("early"):
            log.info("%s: %s", stage.name, state.stop_reason)
            break
    log.info("%s: best valid_%s=%.4f at epoch %d -> %s", stage.name, metric,
             float("nan") if state.best_value is None else state.best_value, state.best_epoch,
             best_dir)
    accelerator.free_memory()
    return best_dir


def _weigh_augmented(model: StudentModel, stage: Stage, info: DataInfo,
                     accelerator: Any) -> dict[str, float]:
    """Quality weights of the augmented samples (:func:`students.augment.augment_weights`),
    their consistency set on the items; logged, histogrammed and saved as
    ``<out_dir>/augment_weights.csv``. Returns sample id -> weight."""
    assert stage.augment
    tc = stage.cfg.train
    items = stage.augment
    sources = {it.sample.id: it.sample for it in stage.train_items}
    src = [sources[str(it.sample.meta["source_id"])] for it in items]
    n_bins = next((len(it.teacher.probs) for it in items
                   if it.teacher is not None and it.teacher.probs is not None),
                  len(stage.bins or []) or 2)
    nan = float("nan")
    probs = torch.full((len(items), n_bins), nan)
    off = torch.full((len(items),), nan)
    expected = torch.full((len(items),), nan)
    for r, it in enumerate(items):
        t = it.teacher
        if t is not None and t.probs is not None:
            probs[r] = torch.as_tensor(np.asarray(t.probs, dtype=np.float32))
            off[r] = nan if t.off_mass is None else float(t.off_mass)
            expected[r] = nan if t.expected is None else float(t.expected)
    gold = torch.tensor([nan if s.label is None else float(s.label) for s in src])
    t0 = time.perf_counter()
    sim = rewrite_similarity(model, [it.sample.text for it in items], [s.text for s in src],
                             batch_size=stage.cfg.eval.batch_size)
    lo, hi = info.label_range
    aw = augment_weights(probs=probs, off_mass=off, expected=expected, gold=gold,
                         similarity=sim, agreement_scale=tc.weight_agreement_scale
                         or (hi - lo) / 2.0, floor=tc.weight_floor)
    for it, c in zip(items, aw.consistency.tolist(), strict=True):
        it.consistency = float(c)
    weights = aw.weight.numpy()
    summary = weight_summary(weights, tc.weight_floor)
    log.info("%s: %d augmented samples weighted in %.1fs (%d without a teacher soft label): "
             "%s\naugment weights histogram:\n%s", stage.name, len(items),
             time.perf_counter() - t0, int((~aw.has_teacher).sum()),
             " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in summary.items()),
             histogram_text(weights, lo=0.0, hi=1.0))
    accelerator.log({f"{stage.name}/augment_weight_{k}": v for k, v in summary.items()},
                    step=0)
    for tracker in getattr(accelerator, "trackers", []):
        writer = getattr(tracker, "writer", None)
        if writer is not None and hasattr(writer, "add_histogram"):
            writer.add_histogram(f"{stage.name}/augment_weights", weights, 0)
    if accelerator.is_main_process:
        stage.out_dir.mkdir(parents=True, exist_ok=True)
        with (stage.out_dir / AUGMENT_WEIGHTS_FILE).open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "source_id", "weight", "confidence", "off_label", "agreement",
                        "consistency", "similarity", "has_teacher"])
            for r, it in enumerate(items):
                w.writerow([it.sample.id, src[r].id, f"{weights[r]:.6f}",
                            f"{float(aw.confidence[r]):.6f}", f"{float(aw.off_label[r]):.6f}",
                            f"{float(aw.agreement[r]):.6f}", f"{float(aw.consistency[r]):.6f}",
                            f"{float(sim[r]):.6f}", int(aw.has_teacher[r])])
    return {it.sample.id: float(wt) for it, wt in zip(items, weights, strict=True)}


def _save_last(accelerator: Any, last_dir: Path, state: TrainState) -> None:
    """Accelerate state + trainer state into ``last/``, swapped in whole."""
    tmp = last_dir.with_name(last_dir.name + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=2) + "\n")
        old = last_dir.with_name(last_dir.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        if last_dir.exists():
            last_dir.rename(old)
        tmp.rename(last_dir)
        if old.exists():
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


@torch.no_grad()
def validate(model: Any, loader: Any, accelerator: Any, info: DataInfo) -> dict[str, float]:
    """Metrics of the dataset's metric set on the (prepared) validation loader."""
    model.eval()
    preds, labels = [], []
    for batch in loader:
        pred = model(batch).pred.float()
        target = batch["label_class"] if info.task == "classification" else batch["labels"]
        pred, target = accelerator.gather_for_metrics((pred, target))
        preds.append(pred.cpu().numpy())
        labels.append(target.cpu().numpy())
    return compute_metrics(info.metric_set, np.concatenate(preds), np.concatenate(labels))


# ------------------------------------------------------------------------------ train


def _check_splits(ds: MSADataset) -> None:
    for split in ("train", "valid"):
        if split not in ds.splits or ds.num_rows(split) == 0:
            raise TrainError(
                f"dataset {ds.info.name!r} has no {split!r} samples (splits: "
                f"{ {s: ds.num_rows(s) for s in ds.splits} }); training needs train and valid "
                "splits (selection uses valid only): map your split names with "
                "data.split_names")


def _check_labels(samples: list[Sample], info: DataInfo, split: str) -> None:
    classification = info.task == "classification"
    missing = [s.id for s in samples
               if (s.label_class is None if classification else s.label is None)]
    if missing:
        raise TrainError(f"{len(missing)} {split} samples of {info.name!r} have no label "
                         f"(e.g. {missing[:3]}); validation metrics need every label")


def _prompted_stage_cfg(cfg: DistillConfig, out: Path) -> DistillConfig:
    """Stage 1: the prompted network on gold labels, otherwise the run's settings."""
    st = copy.deepcopy(cfg)
    st.student.prompted = True
    st.signals.soft_label_template = ""
    st.train.privileged = "none"
    st.train.prompted_checkpoint = ""
    st.train.output_dir = str(out / PROMPTED_DIR)
    st.train.epochs = cfg.train.prompted_epochs or cfg.train.epochs
    st.train.weighting = "none"
    st.train.missing_train = False
    st.train.augment_data = ""
    st.train.msmix = False
    st.train.conflict_penalty = False
    return st


def _check_teacher_fits(teacher: StudentModel, cfg: DistillConfig, plan: LossPlan) -> None:
    """The frozen prompted network's outputs must fit the student's KD terms."""
    s = cfg.student
    width = s.kd_repr_dim or s.hidden
    if plan.priv_repr > 0 and teacher.cfg.hidden != width:
        raise ConfigError(
            f"student.kd_repr_dim={s.kd_repr_dim} is invalid: the prompted network's fused "
            f"representation has width {teacher.cfg.hidden}, the student projects to {width}; "
            f"set student.kd_repr_dim={teacher.cfg.hidden} (or loss.privileged_repr=0)")
    if plan.priv_attn > 0:
        for key in ("text_encoder", "max_text_len", "heads", "bottleneck_tokens"):
            if getattr(teacher.cfg, key) != getattr(s, key):
                raise ConfigError(
                    f"student.{key}={getattr(s, key)!r} is invalid for attention KD: the "
                    f"prompted network has {getattr(teacher.cfg, key)!r}; use the same value "
                    "or set loss.privileged_attn=0")
        if set(teacher.modalities) != set(cfg.data.modalities) - {"text"}:
            log.warning("prompted network modalities %s differ from the data's %s",
                        teacher.modalities, cfg.data.modalities)
    if plan.classification != (teacher.task == "classification"):
        raise ConfigError("train.prompted_checkpoint: the prompted network was trained for "
                          f"task {teacher.task!r}; this run's data.task is {cfg.data.task!r}")


def _load_prompted(path: Path, ds: MSADataset, signals: TeacherSignals, device: Any
                   ) -> tuple[StudentModel, dict[str, Any]]:
    teacher, tcfg, meta = load_checkpoint(path, device=device)
    if meta.kind != "prompted":
        raise ConfigError(f"train.prompted_checkpoint={str(path)!r} is invalid: it holds a "
                          f"{meta.kind!r} model, not a prompted network (student.prompted=true)")
    if meta.info.fingerprint != ds.fingerprint:
        raise ConfigError(
            f"train.prompted_checkpoint={str(path)!r} is invalid: it was trained on data "
            f"fingerprint {meta.info.fingerprint}, this run's data has {ds.fingerprint}; "
            "train the prompted network on this data (leave train.prompted_checkpoint empty)")
    used = (meta.teacher_manifest.get("descriptions") or {}).get("job", {}).get("job")
    assert signals.descriptions is not None
    now = signals.descriptions.job.get("job")
    if used != now:
        raise ConfigError(
            f"train.prompted_checkpoint={str(path)!r} is invalid: it read descriptions of "
            f"cache job {used}, but signals.description_template gives job {now}; use the "
            "same cache and template, or leave train.prompted_checkpoint empty")
    for p in teacher.parameters():
        p.requires_grad_(False)
    manifest = {"checkpoint": str(path), "selection": meta.selection,
                "teacher_manifest": meta.teacher_manifest, "kind": meta.kind}
    return teacher, manifest


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


def _run(cfg: DistillConfig, resume: bool) -> Path:
    accelerator = _make_accelerator(cfg)
    out = Path(cfg.train.output_dir)
    _prepare_output_dir(cfg, out, resume, accelerator)
    ds = load_dataset(cfg.data)
    info = ds.info
    selection_mode(cfg, info)
    _check_splits(ds)
    if cfg.student.prompted and not (cfg.signals.cache_dir and cfg.signals.description_template):
        raise ConfigError("student.prompted=true is invalid without descriptions: set "
                          "signals.cache_dir and signals.description_template, or use "
                          "train.privileged=prompted to train it as stage 1")
    privileged = cfg.train.privileged == "prompted"
    signals = join_signals(cfg, ds, descriptions=privileged or cfg.student.prompted)
    train_samples = ds.samples("train")
    valid_samples = ds.samples("valid")
    _check_labels(valid_samples, info, "valid")
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if not resume:
            dump_config(cfg, out, RUN_CONFIG)
    accelerator.wait_for_everyone()
    if cfg.train.log_with != "none":
        accelerator.init_trackers(out.name or "distill",
                                  config={k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                          for k, v in _flat(to_dict(cfg)).items()})
    manifest = signals.manifest()
    augment: list[StudentItem] | None = None
    if cfg.train.augment_data:
        augment, manifest["augment"] = join_augmented(cfg, ds, signals)
    label_stats = None
    if cfg.train.conflict_penalty:
        classification = info.task == "classification"
        label_stats = label_statistics(
            [s.label_class if classification else s.label for s in train_samples
             if (s.label_class if classification else s.label) is not None],
            classification=classification, n_classes=len(info.class_names))
        log.info("statistical loss: train gold-label statistics %s",
                 ", ".join(f"{v:.4f}" for v in label_stats))
    try:
        priv_targets: dict[str, PrivilegedTarget] | None = None
        plan = plan_losses(cfg, soft_labels=signals.soft is not None, privileged=privileged,
                           label_stats=label_stats)
        if privileged:
            desc = signals.descriptions
            desc_items = {s.id: StudentItem(s, TeacherSignal(description=_description(desc, s.id)))
                          for s in train_samples}
            if cfg.train.prompted_checkpoint:
                ckpt = Path(cfg.train.prompted_checkpoint)
            else:
                st_cfg = _prompted_stage_cfg(cfg, out)
                stage1 = Stage(
                    name="prompted", cfg=st_cfg, out_dir=out / PROMPTED_DIR,
                    train_items=list(desc_items.values()),
                    valid_items=[StudentItem(s, TeacherSignal(description=_description(desc, s.id)))
                                 for s in valid_samples],
                    bins=None, plan=plan_losses(st_cfg, soft_labels=False, privileged=False),
                    manifest={**TeacherSignals(descriptions=desc).manifest(),
                              "privileged": None})
                ckpt = _fit(accelerator, stage1, info, resume)
            teacher, priv_manifest = _load_prompted(ckpt, ds, signals, accelerator.device)
            _check_teacher_fits(teacher, cfg, plan)
            t0 = time.perf_counter()
            with accelerator.autocast():
                priv_targets = privileged_targets(teacher, list(desc_items.values()),
                                                  cfg.eval.batch_size, plan.priv_attn > 0)
            log.info("privileged targets of the prompted network for %d train samples (%.0fs)",
                     len(priv_targets), time.perf_counter() - t0)
            del teacher
            manifest = {**manifest, "privileged": priv_manifest}
        else:
            manifest = {**manifest, "privileged": None}
        if cfg.student.prompted:
            train_items = [StudentItem(s, _merge(_soft_signal(_out(signals.soft, s.id)),
                                                 _description(signals.descriptions, s.id)))
                           for s in train_samples]
            valid_items = [StudentItem(s, TeacherSignal(
                description=_description(signals.descriptions, s.id))) for s in valid_samples]
        else:
            train_items = [StudentItem(s, _soft_signal(_out(signals.soft, s.id)))
                           for s in train_samples]
            valid_items = [StudentItem(s) for s in valid_samples]
        stage = Stage(name="prompted" if cfg.student.prompted else "student", cfg=cfg,
                      out_dir=out, train_items=train_items, valid_items=valid_items,
                      bins=signals.bins,
                      plan=plan, manifest=manifest, privileged=priv_targets, augment=augment)
        best = _fit(accelerator, stage, info, resume)
    finally:
        accelerator.end_training()
    return best


def join_augmented(cfg: DistillConfig, ds: MSADataset, signals: TeacherSignals
                   ) -> tuple[list[StudentItem], dict[str, Any]]:
    """The augmented train samples of ``train.augment_data`` with their soft labels from
    ``signals.cache_dir`` (joined by the augmented data's own fingerprint, the same
    template, teacher and ``min_ok_fraction`` as the main soft labels), and what the
    checkpoint's manifest records about them."""
    sig = cfg.signals
    acfg, ads, samples = load_augmented(cfg.train.augment_data, ds)
    try:
        view = _view(cfg, ads, sig.soft_label_template, {s.id: "train" for s in samples},
                     "soft_label", "soft_label")
    except CacheError as e:
        raise CacheError(
            f"train.augment_data={cfg.train.augment_data!r}: the rewrites' soft labels: {e} "
            f"(score them with `workbench cache run --data {acfg.path} ... --template "
            f"{sig.soft_label_template}` into {sig.cache_dir})") from None
    values = _bin_sets(view)
    if signals.bins is not None and values and values != {tuple(signals.bins)}:
        raise CacheError(f"train.augment_data: the rewrites' soft labels use bins "
                         f"{sorted(values)[:2]}, the main data's {signals.bins}; score both "
                         "with the same template")
    log.info("augmented data %s: %d rewrites of %d train samples, soft labels ok for %d "
             "(%.1f%%)", acfg.path, len(samples),
             len({s.meta.get("source_id") for s in samples}), len(view.outputs),
             100 * view.ok_fraction)
    items = [StudentItem(s, _soft_signal(view.outputs.get(s.id))) for s in samples]
    manifest = {"data": acfg.path, "fingerprint": ads.fingerprint, "samples": len(samples),
                "soft_labels": view.manifest()}
    return items, manifest


def _out(view: TeacherView | None, sample_id: str) -> TeacherOutput | None:
    return None if view is None else view.outputs.get(sample_id)


def _merge(soft: TeacherSignal | None, description: str) -> TeacherSignal:
    base = soft or TeacherSignal()
    base.description = description
    return base
