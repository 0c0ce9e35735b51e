"""The compact multimodal student (``student:`` of a distillation recipe)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from workbench.config.fields import check
from workbench.config.methods import CyinConfig, DashFusionConfig, EnhanceConfig, MidgConfig


@dataclass
class LoraConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["query", "value"])

    def __post_init__(self) -> None:
        check(self.r >= 1, "student.lora.r", self.r, "use a rank of at least 1")
        check(0.0 <= self.dropout < 1.0, "student.lora.dropout", self.dropout, "use [0, 1)")
        check(len(self.target_modules) > 0, "student.lora.target_modules",
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
    enhance: EnhanceConfig = field(default_factory=EnhanceConfig)
    """Cross-sample enhancement of missing modalities (after HME; off by default)."""
    dashfusion: DashFusionConfig = field(default_factory=DashFusionConfig)
    """DashFusion: temporal alignment + hierarchical bottleneck fusion, in place of the
    gated bottleneck fusion (``students.fusion``), with its alignment losses (off by
    default)."""
    cyin: CyinConfig = field(default_factory=CyinConfig)
    """CyIN: every modality through a variational bottleneck, missing modalities translated
    from those present (off by default)."""
    midg: MidgConfig = field(default_factory=MidgConfig)
    """MIDG: a mixture of invariant experts over the fused vector, optionally a cross-modal
    adapter in the text encoder; domains from ``data.domain`` (off by default)."""

    def __post_init__(self) -> None:
        check(self.hidden >= 8, "student.hidden", self.hidden, "use at least 8")
        check(self.heads >= 1 and self.hidden % self.heads == 0, "student.heads", self.heads,
              f"use a head count that divides student.hidden={self.hidden}, e.g. 4")
        check(self.seq_layers >= 1, "student.seq_layers", self.seq_layers, "use at least 1")
        check(self.bottleneck_tokens >= 1, "student.bottleneck_tokens",
              self.bottleneck_tokens, "use at least 1 bottleneck token")
        check(self.prompt_max_len >= 8, "student.prompt_max_len", self.prompt_max_len,
              "use at least 8 tokens")
        check(self.kd_repr_dim >= 0, "student.kd_repr_dim", self.kd_repr_dim,
              "use 0 (same as student.hidden) or a positive width")
        check(self.max_text_len >= 8, "student.max_text_len", self.max_text_len,
              "use at least 8 tokens")
        check(0.0 <= self.dropout < 1.0, "student.dropout", self.dropout, "use [0, 1)")
        if self.quantize != "none":
            check(self.text_mode != "full", "student.quantize", self.quantize,
                  "quantized bases cannot be fully fine-tuned; set student.text_mode=lora")
