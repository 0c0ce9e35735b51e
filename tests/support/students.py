"""Students, samples and dataset infos built in code (the real MiniLM, tiny widths), shared
by the student, method, trainer, predict and export tests."""

from __future__ import annotations

import numpy as np
import torch

from students.collate import StudentItem, TeacherSignal
from students.methods import active
from students.model import build_student
from students.objective import LossPlan, plan_losses
from workbench.config import DistillConfig, LoraConfig, StudentConfig
from workbench.data.schema import Sample
from workbench.data.store import DataInfo

BINS = [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0]
DA, DV = 6, 4
"""Feature widths of :func:`make_info` / :func:`make_samples`."""
HID = 32
"""Width of :func:`student_cfg`."""

VEC = DataInfo(name="tiny", task="regression", metric_set="mosi", label_range=(-3.0, 3.0),
               class_names=[], modalities=["text", "audio"], feature_dims={"audio": 3},
               feature_kind={"audio": "vector"})
SEQ = DataInfo(name="seq", task="regression", metric_set="mosi", label_range=(-3.0, 3.0),
               class_names=[], modalities=["text", "audio", "vision"],
               feature_dims={"audio": 4, "vision": 3},
               feature_kind={"audio": "sequence", "vision": "vector"})

def tiny_info() -> DataInfo:
    """Regression, text + audio (6-d) + vision (5-d) vectors: what :func:`train_items`
    hold."""
    return DataInfo(name="tiny", task="regression", metric_set="mosi", label_range=(-3.0, 3.0),
                    class_names=[], modalities=["text", "audio", "vision"],
                    feature_dims={"audio": 6, "vision": 5},
                    feature_kind={"audio": "vector", "vision": "vector"})


def train_items(n: int = 8, seed: int = 0, description: bool = False) -> list[StudentItem]:
    """``n`` train items with gold labels and soft labels near them (sample 3 has no
    vision)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        y = float(np.round(rng.uniform(-3, 3), 1))
        p = np.exp(-0.8 * (np.array(BINS) - y) ** 2)
        p /= p.sum()
        s = Sample(id=f"s{i}", text=f"the film was {'great' if y > 0 else 'dull'} number {i}",
                   split="train", label=y,
                   audio=(rng.normal(size=6) + y).astype(np.float32),
                   vision=None if i == 3 else (rng.normal(size=5) - y).astype(np.float32))
        sig = TeacherSignal(probs=p, expected=float(p @ np.array(BINS)),
                            entropy=float(-(p * np.log(p)).sum()), off_mass=0.02,
                            description=("the speaker sounds happy" if y > 0 else "sad")
                            if description else None)
        out.append(StudentItem(s, sig))
    return out


def tiny_student(**kw):
    """A width-16 MiniLM + LoRA student on :func:`tiny_info`, seeded."""
    cfg = StudentConfig(hidden=16, heads=2, bottleneck_tokens=2, max_text_len=16,
                        prompt_max_len=16, dropout=0.0,
                        lora=LoraConfig(r=2, alpha=4, dropout=0.0), **kw)
    torch.manual_seed(0)
    return build_student(cfg, tiny_info(), BINS)


def student_cfg(**kw) -> StudentConfig:
    """A width-32 MiniLM + LoRA (r=4) student config; ``kw`` override it."""
    base = dict(hidden=HID, heads=4, bottleneck_tokens=2, max_text_len=16, dropout=0.0,
                lora=LoraConfig(r=4, alpha=8, dropout=0.0, target_modules=["query", "value"]))
    base.update(kw)
    return StudentConfig(**base)


def make_info(audio="sequence", vision="vector", task="regression", mods=("text", "audio", "vision")):
    dims = {m: d for m, d in (("audio", DA), ("vision", DV)) if m in mods}
    kinds = {m: k for m, k in (("audio", audio), ("vision", vision)) if m in mods}
    return DataInfo(name="tiny", task=task, metric_set="mosi" if task == "regression"
                    else "classification", label_range=(-3.0, 3.0),
                    class_names=["neg", "neu", "pos"] if task == "classification" else [],
                    modalities=list(mods), feature_dims=dims, feature_kind=kinds)


def make_samples(n=8, audio="sequence", vision="vector", seed=0, seq=7):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = float(np.round(rng.uniform(-3, 3), 1))
        a = (rng.normal(size=(seq, DA)) if audio == "sequence" else rng.normal(size=DA))
        v = (rng.normal(size=(seq, DV)) if vision == "sequence" else rng.normal(size=DV))
        a = a.astype(np.float32) + label * 0.3
        v = v.astype(np.float32) - label * 0.3
        out.append(Sample(
            id=f"u{i}", text=f"honestly the movie was {'great' if label > 0 else 'awful'} {i}",
            split="train", label=label, label_class=int(label > 0) + int(label > 1),
            audio=None if i == 1 else a,
            audio_length=(int(rng.integers(1, seq + 1)) if audio == "sequence" else None),
            vision=None if i == 2 else v,
            vision_length=(int(rng.integers(1, seq + 1)) if vision == "sequence" else None)))
    return out


def teacher_signal(s: Sample, desc: str = "") -> TeacherSignal:
    p = np.exp(-0.5 * (np.array(BINS) - (s.label or 0.0)) ** 2)
    p /= p.sum()
    return TeacherSignal(probs=p, expected=float(p @ np.array(BINS)),
                         description=desc or f"the speaker sounds {'happy' if s.label > 0 else 'sad'}")


def train_steps(model, batch, plan, steps: int = 12, lr: float = 1e-2, rng_seed: int = 0):
    """``steps`` Adam steps of :func:`students.objective.training_losses` on one batch
    (dropout off, eval-free); returns every step's loss dict (floats)."""
    from students.objective import freeze_unused, training_losses

    freeze_unused(model, plan)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    history = []
    for step in range(steps):
        opt.zero_grad()
        parts = training_losses(model, batch, plan, model.bins if len(model.bins) else None,
                                rng=np.random.default_rng(rng_seed + step))
        parts["total"].backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in parts.items()})
    return history


def plan_for(cfg: DistillConfig, *, soft_labels: bool = False,
             privileged: bool = False) -> LossPlan:
    """The loss plan the trainer makes of run config ``cfg``: its loss and data sections,
    ``train.task_loss``, the methods it switches on, and the MMSLF terms with
    ``privileged``."""
    return plan_losses(cfg.loss, cfg.data, task_kind=cfg.train.task_loss,
                       methods=active(cfg.student, cfg.train), soft_labels=soft_labels,
                       privileged=cfg.train.privileged if privileged else None)
