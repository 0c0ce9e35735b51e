"""Student encoders: a pre-trained text encoder and small audio / visual encoders.

* :class:`TextEncoder` wraps any ``transformers`` encoder from a local directory
  (``minilm`` resolves to the packaged MiniLM-L6). It returns the token states and their
  mean over real tokens. ``mode`` decides what trains: ``lora`` (a PEFT LoRA adapter on
  the named linear layers), ``frozen`` (nothing; run without gradients, dropout off) or
  ``full`` (every weight). ``quantize`` loads the base weights through bitsandbytes in
  8-bit or 4-bit NF4 (QLoRA); only the text base is quantized, never a head.
* :class:`VectorEncoder` (MLP) encodes utterance-level vectors ``(B, d)``;
  :class:`SequenceEncoder` (a small transformer or GRU over frames, with a key padding
  mask) encodes padded sequences ``(B, T, d)`` with lengths. Both project to
  ``StudentConfig.hidden`` and return an :class:`Encoded` (tokens, key mask, pooled).

Frames dropped by missing-modality masking are zero and flagged: the flag is an input
channel, and dropped frames are excluded from attention keys and pooling, exactly like
padding. A sample with no usable frame yields zeros.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import logging
import math
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workbench.config import ConfigError, LoraConfig
from workbench.data.schema import FEATURE_MODALITIES
from workbench.data.store import DataInfo
from workbench.models import resolve_text_encoder

log = logging.getLogger(__name__)

TextMode = Literal["lora", "frozen", "full"]
Quantize = Literal["none", "8bit", "4bit"]


@dataclass
class Encoded:
    """One modality after its encoder.

    ``tokens`` is ``(B, T, h)``; ``mask`` is ``(B, T)`` bool, True where a position
    carries information (a valid attention key); ``pooled`` is ``(B, h)``, the mean of
    the valid positions (zeros for a sample without any).
    """

    tokens: Tensor
    mask: Tensor
    pooled: Tensor


def feature_modalities(info: DataInfo) -> list[str]:
    """Audio / visual modalities the student encodes: those with feature arrays.

    A modality the dataset lists only through raw media (frame paths, audio files) has no
    feature array for a student to read, so it is left out of the model, with a warning.
    """
    out = []
    for m in FEATURE_MODALITIES:
        if m not in info.modalities:
            continue
        if m not in info.feature_dims:
            log.warning("dataset %r lists modality %r but has no %s features; the student "
                        "leaves it out (import features to use it)", info.name, m, m)
            continue
        kind = info.feature_kind.get(m)
        if kind not in ("vector", "sequence"):
            raise ValueError(f"dataset {info.name!r}: feature_kind[{m!r}]={kind!r}; expected "
                             "'vector' or 'sequence' (re-run `workbench data import`)")
        out.append(m)
    return out


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` (B, T, h) over positions where ``mask`` (B, T) is true; 0 if none."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


# ----------------------------------------------------------------------------- text


@contextlib.contextmanager
def _quiet_transformers_loading() -> Iterator[None]:
    """Hide transformers' weight-loading progress bar (library code shows no bars)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


class _OnceFilter(logging.Filter):
    """Let a message through once per process (bitsandbytes logs one per matmul)."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            return True
        if self.seen:
            return False
        self.seen = True
        return True


_BNB_FILTER = _OnceFilter("MatMul8bitLt: inputs will be cast")


def _require_bitsandbytes(quantize: str) -> None:
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(
            f"student.quantize={quantize} needs bitsandbytes: pip install -e '.[quant]', "
            "or set student.quantize=none"
        )
    bnb_log = logging.getLogger("bitsandbytes.autograd._functions")
    if _BNB_FILTER not in bnb_log.filters:
        bnb_log.addFilter(_BNB_FILTER)


def load_text_backbone(
    path: str, quantize: Quantize = "none", compute_dtype: str = "float32",
    device: str | torch.device | None = None,
) -> nn.Module:
    """Load a ``transformers`` encoder from a local directory, optionally via bitsandbytes.

    The model's own pooler (BERT-style ``pooler``) is removed: the student mean-pools,
    and an unused pooler would hold trainable (LoRA / full) weights that never get a
    gradient.
    """
    from transformers import AutoModel

    kwargs: dict[str, Any] = {}
    if quantize != "none":
        _require_bitsandbytes(quantize)
        from transformers import BitsAndBytesConfig

        dtype = getattr(torch, compute_dtype)
        if quantize == "8bit":
            qcfg = BitsAndBytesConfig(load_in_8bit=True)
        elif quantize == "4bit":
            qcfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                      bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=dtype)
        else:
            raise ValueError(f"student.quantize={quantize!r}: use none, 8bit or 4bit")
        # bitsandbytes weights are placed at load time; they cannot be moved afterwards.
        kwargs = {"quantization_config": qcfg, "device_map": {"": str(device or "cpu")}}
    with _quiet_transformers_loading():
        model = AutoModel.from_pretrained(path, **kwargs)
    if isinstance(getattr(model, "pooler", None), nn.Module):
        model.pooler = None
    if quantize == "none" and device is not None:
        model.to(device)
    return model


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear)  # bitsandbytes Linear8bitLt / Linear4bit subclass it


def lora_target_names(model: nn.Module, targets: list[str], where: str = "") -> list[str]:
    """Full names of the linear layers whose last name component is in ``targets``.

    Raises if any target matches nothing, listing the linear layer names the model has
    (MiniLM / BERT: query, key, value, dense).
    """
    leaves: set[str] = set()
    found: dict[str, list[str]] = {t: [] for t in targets}
    for name, module in model.named_modules():
        if not _is_linear(module):
            continue
        leaf = name.rsplit(".", 1)[-1]
        leaves.add(leaf)
        if leaf in found:
            found[leaf].append(name)
    missing = [t for t, names in found.items() if not names]
    if missing:
        raise ConfigError(
            f"student.lora.target_modules: {missing} match no linear layer of the text "
            f"encoder {where or type(model).__name__}; its linear layers are named "
            f"{sorted(leaves)}; set student.lora.target_modules to some of those"
        )
    return sorted(n for names in found.values() for n in names)


_MERGED: weakref.WeakKeyDictionary[nn.Module, tuple[Any, nn.Module]] = (
    weakref.WeakKeyDictionary())
"""TextEncoder -> (weights' version key, merged copy): :meth:`TextEncoder.merged`."""


class TextEncoder(nn.Module):
    """A pre-trained text encoder, mean-pooled, in ``lora`` / ``frozen`` / ``full`` mode.

    Attributes: ``tokenizer`` (the encoder's tokenizer), ``out_dim`` (its hidden size),
    ``mode``, ``quantize``, ``path``.
    """

    def __init__(
        self,
        name: str = "minilm",
        mode: TextMode = "lora",
        lora: LoraConfig | None = None,
        quantize: Quantize = "none",
        compute_dtype: str = "float32",
        gradient_checkpointing: bool = False,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        from transformers import AutoTokenizer

        if mode not in ("lora", "frozen", "full"):
            raise ValueError(f"student.text_mode={mode!r}: use lora, frozen or full")
        if quantize != "none" and mode == "full":
            raise ValueError(f"student.quantize={quantize}: a quantized base cannot be fully "
                             "fine-tuned; set student.text_mode=lora (or frozen)")
        self.path = resolve_text_encoder(name)
        self.mode = mode
        self.quantize = quantize
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        base = load_text_backbone(self.path, quantize, compute_dtype, device)
        self.out_dim = int(base.config.hidden_size)
        if mode == "lora":
            base = self._add_lora(base, lora or LoraConfig(), gradient_checkpointing)
        elif mode == "frozen":
            base.requires_grad_(False)
            base.eval()
        else:  # full
            base.requires_grad_(True)
            if gradient_checkpointing:
                base.gradient_checkpointing_enable()
        self.model = base
        log.info("text encoder %s: mode=%s quantize=%s dim=%d", self.path, mode, quantize,
                 self.out_dim)

    def _add_lora(self, base: nn.Module, lora: LoraConfig, checkpointing: bool) -> nn.Module:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model, prepare_model_for_kbit_training

        targets = lora_target_names(base, list(lora.target_modules), self.path)
        if self.quantize != "none":
            # Freezes the base, casts non-quantized fp16/bf16 weights to fp32 and, with
            # checkpointing, makes the inputs require grad: the QLoRA recipe.
            base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=checkpointing)
        elif checkpointing:
            base.gradient_checkpointing_enable()
            base.enable_input_require_grads()
        pcfg = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                              target_modules=targets, bias="none")
        return get_peft_model(base, pcfg)

    def train(self, mode: bool = True) -> TextEncoder:
        """Like ``nn.Module.train``, but a frozen encoder always stays in eval mode."""
        super().train(mode)
        if self.mode == "frozen":
            self.model.eval()
        return self

    def merged(self) -> nn.Module | None:
        """For serving (eval mode, no gradients): a copy of the LoRA encoder with the adapter
        merged into its weights (``merge_and_unload``), or None where there is nothing to
        merge (``frozen`` / ``full``, or a bitsandbytes base, whose merge would re-quantize).

        The copy is made once and kept while the adapter's and base's weights are unchanged
        (their in-place version counters: an optimizer step makes a new copy on the next
        call); it is not a submodule (no state dict, no ``.to``: it is rebuilt on another
        device). Same outputs as the adapter up to float rounding.
        """
        if self.mode != "lora" or self.quantize != "none" or self.training:
            return None
        params = list(self.model.parameters())
        key = tuple((p.data_ptr(), p._version) for p in params)
        hit = _MERGED.get(self)
        if hit is not None and hit[0] == key:
            return hit[1]
        with torch.inference_mode(False), torch.no_grad():  # plain tensors, usable anywhere
            merged = copy.deepcopy(self.model).merge_and_unload().eval()
        merged.requires_grad_(False)
        _MERGED[self] = (key, merged)
        return merged

    def forward(self, input_ids: Tensor, attention_mask: Tensor,
                token_type_ids: Tensor | None = None, merged: bool = False) -> Encoded:
        """Token states ``(B, L, out_dim)``, the attention mask as bool, and their mean.

        ``merged`` (serving, eval mode): run :meth:`merged` where it exists."""
        kwargs: dict[str, Tensor] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        net = (self.merged() if merged and not torch.is_grad_enabled() else None) or self.model
        ctx = torch.no_grad() if self.mode == "frozen" else contextlib.nullcontext()
        with ctx:
            states = net(**kwargs).last_hidden_state
        states = states.float()
        mask = attention_mask.bool()
        return Encoded(tokens=states, mask=mask, pooled=masked_mean(states, mask))


# ------------------------------------------------------------------- audio / vision


def sinusoid_positions(length: int, dim: int, device: torch.device) -> Tensor:
    """Fixed sinusoidal position codes ``(length, dim)`` (no maximum length)."""
    pos = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32)
                    * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div[: dim // 2])
    return pe


class VectorEncoder(nn.Module):
    """MLP for utterance-level vectors ``(B, d)`` -> one token ``(B, 1, h)``."""

    def __init__(self, in_dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.LayerNorm(hidden),
        )

    def forward(self, x: Tensor, keep: Tensor) -> Encoded:
        """``x`` (B, d); ``keep`` (B, 1) bool: the vector is present and not masked."""
        if x.dim() != 2:
            raise ValueError(f"utterance-vector encoder expects (B, d) features, got shape "
                             f"{tuple(x.shape)}; sequence features need feature_kind=sequence")
        valid = keep.reshape(-1, 1).bool()
        h = self.net(x) * valid.to(x.dtype)
        return Encoded(tokens=h.unsqueeze(1), mask=valid, pooled=h)


class FrameAttentionLayer(nn.Module):
    """Pre-norm transformer layer over frames with a key mask.

    Attention weights get no dropout (residual and feed-forward outputs do): dropout on
    a (B, H, T, T) weight matrix costs more than the rest of the layer for MOSI-length
    sequences (hundreds of frames) and blocks the fused attention kernel.
    """

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.ff = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Dropout(dropout),
                                nn.Linear(2 * hidden, hidden))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, attend: Tensor) -> Tensor:
        """``x`` (B, T, h); ``attend`` (B, T) bool keys to attend (>= 1 true per row)."""
        b, t, h = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, h // self.heads).permute(
            2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attend[:, None, None, :])
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, t, h)))
        return x + self.drop(self.ff(self.norm2(x)))


class SequenceEncoder(nn.Module):
    """Transformer or GRU over padded frames ``(B, T, d)`` with a key padding mask."""

    def __init__(self, in_dim: int, hidden: int, kind: Literal["transformer", "gru"],
                 layers: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.kind = kind
        # +1 input channel: the per-frame "kept" flag, so the encoder sees the mask.
        self.inp = nn.Sequential(nn.Linear(in_dim + 1, hidden), nn.LayerNorm(hidden))
        if kind == "transformer":
            self.body: nn.Module = nn.ModuleList(
                FrameAttentionLayer(hidden, heads, dropout) for _ in range(layers))
        elif kind == "gru":
            if hidden % 2:
                raise ValueError(f"student.hidden={hidden}: the bidirectional GRU needs an "
                                 "even width")
            self.body = nn.GRU(hidden, hidden // 2, num_layers=layers, batch_first=True,
                               bidirectional=True, dropout=dropout if layers > 1 else 0.0)
        else:
            raise ValueError(f"student.seq_encoder={kind!r}: use transformer or gru")
        self.out_norm = nn.LayerNorm(hidden)

    def forward(self, x: Tensor, lengths: Tensor, keep: Tensor) -> Encoded:
        """``x`` (B, T, d), ``lengths`` (B,) real frames, ``keep`` (B, T) bool kept frames."""
        if x.dim() != 3:
            raise ValueError(f"sequence encoder expects (B, T, d) features, got shape "
                             f"{tuple(x.shape)}; utterance vectors need feature_kind=vector")
        b, t, _ = x.shape
        within = torch.arange(t, device=x.device).unsqueeze(0) < lengths.unsqueeze(1)
        valid = within & keep.bool()
        has_any = valid.any(1)
        flag = valid.to(x.dtype).unsqueeze(-1)
        h = self.inp(torch.cat([x * flag, flag], dim=-1))
        if self.kind == "transformer":
            h = h + sinusoid_positions(t, h.shape[-1], x.device)
            # A row with no valid key would give NaN attention; let it see its (zero)
            # first frame, and zero its outputs afterwards.
            attend = valid.clone()
            attend[~has_any, 0] = True
            for layer in self.body:
                h = layer(h, attend)
        else:
            packed = nn.utils.rnn.pack_padded_sequence(
                h, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
            out, _ = self.body(packed)
            h, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=t)
        h = self.out_norm(h) * flag
        return Encoded(tokens=h, mask=valid, pooled=masked_mean(h, valid))


def build_feature_encoder(kind: str, in_dim: int, hidden: int, seq_encoder: str,
                          layers: int, heads: int, dropout: float) -> nn.Module:
    """The encoder for one feature modality: MLP for ``vector``, sequence model otherwise."""
    if kind == "vector":
        return VectorEncoder(in_dim, hidden, dropout)
    if kind == "sequence":
        return SequenceEncoder(in_dim, hidden, seq_encoder, layers, heads, dropout)  # type: ignore[arg-type]
    raise ValueError(f"feature kind {kind!r}: expected vector or sequence")
