"""The privileged stage (``train.privileged.enabled``, MMSLF's stage 1).

The prompted network -- the student architecture plus a branch reading the teacher's
cached descriptions -- is trained on gold labels into ``<output_dir>/prompted/`` (or
``train.privileged.checkpoint`` is reused, after checks that it fits this run). Its outputs
on the training samples (prediction, fused representation, fusion attention) are computed
once, frozen, from complete inputs: :func:`privileged_stage` returns them, per sample id,
for the plain student's privileged KD terms.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate.logging import get_logger
from torch import Tensor

from students.batching import PrivilegedTarget
from students.checkpoint import load_checkpoint
from students.collate import Collator, StudentItem, TeacherSignal
from students.inference import to_device
from students.methods import active, without_training_methods
from students.model import StudentModel
from students.objective import LossPlan, plan_losses
from students.recipe import Stage, fit
from students.rundir import PROMPTED_DIR
from students.signals import TeacherSignals, description
from workbench.config import (
    AugmentConfig,
    ConfigError,
    DataConfig,
    DistillConfig,
    PrivilegedConfig,
    StudentConfig,
)
from workbench.data import MSADataset, Sample

log = get_logger(__name__)


def prompted_stage_cfg(cfg: DistillConfig, out: Path) -> DistillConfig:
    """Stage 1: the prompted network on gold labels, otherwise the run's settings (no
    weighting, no augmentation, every ``train`` method off; the ``student`` methods are
    part of its architecture)."""
    st = copy.deepcopy(cfg)
    st.student.prompted = True
    st.signals.soft_label_template = ""
    st.train.privileged = PrivilegedConfig()
    st.train.output_dir = str(out / PROMPTED_DIR)
    st.train.epochs = cfg.train.privileged.epochs or cfg.train.epochs
    st.train.weighting = dataclasses.replace(cfg.train.weighting, enabled=False)
    st.train.augment = AugmentConfig()
    without_training_methods(st.train)
    return st


def check_teacher_fits(teacher: StudentModel, s: StudentConfig, data: DataConfig,
                       plan: LossPlan) -> None:
    """The frozen prompted network's outputs must fit the KD terms of the student ``s``
    (trained on ``data``)."""
    width = s.kd_repr_dim or s.hidden
    if plan.priv_repr > 0 and teacher.cfg.hidden != width:
        raise ConfigError(
            f"student.kd_repr_dim={s.kd_repr_dim} is invalid: the prompted network's fused "
            f"representation has width {teacher.cfg.hidden}, the student projects to {width}; "
            f"set student.kd_repr_dim={teacher.cfg.hidden} (or train.privileged.repr_weight=0)")
    if plan.priv_attn > 0:
        for key in ("text_encoder", "max_text_len", "heads", "bottleneck_tokens"):
            if getattr(teacher.cfg, key) != getattr(s, key):
                raise ConfigError(
                    f"student.{key}={getattr(s, key)!r} is invalid for attention KD: the "
                    f"prompted network has {getattr(teacher.cfg, key)!r}; use the same value "
                    "or set train.privileged.attn_weight=0")
        if set(teacher.modalities) != set(data.modalities) - {"text"}:
            log.warning("prompted network modalities %s differ from the data's %s",
                        teacher.modalities, data.modalities)
    if plan.classification != (teacher.task == "classification"):
        raise ConfigError("train.privileged.checkpoint: the prompted network was trained for "
                          f"task {teacher.task!r}; this run's data.task is {data.task!r}")


def load_prompted(path: Path, ds: MSADataset, signals: TeacherSignals, device: Any
                  ) -> tuple[StudentModel, dict[str, Any]]:
    """The frozen prompted network in ``path``, checked against this run's data and
    descriptions, and what the student's checkpoint records about it."""
    teacher, tcfg, meta = load_checkpoint(path, device=device)
    if meta.kind != "prompted":
        raise ConfigError(f"train.privileged.checkpoint={str(path)!r} is invalid: it holds a "
                          f"{meta.kind!r} model, not a prompted network (student.prompted=true)")
    if meta.info.fingerprint != ds.fingerprint:
        raise ConfigError(
            f"train.privileged.checkpoint={str(path)!r} is invalid: it was trained on data "
            f"fingerprint {meta.info.fingerprint}, this run's data has {ds.fingerprint}; "
            "train the prompted network on this data (leave train.privileged.checkpoint empty)")
    used = (meta.teacher_manifest.get("descriptions") or {}).get("job", {}).get("job")
    assert signals.descriptions is not None
    now = signals.descriptions.job.get("job")
    if used != now:
        raise ConfigError(
            f"train.privileged.checkpoint={str(path)!r} is invalid: it read descriptions of "
            f"cache job {used}, but signals.description_template gives job {now}; use the "
            "same cache and template, or leave train.privileged.checkpoint empty")
    for p in teacher.parameters():
        p.requires_grad_(False)
    manifest = {"checkpoint": str(path), "selection": meta.selection,
                "teacher_manifest": meta.teacher_manifest, "kind": meta.kind}
    return teacher, manifest


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


def privileged_stage(accelerator: Any, cfg: DistillConfig, ds: MSADataset,
                     signals: TeacherSignals, plan: LossPlan, train_samples: list[Sample],
                     valid_samples: list[Sample], out: Path, resume: bool
                     ) -> tuple[dict[str, PrivilegedTarget], dict[str, Any]]:
    """Stage 1: train the prompted network (or reuse ``train.privileged.checkpoint``), load
    it frozen, check it fits the student's ``plan``, and compute its outputs on the train
    samples. Returns (targets per sample id, the manifest entry ``privileged``). It takes
    the run config ``cfg`` because stage 1's own run config, which its checkpoint records,
    is derived from it (:func:`prompted_stage_cfg`)."""
    desc = signals.descriptions
    desc_items = {s.id: StudentItem(s, TeacherSignal(description=description(desc, s.id)))
                  for s in train_samples}
    if cfg.train.privileged.checkpoint:
        ckpt = Path(cfg.train.privileged.checkpoint)
    else:
        st_cfg = prompted_stage_cfg(cfg, out)
        stage1 = Stage(
            name="prompted", cfg=st_cfg, out_dir=out / PROMPTED_DIR,
            train_items=list(desc_items.values()),
            valid_items=[StudentItem(s, TeacherSignal(description=description(desc, s.id)))
                         for s in valid_samples],
            bins=None, plan=plan_losses(st_cfg.loss, st_cfg.data,
                                        task_kind=st_cfg.train.task_loss,
                                        methods=active(st_cfg.student, st_cfg.train)),
            manifest={**TeacherSignals(descriptions=desc).manifest(), "privileged": None},
            valid_batch_size=cfg.eval.batch_size)
        ckpt = fit(accelerator, stage1, ds.info, resume)
    teacher, priv_manifest = load_prompted(ckpt, ds, signals, accelerator.device)
    check_teacher_fits(teacher, cfg.student, cfg.data, plan)
    t0 = time.perf_counter()
    with accelerator.autocast():
        targets = privileged_targets(teacher, list(desc_items.values()),
                                     cfg.eval.batch_size, plan.priv_attn > 0)
    log.info("privileged targets of the prompted network for %d train samples (%.0fs)",
             len(targets), time.perf_counter() - t0)
    del teacher
    return targets, priv_manifest
