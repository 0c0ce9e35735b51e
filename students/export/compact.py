"""Compact attention for export: ``nn.MultiheadAttention`` written as the few operations it
computes, so that the exported ONNX graph holds those and not the shape checks of
``F.multi_head_attention_forward``.

Traced by the TorchScript exporter, one ``nn.MultiheadAttention`` call becomes about 100
ONNX nodes, most of them shape plumbing (``Shape``, ``Gather``, ``Unsqueeze``, ``Concat``,
``Slice``, ``Reshape``, ``Transpose``) that costs a few microseconds each whatever the
tensor size. In the MOSI text + audio student the fusion's two attentions were 215 nodes
and 0.88 ms of a 5.2 ms batch-1 call in ONNX Runtime (one thread). :class:`CompactAttention`
computes the same function from the same weights (input projection, scaled dot product
over heads with the key padding mask, output projection) and :func:`compact_attention`
swaps it in, on the model being exported only. The exporter's checks against the model's
own outputs still decide what is served.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def compactable(mha: nn.Module) -> bool:
    """Whether :class:`CompactAttention` computes what ``mha`` computes: a batch-first
    ``nn.MultiheadAttention`` with one packed input projection (query, key and value of the
    same width), no extra key/value biases, no zero attention."""
    return (type(mha) is nn.MultiheadAttention and mha.batch_first and mha._qkv_same_embed_dim
            and mha.bias_k is None and mha.bias_v is None and not mha.add_zero_attn)


class CompactAttention(nn.Module):
    """``nn.MultiheadAttention.forward`` (batch first, eval mode: no dropout) from ``mha``'s
    own parameters; an ``attn_mask`` or ``is_causal`` call goes to ``mha`` itself."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        self.mha = mha
        self.heads = mha.num_heads
        self.head_dim = mha.head_dim

    def forward(self, query: Tensor, key: Tensor, value: Tensor,
                key_padding_mask: Tensor | None = None, need_weights: bool = True,
                attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        if attn_mask is not None or is_causal:
            return self.mha(query, key, value, key_padding_mask=key_padding_mask,
                            need_weights=need_weights, attn_mask=attn_mask,
                            average_attn_weights=average_attn_weights, is_causal=is_causal)
        m = self.mha
        w_q, w_k, w_v = m.in_proj_weight.chunk(3)
        b_q, b_k, b_v = m.in_proj_bias.chunk(3) if m.in_proj_bias is not None else (None, None, None)
        q = self._heads(F.linear(query, w_q, b_q))  # (B, H, Lq, D)
        k = self._heads(F.linear(key, w_k, b_k))
        v = self._heads(F.linear(value, w_v, b_v))
        scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.head_dim))
        if key_padding_mask is not None:
            pad = key_padding_mask[:, None, None, :]
            scores = (scores.masked_fill(pad, float("-inf")) if pad.dtype == torch.bool
                      else scores + pad.to(scores.dtype))
        attn = scores.softmax(dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).flatten(2)  # (B, Lq, E)
        out = m.out_proj(out)
        if not need_weights:
            return out, None
        return out, attn.mean(dim=1) if average_attn_weights else attn

    def _heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)


def compact_attention(model: nn.Module) -> int:
    """Swap every compactable ``nn.MultiheadAttention`` of ``model`` (in place) for a
    :class:`CompactAttention` over the same parameters; the number swapped."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if compactable(child):
                setattr(parent, name, CompactAttention(child))
                swapped += 1
    return swapped
