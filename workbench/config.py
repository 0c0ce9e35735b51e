"""Typed configuration: one dataclass per concern, YAML in, dotted overrides, strict keys.

Every config is a plain dataclass. :func:`load_config` reads a YAML file into one,
applies ``section.field=value`` overrides from the command line, rejects keys the
dataclass does not have (suggesting the nearest valid name), converts values to the
annotated types, and runs each dataclass's ``__post_init__`` cross-field checks.

A section of a YAML file may be a path to another YAML file instead of a mapping
(``data: ../data/mosi.yaml``); it is resolved relative to the file that names it.
:func:`dump_config` writes the resolved config (with versions) into an output dir.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from workbench.errors import WorkbenchError

__all__ = [
    "ConfigError",
    "DataConfig",
    "TeacherConfig",
    "CacheConfig",
    "StudentConfig",
    "TrainConfig",
    "SignalsConfig",
    "LossConfig",
    "EvalConfig",
    "DistillConfig",
    "load_config",
    "from_dict",
    "to_dict",
    "apply_overrides",
    "dump_config",
    "config_class_for",
]

MODALITIES = ("text", "audio", "vision")
SPLITS = ("train", "valid", "test")


class ConfigError(WorkbenchError, ValueError):
    """A config value, key or file is wrong. The message says where and what to do."""


def _check(cond: bool, field_name: str, value: Any, fix: str) -> None:
    if not cond:
        raise ConfigError(f"{field_name}={value!r} is invalid: {fix}")


# --------------------------------------------------------------------------- data


@dataclass
class DataConfig:
    """Where a dataset lives and how to read it."""

    path: str = ""
    """Dataset location: an MMSA pickle (.pkl), a manifest (.csv/.jsonl), or a directory
    written by ``workbench data import`` (Hugging Face ``datasets`` on disk)."""
    format: Literal["auto", "mmsa", "manifest", "hf"] = "auto"
    """Reader to use; ``auto`` picks from the path (.pkl -> mmsa, .csv/.jsonl -> manifest,
    directory -> hf)."""
    name: str = ""
    """Dataset name shown in reports (defaults to the file or directory stem)."""
    modalities: list[str] = field(default_factory=lambda: ["text", "audio", "vision"])
    """Modalities to keep; features of the others are dropped on load."""
    task: Literal["regression", "classification"] = "regression"
    """Regression on a sentiment score, or classification into ``class_names``."""
    metric_set: Literal["mosi", "sims", "classification"] = "mosi"
    """Which metric definitions apply (MOSI/MOSEI scale, SIMS scale, or plain classes)."""
    label_range: tuple[float, float] = (-3.0, 3.0)
    """Declared range of the score labels; labels outside it are rejected."""
    class_names: list[str] = field(default_factory=list)
    """Names of the classes for classification datasets, in label-index order."""
    # Manifest reader --------------------------------------------------------
    id_column: str = "id"
    """Manifest column holding the sample id (ignored when ``id_format`` is set)."""
    id_format: str = ""
    """Build ids from other columns, e.g. ``"{video_id}_{clip_id}"``."""
    text_column: str = "text"
    label_column: str = "label"
    class_column: str = ""
    """Manifest column holding a class index or name (optional)."""
    split_column: str = "split"
    """Manifest column holding the split of each row."""
    split_names: dict[str, str] = field(default_factory=dict)
    """Map raw split values to train/valid/test, e.g. ``{dev: valid, val: valid}``."""
    frames_column: str = ""
    """Manifest column with video frame / image paths (``;``-separated)."""
    audio_file_column: str = ""
    """Manifest column with an audio file path."""
    video_file_column: str = ""
    """Manifest column with a video file path."""
    media_root: str = ""
    """Directory that relative media paths are resolved against (default: the manifest's)."""
    features: str = ""
    """Optional ``.npz`` with per-sample feature arrays keyed by id."""
    features_id_key: str = "id"
    """Array in ``features`` holding the sample ids."""
    feature_keys: dict[str, str] = field(default_factory=lambda: {"audio": "audio", "vision": "vision"})
    """Which ``features`` array feeds each modality, e.g. ``{audio: audio, vision: video}``."""
    # MMSA reader ------------------------------------------------------------
    mmsa_text_key: Literal["raw_text"] = "raw_text"
    """MMSA field with the transcript (the student tokenizes it itself)."""
    # Validation -------------------------------------------------------------
    check_media: bool = True
    """Fail when a referenced media file does not exist."""
    nonfinite: Literal["error", "zero"] = "error"
    """NaN/inf in features: fail (default), or replace them with 0 as the MMSA toolkit
    does for the -inf values in its MOSI/MOSEI audio features."""

    def __post_init__(self) -> None:
        for m in self.modalities:
            _check(m in MODALITIES, "data.modalities", self.modalities,
                   f"each entry must be one of {list(MODALITIES)}")
        _check(len(self.modalities) > 0, "data.modalities", self.modalities,
               "keep at least one modality, e.g. [text, audio]")
        self.label_range = tuple(float(x) for x in self.label_range)  # type: ignore[assignment]
        _check(len(self.label_range) == 2 and self.label_range[0] < self.label_range[1],
               "data.label_range", self.label_range, "give [low, high] with low < high")
        if self.task == "classification":
            _check(len(self.class_names) >= 2, "data.class_names", self.class_names,
                   "classification needs at least two class names")
            _check(self.metric_set == "classification", "data.metric_set", self.metric_set,
                   "set data.metric_set=classification for a classification task")
        else:
            _check(self.metric_set != "classification", "data.metric_set", self.metric_set,
                   "use mosi or sims for a regression task, or set data.task=classification")
        for raw, split in self.split_names.items():
            _check(split in SPLITS, f"data.split_names.{raw}", split,
                   f"map each raw split to one of {list(SPLITS)}")
        for mod in self.feature_keys:
            _check(mod in ("audio", "vision"), "data.feature_keys", self.feature_keys,
                   "keys must be audio and/or vision")


# ------------------------------------------------------------------------ teacher


@dataclass
class PriceConfig:
    """Price of a teacher's tokens, in US dollars per million tokens."""

    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0

    def __post_init__(self) -> None:
        _check(self.input_per_mtok >= 0, "teacher.price.input_per_mtok", self.input_per_mtok,
               "prices are non-negative")
        _check(self.output_per_mtok >= 0, "teacher.price.output_per_mtok", self.output_per_mtok,
               "prices are non-negative")


@dataclass
class TeacherConfig:
    """A teacher model and how to reach it."""

    backend: Literal["openai_compat", "vllm_engine", "hf_local"] = "hf_local"
    """``openai_compat`` (any OpenAI-compatible server), ``vllm_engine`` (in-process vLLM,
    GPU), or ``hf_local`` (transformers on CPU/GPU)."""
    model: str = "gemma3-270m"
    """Model name sent to the API, or a local directory / ``.gguf`` file. ``gemma3-270m``
    means the GGUF shipped in the ``models`` extra."""
    revision: str = ""
    """Model revision or checksum; part of the cache key."""
    base_url: str = ""
    """Endpoint for ``openai_compat``, e.g. ``http://127.0.0.1:8080/v1``."""
    api_key_env: str = ""
    """Name of the environment variable that holds the API key (never the key itself)."""
    api: Literal["chat", "completions"] = "chat"
    """``chat``: send chat messages (instruction-tuned models); ``completions``: send the
    rendered plain prompt ending in the template's answer prefix (base models)."""
    temperature: float = 0.0
    max_tokens: int = 0
    """Cap on generated tokens; 0 uses each template's own bound."""
    top_logprobs: int = 20
    """How many alternatives per position to request for soft labels."""
    repetition_penalty: float = 1.0
    """>1 discourages repeats (small base models loop without it); 1.0 is off."""
    seed: int = 0
    max_concurrency: int = 8
    requests_per_minute: int = 0
    """0 means no limit."""
    tokens_per_minute: int = 0
    """0 means no limit."""
    timeout_s: float = 60.0
    max_retries: int = 5
    batch_size: int = 8
    """Prompts per generate call for in-process backends."""
    device: str = "auto"
    dtype: str = "auto"
    price: PriceConfig = field(default_factory=PriceConfig)
    budget_usd: float = 0.0
    """Stop the job cleanly once this much has been spent (0: no cap)."""
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.85
    max_model_len: int = 4096

    def __post_init__(self) -> None:
        if self.backend == "openai_compat":
            _check(bool(self.base_url), "teacher.base_url", self.base_url,
                   "openai_compat needs the endpoint, e.g. http://127.0.0.1:8080/v1")
        _check(not self.api_key_env.startswith(("sk-", "sk_")), "teacher.api_key_env",
               "<redacted>", "name the environment variable that holds the key, not the key")
        _check(0.0 <= self.temperature <= 2.0, "teacher.temperature", self.temperature,
               "use a value in [0, 2]; 0 for deterministic soft labels")
        _check(self.max_tokens >= 0, "teacher.max_tokens", self.max_tokens,
               "use 0 (the template's bound) or a positive cap")
        _check(0 <= self.top_logprobs <= 20, "teacher.top_logprobs", self.top_logprobs,
               "OpenAI-compatible servers accept 0..20")
        _check(self.repetition_penalty > 0, "teacher.repetition_penalty", self.repetition_penalty,
               "use 1.0 (off) or a value such as 1.2")
        _check(self.max_concurrency >= 1, "teacher.max_concurrency", self.max_concurrency,
               "use at least 1")
        _check(self.timeout_s > 0, "teacher.timeout_s", self.timeout_s, "use a positive number")
        _check(self.max_retries >= 0, "teacher.max_retries", self.max_retries, "use 0 or more")
        _check(self.batch_size >= 1, "teacher.batch_size", self.batch_size, "use at least 1")
        _check(self.budget_usd >= 0, "teacher.budget_usd", self.budget_usd,
               "use 0 for no cap or a positive amount")


# -------------------------------------------------------------------------- cache


@dataclass
class CacheConfig:
    """Where teacher outputs are stored and how many failures a job tolerates."""

    dir: str = "runs/cache"
    """Cache directory (holds ``cache.sqlite`` and ``manifest.json``)."""
    template: str = "sentiment_score"
    """Prompt template name (see ``prompts/templates``)."""
    max_error_rate: float = 0.05
    """Fail the job once more than this fraction of finished requests are errors."""
    min_ok_fraction: float = 0.9
    """Consumers (training) refuse a cache with fewer ok rows than this fraction."""
    cue_fields: list[str] = field(default_factory=list)
    """Manifest columns shown to the teacher as cues (e.g. [audio_cues, visual_cues])."""

    def __post_init__(self) -> None:
        _check(0.0 <= self.max_error_rate <= 1.0, "cache.max_error_rate", self.max_error_rate,
               "use a fraction in [0, 1]")
        _check(0.0 <= self.min_ok_fraction <= 1.0, "cache.min_ok_fraction",
               self.min_ok_fraction, "use a fraction in [0, 1]")


# ------------------------------------------------------------------------ student


@dataclass
class LoraConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["query", "value"])

    def __post_init__(self) -> None:
        _check(self.r >= 1, "student.lora.r", self.r, "use a rank of at least 1")
        _check(0.0 <= self.dropout < 1.0, "student.lora.dropout", self.dropout, "use [0, 1)")
        _check(len(self.target_modules) > 0, "student.lora.target_modules",
               self.target_modules, "name at least one module, e.g. [query, value]")


@dataclass
class StudentConfig:
    """The compact multimodal student."""

    text_encoder: str = "minilm"
    """A local transformers encoder directory; ``minilm`` means the MiniLM-L6 shipped in
    the ``models`` extra."""
    text_mode: Literal["lora", "frozen", "full"] = "lora"
    lora: LoraConfig = field(default_factory=LoraConfig)
    quantize: Literal["none", "8bit", "4bit"] = "none"
    """Load the text encoder's base weights through bitsandbytes (QLoRA)."""
    max_text_len: int = 64
    hidden: int = 128
    """Width of the fused representation."""
    bottleneck_tokens: int = 4
    dropout: float = 0.1
    prompted: bool = False
    """Add the branch that reads the teacher's cached description (MMSLF teacher network)."""
    heads: int = 4
    """Attention heads in the sequence encoders and the fusion (must divide ``hidden``)."""
    seq_encoder: Literal["transformer", "gru"] = "transformer"
    """Encoder for audio / visual frame sequences (utterance vectors always use an MLP)."""
    seq_layers: int = 1
    """Layers of the sequence encoder."""
    quant_compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Compute dtype of a 4-bit base (``float32`` on CPU; ``bfloat16`` on recent GPUs)."""
    gradient_checkpointing: bool = False
    """Activation checkpointing in the text encoder (passed to PEFT's k-bit preparation
    for quantized bases)."""
    prompt_encoder: str = ""
    """Frozen encoder for the teacher's descriptions in the prompted network; empty: the
    same model as ``text_encoder`` (a separate, frozen copy)."""
    prompt_max_len: int = 128
    """Token budget for a description."""
    prompt_fusion: Literal["film", "tokens"] = "film"
    """How a description modulates fusion: ``film`` conditions the bottleneck queries and
    scales/shifts the fused vector; ``tokens`` adds its token states as extra keys that
    every bottleneck reads."""
    kd_repr_dim: int = 0
    """Width of the teacher representation that the student's distillation projection
    maps its fused vector to; 0: same as ``hidden``."""
    enhance: bool = False
    """Cross-sample enhancement of missing / masked audio and vision (after HME,
    ``students.enhance``): a sample whose modality is missing or partly masked retrieves
    its ``enhance_k`` nearest complete training samples by the modalities it has (cosine
    of pooled representations), takes their similarity-weighted mean representation of
    the missing modality, and blends it with its own through a learned gate on
    [original, enriched, uncertainty, observed fraction] (uncertainty: the normalised
    entropy of the neighbours' softmax weights). The neighbours come from a memory bank:
    a FIFO queue of the ``enhance_bank`` most recent complete training samples, filled
    during training forward passes, frozen at evaluation, and saved in the checkpoint
    (model buffers), so a checkpoint alone evaluates. Works best with
    ``train.missing_train=true``. Off: the model and its checkpoints are unchanged."""
    enhance_k: int = 5
    """Neighbours per enhanced sample (at most ``enhance_bank``)."""
    enhance_bank: int = 512
    """Rows of the memory bank (complete training samples kept; part of the checkpoint)."""
    enhance_temperature: float = 0.1
    """Temperature of the softmax over the neighbours' cosine similarities."""

    def __post_init__(self) -> None:
        _check(self.hidden >= 8, "student.hidden", self.hidden, "use at least 8")
        _check(self.heads >= 1 and self.hidden % self.heads == 0, "student.heads", self.heads,
               f"use a head count that divides student.hidden={self.hidden}, e.g. 4")
        _check(self.seq_layers >= 1, "student.seq_layers", self.seq_layers, "use at least 1")
        _check(self.bottleneck_tokens >= 1, "student.bottleneck_tokens",
               self.bottleneck_tokens, "use at least 1 bottleneck token")
        _check(self.prompt_max_len >= 8, "student.prompt_max_len", self.prompt_max_len,
               "use at least 8 tokens")
        _check(self.kd_repr_dim >= 0, "student.kd_repr_dim", self.kd_repr_dim,
               "use 0 (same as student.hidden) or a positive width")
        _check(self.max_text_len >= 8, "student.max_text_len", self.max_text_len,
               "use at least 8 tokens")
        _check(0.0 <= self.dropout < 1.0, "student.dropout", self.dropout, "use [0, 1)")
        if self.quantize != "none":
            _check(self.text_mode != "full", "student.quantize", self.quantize,
                   "quantized bases cannot be fully fine-tuned; set student.text_mode=lora")
        _check(self.enhance_k >= 1, "student.enhance_k", self.enhance_k,
               "use at least 1 neighbour, e.g. 5")
        _check(self.enhance_bank >= self.enhance_k, "student.enhance_bank", self.enhance_bank,
               f"the bank must hold at least student.enhance_k={self.enhance_k} rows, e.g. 512")
        _check(self.enhance_temperature > 0, "student.enhance_temperature",
               self.enhance_temperature, "use a positive temperature, e.g. 0.1")


# -------------------------------------------------------------------------- train


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
    task_loss: Literal["l1", "mse", "ce"] = "l1"
    """Loss against gold labels: ``l1`` / ``mse`` for regression, ``ce`` for classification."""
    select_metric: str = "valid_mae"
    """Validation metric that picks the checkpoint (``valid_`` + a metric name of the
    dataset's metric set, e.g. ``valid_mae``, ``valid_acc2_non0``)."""
    select_mode: Literal["auto", "min", "max"] = "auto"
    """Whether smaller or larger ``select_metric`` is better; ``auto`` takes it from the
    metric (``workbench.metrics.higher_is_better``); an explicit value must agree with it."""
    early_stop_patience: int = 5
    """Stop after this many epochs without a better validation value; 0: never stop early."""
    num_workers: int = 0
    """DataLoader worker processes (0: collate in the training process)."""
    weighting: Literal["none", "quality"] = "none"
    """Per-sample weights: ``none`` (all ones) or ``quality`` (teacher confidence,
    off-label mass, teacher-gold agreement, augmentation consistency; see
    ``students.weighting``). ``quality`` needs teacher soft labels (``signals``)."""
    weight_floor: float = 0.1
    """Smallest quality weight, so no sample is silently dropped (in (0, 1])."""
    weight_agreement_scale: float = 0.0
    """|teacher expected score - gold| at which agreement reaches 0; 0: half the width of
    the dataset's label range."""
    missing_train: bool = False
    """LNLN missing-modality training: random per-sample, per-modality missing rates,
    seeded by (seed, epoch, sample id). A privileged teacher always sees complete inputs."""
    missing_complete_fraction: float = 0.5
    """Fraction of training samples kept complete under ``missing_train``."""
    privileged: Literal["none", "prompted"] = "none"
    """MMSLF two-stage distillation. ``none``: train the model alone. ``prompted``: stage 1
    trains the prompted network (this student plus a branch that reads the teacher's cached
    descriptions, ``signals.description_template``) on gold labels into
    ``<output_dir>/prompted/`` (or reuses ``prompted_checkpoint``); stage 2 trains the plain
    student on gold labels, soft labels and privileged KD from that frozen network
    (``loss.privileged_*``). The plain student never sees a description."""
    prompted_checkpoint: str = ""
    """``checkpoint-best`` directory of a trained prompted network to reuse as the
    privileged teacher (empty: stage 1 runs inside this run)."""
    prompted_epochs: int = 0
    """Epochs of stage 1 (the prompted network); 0: the same as ``epochs``."""
    log_with: Literal["none", "tensorboard"] = "none"
    """Experiment tracking through accelerate's trackers: ``tensorboard`` writes event files
    under ``<output_dir>/`` (needs the ``tensorboard`` package); ``none`` logs only text."""
    overwrite: bool = False
    """Start afresh in an ``output_dir`` that already holds a run. Without it such a run
    must be continued (``--resume``) or written elsewhere."""
    group_by_length: bool = False
    """Batch training samples of similar text length together (within random groups of
    50 batches; batch order still shuffled): much less padding, so faster steps on CPU."""
    num_threads: int = 0
    """Torch intra-op CPU threads per process; 0: torch's default (all cores). On a small
    or shared machine 1 is often several times faster than oversubscribed threads."""
    augment_data: str = ""
    """Teacher augmentation with quality-aware weights (after QASA): the directory written
    by ``workbench data augment`` (or its ``data.yaml``), holding paraphrases of the train
    transcripts (id ``SOURCE#v``, the source's label and audio / visual features). Their
    soft labels are read from ``signals.cache_dir`` (template
    ``signals.soft_label_template``, a second caching pass on that dataset, joined by its
    own fingerprint). Each rewrite is added to the train split only, with a fixed weight
    ``floor + (1 - floor) * c * o * a * s``: ``c`` teacher confidence (1 - normalised
    entropy of its soft label; 0 if the teacher gave none), ``o`` 1 - off-label mass,
    ``a`` agreement of the teacher's expected score with the source's gold label, ``s``
    cosine similarity of the rewrite to its source under the student's pre-training text
    encoder (mean-pooled, clipped to [0, 1]); ``floor`` is ``weight_floor``: rewrites are
    down-weighted, never dropped. The weights are logged (summary and histogram) and
    saved as ``<output_dir>/augment_weights.csv``. Empty: no augmentation."""
    msmix: bool = False
    """MS-Mix: sentiment-aware mixup of the encoded modalities inside each training step
    (``students.msmix``; regression datasets). Pairs come from a seeded permutation of the
    batch and are mixed only when, for every modality both have, their pooled
    representations agree (cosine > ``msmix_threshold``) and they have the same
    modalities. Per modality the ratio blends a Beta(``msmix_alpha``, ``msmix_alpha``)
    draw with the relative intensity predicted by that modality's intensity head
    (trained on |gold score|, ``loss.msmix_intensity``); the mixed label uses the mean
    ratio. Adds ``loss.msmix`` x the task loss on mixed samples and ``loss.msmix_kl`` x a
    KL alignment of the modalities' predicted distributions on them (Gaussians around
    the unimodal heads' scores over the label bins)."""
    msmix_alpha: float = 0.5
    """Beta(alpha, alpha) of MS-Mix's base mixing ratio."""
    msmix_threshold: float = 0.3
    """Cosine similarity every shared modality of a pair must exceed to be mixed (-1:
    mix every pair with the same modalities)."""
    conflict_penalty: bool = False
    """Conflict-aware gradient penalty plus a statistical loss (``students.conflict``).
    Each step, each modality's own contribution to the fusion sum goes through the
    shared layers (fusion tail + prediction head) to a gold-label loss; its gradient on
    those shared weights is taken with ``create_graph=True`` (the penalty is
    differentiable). Penalised: dominance ``relu(max_m |g_m| / mean_m |g_m| -
    loss.conflict_tau)`` and opposition ``mean over pairs relu(-cos(g_a, g_b))``, with
    weight ``loss.conflict``; and ``loss.statistical`` x the squared gaps between the
    batch mean / std of the predictions and the train split's gold-label mean / std."""

    def __post_init__(self) -> None:
        _check(self.num_threads >= 0, "train.num_threads", self.num_threads,
               "use 0 (torch's default) or a positive thread count")
        _check(0.0 < self.weight_floor <= 1.0, "train.weight_floor", self.weight_floor,
               "use a floor in (0, 1]; 1 turns quality weighting into all ones")
        _check(self.weight_agreement_scale >= 0, "train.weight_agreement_scale",
               self.weight_agreement_scale, "use 0 (half the label range) or a positive number")
        _check(0.0 <= self.missing_complete_fraction <= 1.0, "train.missing_complete_fraction",
               self.missing_complete_fraction, "use a fraction in [0, 1]")
        _check(self.epochs >= 1, "train.epochs", self.epochs, "use at least 1")
        _check(self.batch_size >= 1, "train.batch_size", self.batch_size, "use at least 1")
        _check(self.grad_accum >= 1, "train.grad_accum", self.grad_accum, "use at least 1")
        _check(self.lr > 0, "train.lr", self.lr, "use a positive learning rate")
        _check(self.encoder_lr >= 0, "train.encoder_lr", self.encoder_lr,
               "use a non-negative learning rate (0 keeps the text encoder's weights fixed)")
        _check(self.weight_decay >= 0, "train.weight_decay", self.weight_decay,
               "use 0 or a positive decay")
        _check(self.max_grad_norm >= 0, "train.max_grad_norm", self.max_grad_norm,
               "use 0 (no clipping) or a positive norm, e.g. 1.0")
        _check(0.0 <= self.warmup_ratio < 1.0, "train.warmup_ratio", self.warmup_ratio,
               "use a fraction in [0, 1)")
        _check(self.early_stop_patience >= 0, "train.early_stop_patience",
               self.early_stop_patience, "use 0 (no early stopping) or a positive count")
        _check(self.num_workers >= 0, "train.num_workers", self.num_workers, "use 0 or more")
        _check(self.prompted_epochs >= 0, "train.prompted_epochs", self.prompted_epochs,
               "use 0 (same as train.epochs) or a positive count")
        _check(self.select_metric.startswith("valid_"), "train.select_metric",
               self.select_metric,
               "checkpoints are selected on the validation split only; use valid_<metric>")
        _check(not self.prompted_checkpoint or self.privileged == "prompted",
               "train.prompted_checkpoint", self.prompted_checkpoint,
               "it is only read with train.privileged=prompted; set that or leave it empty")
        _check(self.msmix_alpha > 0, "train.msmix_alpha", self.msmix_alpha,
               "use a positive Beta parameter, e.g. 0.5")
        _check(-1.0 <= self.msmix_threshold < 1.0, "train.msmix_threshold",
               self.msmix_threshold, "use a cosine similarity in [-1, 1), e.g. 0.3")


# --------------------------------------------------------------------------- eval


@dataclass
class EvalConfig:
    """How a checkpoint is evaluated."""

    split: str = "test"
    missing_rates: list[float] = field(default_factory=list)
    """Rates for the LNLN sweep, e.g. [0.0, 0.1, ..., 0.9]; empty: no sweep."""
    seeds: list[int] = field(default_factory=lambda: [1111, 1112, 1113])
    batch_size: int = 64

    def __post_init__(self) -> None:
        _check(self.split in SPLITS, "eval.split", self.split, f"use one of {list(SPLITS)}")
        for r in self.missing_rates:
            _check(0.0 <= r <= 1.0, "eval.missing_rates", self.missing_rates,
                   "rates are fractions in [0, 1]")


# ------------------------------------------------------------------------ distill


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
    """Template whose descriptions the prompted network reads (``train.privileged:
    prompted`` or ``student.prompted: true``), on train and valid samples; read only then."""
    teacher: str = ""
    """Use the cache's jobs of this teacher (model id, with or without ``@revision``);
    empty: the only job of each template for this data."""
    min_ok_fraction: float = 0.9
    """Refuse a job with ok answers for fewer than this fraction of the samples asked for."""

    def __post_init__(self) -> None:
        _check(0.0 <= self.min_ok_fraction <= 1.0, "signals.min_ok_fraction",
               self.min_ok_fraction, "use a fraction in [0, 1]")


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
    privileged_pred: float = 1.0
    """Weight of the KD from the prompted network's prediction (L1 for regression, KL of
    the class distributions for classification)."""
    privileged_repr: float = 0.5
    """Weight of the KD from the prompted network's fused representation (through the
    student's projection ``kd_proj``)."""
    privileged_repr_kind: Literal["cosine", "mse"] = "cosine"
    """Distance for the representation KD."""
    privileged_attn: float = 0.0
    """Weight of the KD from the prompted network's text-to-modality fusion attention."""
    unimodal_aux: float = 0.0
    """Weight of the gold-label loss of each modality's auxiliary head (averaged over the
    modalities, each on the samples that have it)."""
    msmix: float = 1.0
    """``train.msmix`` only: weight of the task loss on the mixed samples (mixed labels)."""
    msmix_kl: float = 0.1
    """``train.msmix`` only: weight of the KL alignment between the modalities' predicted
    distributions on the mixed samples (mean over ordered modality pairs)."""
    msmix_intensity: float = 0.1
    """``train.msmix`` only: weight of the intensity heads' L1 loss against |gold score|."""
    conflict: float = 0.1
    """``train.conflict_penalty`` only: weight of the gradient-conflict penalty."""
    conflict_tau: float = 1.5
    """``train.conflict_penalty`` only: max / mean ratio of the modalities' gradient norms
    tolerated before dominance is penalised (>= 1; with M modalities the ratio is <= M)."""
    statistical: float = 0.1
    """``train.conflict_penalty`` only: weight of the statistical loss (batch mean and std
    of the predictions vs the train gold labels'; class frequencies for classification)."""

    def __post_init__(self) -> None:
        for name in ("soft_label_kd", "expected_score", "privileged_pred", "privileged_repr",
                     "privileged_attn", "unimodal_aux", "msmix", "msmix_kl",
                     "msmix_intensity", "conflict", "statistical"):
            _check(getattr(self, name) >= 0, f"loss.{name}", getattr(self, name),
                   "use 0 (term off) or a positive weight")
        _check(self.conflict_tau >= 1.0, "loss.conflict_tau", self.conflict_tau,
               "use a ratio of at least 1 (max over mean gradient norm), e.g. 1.5")
        _check(self.temperature > 0, "loss.temperature", self.temperature,
               "use a positive temperature, e.g. 1.0 or 2.0")


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
        _check((self.train.task_loss == "ce") == classification, "train.task_loss",
               self.train.task_loss,
               "use ce for a classification dataset" if classification
               else "use l1 or mse for a regression dataset (ce is for classification)")
        sig = self.signals
        # (student.prompted alone is checked when training starts: the config of a
        # prompted checkpoint may be loaded without its cache.)
        if self.train.privileged == "prompted":
            _check(bool(sig.cache_dir), "signals.cache_dir", sig.cache_dir,
                   "train.privileged=prompted needs the teacher's descriptions: point it "
                   "at a teacher cache, or set train.privileged=none")
            _check(bool(sig.description_template), "signals.description_template",
                   sig.description_template,
                   "train.privileged=prompted needs a description template, e.g. context_aware")
        _check(not (self.train.privileged == "prompted" and self.student.prompted),
               "student.prompted", self.student.prompted,
               "with train.privileged=prompted the prompted network is stage 1 and the "
               "student stays plain (it never sees descriptions); set student.prompted=false")
        if self.train.weighting == "quality":
            _check(bool(sig.cache_dir and sig.soft_label_template), "train.weighting",
                   self.train.weighting,
                   "quality weights score the teacher's soft labels: set signals.cache_dir "
                   "and signals.soft_label_template, or train.weighting=none")
        if self.train.augment_data:
            _check(bool(sig.cache_dir and sig.soft_label_template), "train.augment_data",
                   self.train.augment_data,
                   "augmented samples are weighted by the teacher's soft labels on them: set "
                   "signals.cache_dir (holding a soft-label job on the augmented data) and "
                   "signals.soft_label_template, or leave train.augment_data empty")
        _check(not (self.train.msmix and classification), "train.msmix", self.train.msmix,
               "MS-Mix's intensity heads predict |score| of a regression label; use a "
               "regression dataset or set train.msmix=false")
        for name in ("msmix", "conflict_penalty"):
            _check(not (getattr(self.train, name) and self.student.prompted), f"train.{name}",
                   getattr(self.train, name),
                   "it trains the plain student, not the prompted network "
                   "(student.prompted=true); use train.privileged=prompted or set it false")


# ------------------------------------------------------------------ (de)serialise

T = TypeVar("T")


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type ``tp``; ``where`` names the key."""
    tp, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where} is null: give a value of type {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=where)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        if value not in args:
            near = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"{where}={value!r} is not allowed{hint}: use one of {list(args)}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str) and origin is list:
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where} must have {len(args)} items, got {value!r}")
            return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
        item = args[0] if args else Any
        out = [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_convert(k, kt, where): _convert(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}={value!r} must be true or false")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{where}={value!r} must be a number")
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}={value!r} must be a number") from None
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{where}={value!r} must be an integer")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}={value!r} must be an integer") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return str(value)
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys with a suggestion."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean {(prefix + '.' if prefix else '') + near[0]!r}?" if near else ""
            raise ConfigError(
                f"unknown key {where!r} for {cls.__name__}{hint} Valid keys: {', '.join(names)}"
            )
        kwargs[key] = _convert(value, hints[key], where)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as e:  # a required field without default
        raise ConfigError(f"{prefix or cls.__name__}: {e}") from None


def to_dict(obj: Any) -> Any:
    """A dataclass as plain YAML/JSON-able data (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, enum.Enum):
        return obj.value
    return obj


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a nested mapping (values parsed as YAML)."""
    for item in overrides:
        path, value = _parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return data


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def _resolve_includes(cls: type, data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Replace sections given as file paths by that file's mapping (recursively).

    An include path is relative to the file that names it; data paths inside any config
    are relative to the working directory, as with every other command-line path.
    """
    if not dataclasses.is_dataclass(cls):
        return data
    hints = typing.get_type_hints(cls)
    out = dict(data)
    for key, value in data.items():
        tp = _strip_optional(hints.get(key, Any))[0]
        if dataclasses.is_dataclass(tp):
            if isinstance(value, str):
                inc = (base / value).resolve()
                out[key] = _resolve_includes(tp, _read_yaml(inc), inc.parent)
            elif isinstance(value, dict):
                out[key] = _resolve_includes(tp, value, base)
    return out


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None
) -> T:
    """Read ``path`` (YAML) into ``cls``, apply ``overrides``, validate, and return it.

    Relative data paths are resolved against the current directory.
    """
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        data = _resolve_includes(cls, _read_yaml(p), p.parent)
    data = apply_overrides(data, list(overrides or []))
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        if path is not None:
            raise ConfigError(f"{path}: {e}") from None
        raise


def config_class_for(path: str | Path) -> type | None:
    """The config dataclass a file under ``configs/`` holds, from its folder name."""
    parts = Path(path).parts
    table = {"data": DataConfig, "teachers": TeacherConfig, "distill": DistillConfig,
             "eval": EvalConfig, "cache": CacheConfig}
    for part in reversed(parts[:-1]):
        if part in table:
            return table[part]
    return None


def versions() -> dict[str, str]:
    """Versions of Python and the packages that shape results."""
    import platform
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("msa-workbench", "torch", "transformers", "peft", "accelerate", "datasets",
                "openai", "numpy", "scikit-learn", "bitsandbytes", "vllm", "llama-cpp-python"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def dump_config(cfg: Any, out_dir: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config to ``out_dir/name`` and versions to ``versions.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / name
    target.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    (out / "versions.json").write_text(json.dumps(versions(), indent=2) + "\n")
    return target
