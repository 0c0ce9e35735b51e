"""One config object per method, PEFT-style: its switch and all its knobs in one place.

Each object is handed as a whole to its method (:mod:`students.methods`, which builds the
method object from it). Every method is off by default and switched by its ``enabled``
field; several may be on at once. A method that changes the model sits in ``student``
(its parts are saved with the checkpoint and rebuilt from it), one that changes training
only in ``train``:

============================  ========================================================
``train.msmix``               :class:`MsMixConfig` (``students.methods.msmix``)
``train.conflict``            :class:`ConflictConfig` (``students.methods.conflict``)
``train.missing``             :class:`MissingConfig` (``students.methods.missing``)
``student.enhance``           :class:`EnhanceConfig` (``students.methods.enhance``)
``student.dashfusion``        :class:`DashFusionConfig` (``students.methods.dashfusion``;
                              the student's fusion, in place of the gated one)
``student.cyin``              :class:`CyinConfig` (``students.methods.cyin``)
``student.midg``              :class:`MidgConfig` (``students.methods.midg``)
``train.augment``             :class:`AugmentConfig` (``students.augment``): a training
                              stage, not a method; on when ``data`` is set
============================  ========================================================

A switch may be given alone, ``train.msmix=true`` (the loader reads a bool given for a
method object as its ``enabled``). Recipes written before these objects existed use flat
keys (``train.msmix_alpha``, ``loss.conflict_tau``, ``student.enhance_k``, ...) or choices
(``student.fusion=dashfusion``, ``student.latent=cyin``, ``student.experts=midg``): the
loader maps them once, with a deprecation note (:mod:`workbench.config.legacy`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from workbench.config.fields import check


@dataclass
class MsMixConfig:
    """MS-Mix: sentiment-aware mixup of the encoded modalities inside each training step
    (regression datasets). Pairs come from a seeded permutation of the batch and are mixed
    only when, for every modality both have, their pooled representations agree (cosine >
    ``threshold``) and they have the same modalities. Per modality the ratio blends a
    Beta(``alpha``, ``alpha``) draw with the relative intensity predicted by that
    modality's intensity head (trained on |gold score|, ``intensity_weight``); the mixed
    label uses the mean ratio. Adds ``weight`` x the task loss on mixed samples and
    ``kl_weight`` x a KL alignment of the modalities' predicted distributions on them
    (Gaussians around the unimodal heads' scores over the label bins)."""

    enabled: bool = False
    alpha: float = 0.5
    """Beta(alpha, alpha) of the base mixing ratio."""
    threshold: float = 0.3
    """Cosine similarity every shared modality of a pair must exceed to be mixed (-1: mix
    every pair with the same modalities)."""
    weight: float = 1.0
    """Weight of the task loss on the mixed samples (mixed labels)."""
    kl_weight: float = 0.1
    """Weight of the KL alignment between the modalities' predicted distributions on the
    mixed samples (mean over ordered modality pairs)."""
    intensity_weight: float = 0.1
    """Weight of the intensity heads' L1 loss against |gold score|."""

    def __post_init__(self) -> None:
        check(self.alpha > 0, "train.msmix.alpha", self.alpha,
              "use a positive Beta parameter, e.g. 0.5")
        check(-1.0 <= self.threshold < 1.0, "train.msmix.threshold", self.threshold,
              "use a cosine similarity in [-1, 1), e.g. 0.3")
        for name in ("weight", "kl_weight", "intensity_weight"):
            check(getattr(self, name) >= 0, f"train.msmix.{name}", getattr(self, name),
                  "use 0 (term off) or a positive weight")


@dataclass
class ConflictConfig:
    """Conflict-aware gradient penalty plus a statistical loss. Each step, each modality's
    own contribution to the fusion sum goes through the shared layers (fusion tail +
    prediction head) to a gold-label loss; its gradient on those shared weights is taken
    with ``create_graph=True`` (the penalty is differentiable). Penalised: dominance
    ``relu(max_m |g_m| / mean_m |g_m| - tau)`` and opposition ``mean over pairs
    relu(-cos(g_a, g_b))``, with ``weight``; and ``statistical_weight`` x the squared gaps
    between the batch mean / std of the predictions and the train split's gold-label mean /
    std (class frequencies for classification)."""

    enabled: bool = False
    weight: float = 0.1
    """Weight of the gradient-conflict penalty."""
    tau: float = 1.5
    """Max / mean ratio of the modalities' gradient norms tolerated before dominance is
    penalised (>= 1; with M modalities the ratio is <= M)."""
    statistical_weight: float = 0.1
    """Weight of the statistical loss."""

    def __post_init__(self) -> None:
        for name in ("weight", "statistical_weight"):
            check(getattr(self, name) >= 0, f"train.conflict.{name}", getattr(self, name),
                  "use 0 (term off) or a positive weight")
        check(self.tau >= 1.0, "train.conflict.tau", self.tau,
              "use a ratio of at least 1 (max over mean gradient norm), e.g. 1.5")


@dataclass
class AugmentConfig:
    """Teacher augmentation with quality-aware weights (after QASA). On when ``data`` is
    set: the directory written by ``workbench data augment`` (or its ``data.yaml``),
    holding paraphrases of the train transcripts (id ``SOURCE#v``, the source's label and
    audio / visual features). Their soft labels are read from ``signals.cache_dir``
    (template ``signals.soft_label_template``, a second caching pass on that dataset,
    joined by its own fingerprint). Each rewrite is added to the train split only, with a
    fixed weight ``floor + (1 - floor) * c * o * a * s``: ``c`` teacher confidence (1 -
    normalised entropy of its soft label; 0 if the teacher gave none), ``o`` 1 - off-label
    mass, ``a`` agreement of the teacher's expected score with the source's gold label,
    ``s`` cosine similarity of the rewrite to its source under the student's pre-training
    text encoder (mean-pooled, clipped to [0, 1]); ``floor`` is ``train.weighting.floor``:
    rewrites are down-weighted, never dropped. The weights are logged (summary and
    histogram) and saved as ``<output_dir>/augment_weights.csv``."""

    data: str = ""
    """The augmented dataset; empty: no augmentation."""

    @property
    def enabled(self) -> bool:
        return bool(self.data)


@dataclass
class MissingConfig:
    """LNLN missing-modality training: random per-sample, per-modality missing rates,
    seeded by (seed, epoch, sample id). A privileged teacher always sees complete
    inputs."""

    enabled: bool = False
    complete_fraction: float = 0.5
    """Fraction of training samples kept complete."""

    def __post_init__(self) -> None:
        check(0.0 <= self.complete_fraction <= 1.0, "train.missing.complete_fraction",
              self.complete_fraction, "use a fraction in [0, 1]")


@dataclass
class EnhanceConfig:
    """Cross-sample enhancement of missing / masked audio and vision (after HME,
    ``students.enhance``): a sample whose modality is missing or partly masked retrieves
    its ``k`` nearest complete training samples by the modalities it has (cosine of pooled
    representations), takes their similarity-weighted mean representation of the missing
    modality, and blends it with its own through a learned gate on [original, enriched,
    uncertainty, observed fraction] (uncertainty: the normalised entropy of the neighbours'
    softmax weights). The neighbours come from a memory bank: a FIFO queue of the ``bank``
    most recent complete training samples, filled during training forward passes, frozen
    at evaluation, and saved in the checkpoint (model buffers), so a checkpoint alone
    evaluates. Works best with ``train.missing.enabled=true``. Off: the model and its
    checkpoints are unchanged."""

    enabled: bool = False
    k: int = 5
    """Neighbours per enhanced sample (at most ``bank``)."""
    bank: int = 512
    """Rows of the memory bank (complete training samples kept; part of the checkpoint)."""
    temperature: float = 0.1
    """Temperature of the softmax over the neighbours' cosine similarities."""

    def __post_init__(self) -> None:
        check(self.k >= 1, "student.enhance.k", self.k, "use at least 1 neighbour, e.g. 5")
        check(self.bank >= self.k, "student.enhance.bank", self.bank,
              f"the bank must hold at least student.enhance.k={self.k} rows, e.g. 512")
        check(self.temperature > 0, "student.enhance.temperature", self.temperature,
              "use a positive temperature, e.g. 0.1")


@dataclass
class DashFusionConfig:
    """DashFusion (dual-stream alignment, hierarchical bottleneck fusion;
    ``students.methods.dashfusion``): with ``enabled`` it *is* the student's fusion (in
    place of the gated bottleneck fusion). Temporal alignment:
    the text tokens cross-attend to the audio / vision frames. Fusion: ``depth`` layers
    whose bottleneck keeps ``bottleneck`` tokens, halved each layer (at least 1); the
    modality streams exchange information only through it. Training adds
    ``align_weight`` x InfoNCE between text and each other modality of the same sample
    (semantic alignment) and ``supcon_weight`` x a supervised contrastive loss on the
    fused vector (positives: same polarity, or same class)."""

    enabled: bool = False
    bottleneck: int = 8
    """Bottleneck tokens of the first fusion layer (halved each further layer)."""
    depth: int = 2
    """Fusion layers."""
    align_weight: float = 0.1
    """Weight of the semantic-alignment InfoNCE (0: off)."""
    supcon_weight: float = 0.1
    """Weight of the supervised contrastive loss on the fused vector (0: off)."""
    temperature: float = 0.1
    """Temperature of both contrastive losses."""

    def __post_init__(self) -> None:
        check(self.bottleneck >= 1, "student.dashfusion.bottleneck", self.bottleneck,
              "use at least 1 token, e.g. 8")
        check(self.depth >= 1, "student.dashfusion.depth", self.depth,
              "use at least 1 fusion layer, e.g. 2")
        for name in ("align_weight", "supcon_weight"):
            check(getattr(self, name) >= 0, f"student.dashfusion.{name}", getattr(self, name),
                  "use 0 (term off) or a positive weight")
        check(self.temperature > 0, "student.dashfusion.temperature", self.temperature,
              "use a positive temperature, e.g. 0.1")


@dataclass
class CyinConfig:
    """CyIN (cyclic informative latent space; ``students.methods.cyin``). Each modality
    passes a variational bottleneck (token-level: mean, log-variance, reparameterisation, KL
    to N(0, I); decoders reconstruct every modality from every latent, cyclically; label-
    level: a head per latent predicts the label); residual translators map each modality's
    latent to every other's, trained forward and in reverse (cycle consistency). A missing
    modality's latent is the mean of its translations from those present, so one model
    serves complete and incomplete inputs. Adds ``kl_weight`` x KL + ``recon_weight`` x
    reconstruction + ``label_weight`` x label loss + ``translate_weight`` x forward +
    ``cycle_weight`` x reverse translation errors."""

    enabled: bool = False
    inter: int = 0
    """Inner width of the encoders, decoders and translators; 0: ``student.hidden``."""
    kl_weight: float = 0.01
    """Weight of the KL term (the bottleneck's beta)."""
    recon_weight: float = 0.1
    """Weight of the cyclic reconstruction error."""
    label_weight: float = 0.1
    """Weight of the label-level bottleneck (task loss of each latent's head)."""
    translate_weight: float = 0.1
    """Weight of the forward translation error."""
    cycle_weight: float = 0.1
    """Weight of the reverse (cycle-consistency) translation error."""
    substitute_prob: float = 0.25
    """Training only: probability that a present modality's latent is replaced by its
    translation from the others (the fusion learns to read translations)."""

    def __post_init__(self) -> None:
        check(self.inter >= 0, "student.cyin.inter", self.inter,
              "use 0 (student.hidden) or a positive width")
        for name in ("kl_weight", "recon_weight", "label_weight", "translate_weight",
                     "cycle_weight"):
            check(getattr(self, name) >= 0, f"student.cyin.{name}", getattr(self, name),
                  "use 0 (term off) or a positive weight")
        check(0.0 <= self.substitute_prob < 1.0, "student.cyin.substitute_prob",
              self.substitute_prob, "use a probability in [0, 1), e.g. 0.25")


@dataclass
class MidgConfig:
    """MIDG (mixture of invariant experts, cross-modal adapter; ``students.methods.midg``).
    A router mixes ``n_experts`` residual experts over the fused vector (``balance_weight``
    x the Switch load-balance term); ``invariance_weight`` x an invariance penalty across
    the domains of the batch (``data.domain`` says what a sample's domain is): ``vrex``
    (variance of the per-domain risks) or ``irm`` (IRMv1). With ``adapter``, cross-attention
    adapter blocks after the last ``adapter_layers`` layers of the text encoder inject the
    audio / vision tokens (beside LoRA)."""

    enabled: bool = False
    n_experts: int = 4
    """Experts of the mixture."""
    balance_weight: float = 0.01
    """Weight of the router's load-balance term."""
    invariance: Literal["vrex", "irm"] = "vrex"
    """Invariance penalty across domains."""
    invariance_weight: float = 0.1
    """Weight of the invariance penalty (0 when the batch has one domain)."""
    adapter: bool = False
    """Cross-modal adapter blocks in the text encoder."""
    adapter_layers: int = 2
    """Text-encoder layers (the last ones) followed by an adapter block."""
    adapter_rank: int = 32
    """Inner width of an adapter block."""

    def __post_init__(self) -> None:
        check(self.n_experts >= 2, "student.midg.n_experts", self.n_experts,
              "use at least 2 experts, e.g. 4")
        for name in ("balance_weight", "invariance_weight"):
            check(getattr(self, name) >= 0, f"student.midg.{name}", getattr(self, name),
                  "use 0 (term off) or a positive weight")
        check(self.adapter_layers >= 1, "student.midg.adapter_layers", self.adapter_layers,
              "use at least 1 layer, e.g. 2")
        check(self.adapter_rank >= 1, "student.midg.adapter_rank", self.adapter_rank,
              "use a positive width, e.g. 32")

