"""A whole distillation run (``configs/distill/``): the sections and their cross-checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from workbench.config.data import DataConfig
from workbench.config.evaluation import EvalConfig
from workbench.config.fields import check
from workbench.config.student import StudentConfig
from workbench.config.train import TrainConfig


@dataclass
class SignalsConfig:
    """Which teacher outputs a distillation run reads from a cache (``workbench cache run``).

    Training joins the dataset's samples to the cache by sample id and refuses to start
    when the cache was made from other data, with another template or teacher, or holds
    too few ok answers. An empty ``cache_dir`` means gold labels only.
    """

    cache_dir: str = ""
    """Teacher cache directory (holds ``cache.sqlite``); empty: no teacher signals."""
    soft_label_template: str = "sentiment_score"
    """Template whose soft labels (distributions over the label bins) the student is
    distilled from, on train samples; empty: no soft labels."""
    description_template: str = "context_aware"
    """Template whose descriptions the prompted network reads (``train.privileged.enabled``
    or ``student.prompted: true``), on train and valid samples; read only then."""
    teacher: str = ""
    """Use the cache's jobs of this teacher (model id, with or without ``@revision``);
    empty: the only job of each template for this data."""
    min_ok_fraction: float = 0.9
    """Refuse a job with ok answers for fewer than this fraction of the samples asked for."""
    control: Literal["none", "uniform", "shuffled"] = "none"
    """A control that tells distillation from regularisation, for ablations: the same
    samples get the same soft-label terms (weight, temperature), but ``uniform`` replaces
    each soft label by the uniform distribution over the bins (what label smoothing and
    a confidence penalty do) and ``shuffled`` hands each train sample the soft label of
    another (a seeded permutation: the teacher's label marginal without its per-sample
    knowledge). ``none``: the teacher's own soft labels."""

    def __post_init__(self) -> None:
        check(0.0 <= self.min_ok_fraction <= 1.0, "signals.min_ok_fraction",
              self.min_ok_fraction, "use a fraction in [0, 1]")
        check(self.control == "none" or bool(self.cache_dir and self.soft_label_template),
              "signals.control", self.control,
              "a control replaces the teacher's soft labels on the samples they cover: set "
              "signals.cache_dir and signals.soft_label_template, or signals.control=none")


@dataclass
class LossConfig:
    """Weights of the distillation losses added to the gold-label task loss (weight 1).

    A term whose signal is absent (no cache, no privileged network) is not computed.
    """

    soft_label_kd: float = 1.0
    """Weight of ``T^2 KL(teacher || student)`` over the label bins (teacher soft labels)."""
    expected_score: float = 0.5
    """Weight of |student's expected score over the bins - teacher's expected score|
    (regression only)."""
    temperature: float = 1.0
    """Distillation temperature ``T`` of the soft-label KD."""
    unimodal_aux: float = 0.0
    """Weight of the gold-label loss of each modality's auxiliary head (averaged over the
    modalities, each on the samples that have it)."""
    label_smoothing: float = 0.0
    """Label smoothing of the cross-entropy task loss (classification): the gold class
    gets ``1 - eps + eps / C``, every class ``eps / C``. With teacher soft labels off it is
    the control that says whether soft labels helped as knowledge or as smoothing."""

    def __post_init__(self) -> None:
        for name in ("soft_label_kd", "expected_score", "unimodal_aux"):
            check(getattr(self, name) >= 0, f"loss.{name}", getattr(self, name),
                  "use 0 (term off) or a positive weight")
        check(self.temperature > 0, "loss.temperature", self.temperature,
              "use a positive temperature, e.g. 1.0 or 2.0")
        check(0.0 <= self.label_smoothing < 1.0, "loss.label_smoothing", self.label_smoothing,
              "use 0 (off) or a fraction in (0, 1), e.g. 0.1")


@dataclass
class DistillConfig:
    """A whole distillation run: ``accelerate launch distill.py --config ...``."""

    data: DataConfig = field(default_factory=DataConfig)
    signals: SignalsConfig = field(default_factory=SignalsConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        classification = self.data.task == "classification"
        # data.task implies the loss and the selection metric unless the recipe sets them
        if self.train.task_loss == "auto":
            self.train.task_loss = "ce" if classification else "l1"
        if self.train.select_metric == "auto":
            self.train.select_metric = "valid_f1_weighted" if classification else "valid_mae"
        check((self.train.task_loss == "ce") == classification, "train.task_loss",
              self.train.task_loss,
              "use ce for a classification dataset" if classification
              else "use l1 or mse for a regression dataset (ce is for classification)")
        check(self.loss.label_smoothing == 0 or classification, "loss.label_smoothing",
              self.loss.label_smoothing,
              "label smoothing applies to the cross-entropy of a classification task; for "
              "a regression task use signals.control=uniform as the smoothing control")
        sig = self.signals
        # (student.prompted alone is checked when training starts: the config of a
        # prompted checkpoint may be loaded without its cache.)
        privileged = self.train.privileged.enabled
        if privileged:
            check(bool(sig.cache_dir), "signals.cache_dir", sig.cache_dir,
                  "train.privileged.enabled=true needs the teacher's descriptions: point it "
                  "at a teacher cache, or set train.privileged.enabled=false")
            check(bool(sig.description_template), "signals.description_template",
                  sig.description_template,
                  "train.privileged.enabled=true needs a description template, e.g. "
                  "context_aware")
        check(not (privileged and self.student.prompted),
              "student.prompted", self.student.prompted,
              "with train.privileged.enabled=true the prompted network is stage 1 and the "
              "student stays plain (it never sees descriptions); set student.prompted=false")
        if self.train.weighting.enabled:
            check(bool(sig.cache_dir and sig.soft_label_template), "train.weighting.enabled",
                  True,
                  "quality weights score the teacher's soft labels: set signals.cache_dir "
                  "and signals.soft_label_template, or train.weighting.enabled=false")
        if self.train.augment.enabled:
            check(bool(sig.cache_dir and sig.soft_label_template), "train.augment.data",
                  self.train.augment.data,
                  "augmented samples are weighted by the teacher's soft labels on them: set "
                  "signals.cache_dir (holding a soft-label job on the augmented data) and "
                  "signals.soft_label_template, or leave train.augment.data empty")
        check(not (self.train.msmix.enabled and classification), "train.msmix.enabled",
              self.train.msmix.enabled,
              "MS-Mix's intensity heads predict |score| of a regression label; use a "
              "regression dataset or set train.msmix.enabled=false")
        for name in ("msmix", "conflict"):
            check(not (getattr(self.train, name).enabled and self.student.prompted),
                  f"train.{name}.enabled", getattr(self.train, name).enabled,
                  "it trains the plain student, not the prompted network "
                  "(student.prompted=true); use train.privileged.enabled=true or set it "
                  "false")
