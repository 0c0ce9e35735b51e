"""The optimisation loop (``train:`` of a distillation recipe)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from workbench.config.fields import check
from workbench.config.methods import AugmentConfig, ConflictConfig, MissingConfig, MsMixConfig


@dataclass
class WeightingConfig:
    """Quality-aware sample weights, after QASA (``students.weighting``): with ``enabled``
    each train sample's weight is ``floor + (1 - floor) * c * o * a * s`` from the teacher's
    confidence, its on-label mass, its agreement with the gold label and (augmented
    samples) the rewrite's consistency with its source; off: all ones. Needs teacher soft
    labels (``signals``). ``floor`` is also the floor of the augmented samples' fixed
    weights (``train.augment``)."""

    enabled: bool = False
    floor: float = 0.1
    """Smallest weight, so no sample is silently dropped (in (0, 1])."""
    agreement_scale: float = 0.0
    """|teacher expected score - gold| at which agreement reaches 0; 0: half the width of
    the dataset's label range."""

    def __post_init__(self) -> None:
        check(0.0 < self.floor <= 1.0, "train.weighting.floor", self.floor,
              "use a floor in (0, 1]; 1 turns quality weighting into all ones")
        check(self.agreement_scale >= 0, "train.weighting.agreement_scale",
              self.agreement_scale, "use 0 (half the label range) or a positive number")


@dataclass
class PrivilegedConfig:
    """MMSLF two-stage distillation (``students.privileged``). With ``enabled``, stage 1
    trains the prompted network -- this student plus a branch that reads the teacher's
    cached descriptions (``signals.description_template``; the branch's own settings are
    the student's, ``student.prompt_encoder`` / ``prompt_max_len`` / ``prompt_fusion``, as
    a prompted checkpoint rebuilds it from ``student``) -- on gold labels into
    ``<output_dir>/prompted/`` (or reuses ``checkpoint``); stage 2 trains the plain student
    on gold labels, soft labels and the KD terms below from that frozen network. The plain
    student never sees a description."""

    enabled: bool = False
    checkpoint: str = ""
    """``checkpoint-best`` directory of a trained prompted network to reuse (empty: stage 1
    runs inside this run)."""
    epochs: int = 0
    """Epochs of stage 1; 0: the same as ``train.epochs``."""
    pred_weight: float = 1.0
    """Weight of the KD from the prompted network's prediction (L1 for regression, KL of
    the class distributions for classification)."""
    repr_weight: float = 0.5
    """Weight of the KD from its fused representation (through the student's projection
    ``kd_proj``, width ``student.kd_repr_dim``)."""
    repr_kind: Literal["cosine", "mse"] = "cosine"
    """Distance for the representation KD."""
    attn_weight: float = 0.0
    """Weight of the KD from its text-to-modality fusion attention."""

    def __post_init__(self) -> None:
        check(self.epochs >= 0, "train.privileged.epochs", self.epochs,
              "use 0 (same as train.epochs) or a positive count")
        for name in ("pred_weight", "repr_weight", "attn_weight"):
            check(getattr(self, name) >= 0, f"train.privileged.{name}", getattr(self, name),
                  "use 0 (term off) or a positive weight")
        check(not self.checkpoint or self.enabled, "train.privileged.checkpoint",
              self.checkpoint,
              "it is only read with train.privileged.enabled=true; set that or leave it empty")


@dataclass
class TrainConfig:
    """The optimisation loop (``students.trainer``)."""

    output_dir: str = "runs/student"
    """Run directory: ``checkpoint-best/``, ``last/`` (resume state), ``prompted/`` (stage 1
    of ``privileged: prompted``), the resolved config and, with tracking, the logs."""
    seed: int = 1111
    """Seeds the weights' initialisation, the data order and the masks; each epoch's data
    order and masks depend only on (seed, epoch), so a resumed run equals an unbroken one."""
    epochs: int = 10
    batch_size: int = 32
    """Samples per process and step (before gradient accumulation)."""
    grad_accum: int = 1
    """Batches whose gradients add up before each optimizer step."""
    lr: float = 5e-4
    """Learning rate of everything but the text encoder (encoders, fusion, heads)."""
    encoder_lr: float = 1e-4
    """Learning rate of the text encoder's trainable weights (LoRA adapter or, in ``full``
    mode, the whole encoder)."""
    weight_decay: float = 0.01
    """AdamW weight decay (biases and norm weights get none)."""
    warmup_ratio: float = 0.1
    """Fraction of the optimizer steps with a linear warmup; a cosine decay follows."""
    max_grad_norm: float = 1.0
    """Clip the gradient norm to this before each step; 0 turns clipping off."""
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    """Autocast through accelerate; ``fp16`` needs a GPU, ``bf16`` a GPU or CPU with bf16."""
    task_loss: Literal["auto", "l1", "mse", "ce"] = "auto"
    """Loss against gold labels: ``l1`` / ``mse`` for regression, ``ce`` for classification;
    ``auto`` (resolved by the run's config from ``data.task``): ``ce`` for a classification
    dataset, else ``l1``."""
    select_metric: str = "auto"
    """Validation metric that picks the checkpoint (``valid_`` + a metric name of the
    dataset's metric set, e.g. ``valid_mae``, ``valid_acc2_non0``, ``valid_f1_weighted``,
    or ``valid_loss``: the unweighted task loss on the validation split, cross-entropy for
    classes, which moves smoothly where a few dozen validation samples make F1 jump);
    ``auto``: ``valid_f1_weighted`` for a classification dataset, else ``valid_mae``."""
    select_mode: Literal["auto", "min", "max"] = "auto"
    """Whether smaller or larger ``select_metric`` is better; ``auto`` takes it from the
    metric (``workbench.metrics.higher_is_better``); an explicit value must agree with it."""
    folds: int = 0
    """K-fold cross-validation (a small dataset's protocol): with ``folds=k`` (>= 2) the
    train and valid samples are pooled and cut into ``k`` folds, stratified by class (or
    by score quantile) and seeded by ``fold_seed``; fold ``fold`` is this run's validation
    split, the other ``k - 1`` train. The test split is untouched. Train one run per fold
    (``train.fold=0..k-1``) and evaluate them together: ``workbench eval`` groups the
    folds of a recipe like seeds (mean ± std). 0: the dataset's own train/valid split."""
    fold: int = 0
    """Which fold is the validation split (``0 <= fold < folds``)."""
    fold_seed: int = 0
    """Seed of the fold assignment (the same for every fold of one protocol)."""
    holdout_domain: str = ""
    """A domain (``data.domain``) left out of training and validation (leave-one-domain-out);
    empty: every sample trains."""
    early_stop_patience: int = 5
    """Stop after this many epochs without a better validation value; 0: never stop early."""
    average_epochs: int = 0
    """Average the weights of the last ``average_epochs`` epochs into ``checkpoint-best``
    (weight averaging over epochs, after SWA) instead of picking the epoch with the best
    ``select_metric``: no choice rests on a few dozen validation samples, which is what a
    small dataset needs. Validation still runs each epoch and scores the average (its
    ``selection.json``); it needs ``early_stop_patience=0`` and at most ``epochs``. 0:
    select one epoch."""
    num_workers: int = 0
    """DataLoader worker processes (0: collate in the training process)."""
    weighting: WeightingConfig = field(default_factory=WeightingConfig)
    """Quality-aware per-sample weights (after QASA; off by default: all ones)."""
    missing: MissingConfig = field(default_factory=MissingConfig)
    """LNLN missing-modality training (off by default)."""
    privileged: PrivilegedConfig = field(default_factory=PrivilegedConfig)
    """MMSLF two-stage distillation from a prompted network (off by default)."""
    log_with: Literal["none", "tensorboard"] = "none"
    """Experiment tracking through accelerate's trackers: ``tensorboard`` writes event files
    under ``<output_dir>/`` (needs the ``tensorboard`` package); ``none`` logs only text."""
    overwrite: bool = False
    """Start afresh in an ``output_dir`` that already holds a run. Without it such a run
    must be continued (``--resume``) or written elsewhere."""
    group_by_length: bool = False
    """Batch training samples of similar text length together (within random groups of
    50 batches; batch order still shuffled): much less padding, so faster steps on CPU."""
    batch_tokens: int = 0
    """Token budget of a training batch: with ``group_by_length``, each window of 50 x
    ``batch_size`` samples (a random draw from (seed, epoch)) is sorted by text length
    and cut into batches of as many samples as fit ``batch_tokens`` padded tokens
    (samples x the longest text's tokens; a longer text goes alone), and all batches are
    shuffled: short texts train in large batches, long ones in small. Each batch's loss
    is the weighted mean over its samples, as with a fixed size (a short-text batch of
    many samples makes one step, like a long-text batch of few). 0: ``batch_size``
    samples per batch, the order as before. (Validation is cut by token count whatever
    this is: ``eval.batch_size`` x the mean count per batch, in one process.)"""
    num_threads: int = 0
    """Torch intra-op CPU threads per process; 0: torch's default (all cores). On a small
    or shared machine 1 is often several times faster than oversubscribed threads."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    """Teacher augmentation with quality-aware weights (after QASA; off by default)."""
    msmix: MsMixConfig = field(default_factory=MsMixConfig)
    """MS-Mix, sentiment-aware mixup of the encoded modalities (off by default)."""
    conflict: ConflictConfig = field(default_factory=ConflictConfig)
    """Conflict-aware gradient penalty plus a statistical loss (off by default)."""

    def __post_init__(self) -> None:
        check(self.num_threads >= 0, "train.num_threads", self.num_threads,
              "use 0 (torch's default) or a positive thread count")
        check(self.epochs >= 1, "train.epochs", self.epochs, "use at least 1")
        check(self.batch_size >= 1, "train.batch_size", self.batch_size, "use at least 1")
        check(self.grad_accum >= 1, "train.grad_accum", self.grad_accum, "use at least 1")
        check(self.lr > 0, "train.lr", self.lr, "use a positive learning rate")
        check(self.encoder_lr >= 0, "train.encoder_lr", self.encoder_lr,
              "use a non-negative learning rate (0 keeps the text encoder's weights fixed)")
        check(self.weight_decay >= 0, "train.weight_decay", self.weight_decay,
              "use 0 or a positive decay")
        check(self.max_grad_norm >= 0, "train.max_grad_norm", self.max_grad_norm,
              "use 0 (no clipping) or a positive norm, e.g. 1.0")
        check(0.0 <= self.warmup_ratio < 1.0, "train.warmup_ratio", self.warmup_ratio,
              "use a fraction in [0, 1)")
        check(self.early_stop_patience >= 0, "train.early_stop_patience",
              self.early_stop_patience, "use 0 (no early stopping) or a positive count")
        check(0 <= self.average_epochs <= self.epochs, "train.average_epochs",
              self.average_epochs,
              f"use 0 (select one epoch) or 1..train.epochs ({self.epochs}) last epochs")
        check(not (self.average_epochs and self.early_stop_patience), "train.average_epochs",
              self.average_epochs,
              "averaging the last epochs needs every epoch: set train.early_stop_patience=0 "
              "(or train.average_epochs=0 to select one epoch)")
        check(self.batch_tokens >= 0, "train.batch_tokens", self.batch_tokens,
              "use 0 (train.batch_size samples per batch) or a positive token budget, "
              "e.g. 1024")
        check(not self.batch_tokens or self.group_by_length, "train.batch_tokens",
              self.batch_tokens,
              "a token budget batches texts of similar length: set train.group_by_length="
              "true (or train.batch_tokens=0)")
        check(self.num_workers >= 0, "train.num_workers", self.num_workers, "use 0 or more")
        check(self.folds == 0 or self.folds >= 2, "train.folds", self.folds,
              "use 0 (the dataset's own valid split) or k >= 2 folds, e.g. 5")
        check(self.folds == 0 or 0 <= self.fold < self.folds, "train.fold", self.fold,
              f"name a fold in 0..{max(self.folds - 1, 0)} (train.folds={self.folds})")
        check(self.folds > 0 or self.fold == 0, "train.fold", self.fold,
              "it is only read with train.folds >= 2; set train.folds or leave it 0")
        check(self.select_metric == "auto" or self.select_metric.startswith("valid_"), "train.select_metric",
              self.select_metric,
              "checkpoints are selected on the validation split only; use valid_<metric>")
