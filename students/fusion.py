"""Gated cross-modal fusion through learnable bottleneck tokens.

For each non-text modality ``m`` (audio, vision) there are ``K`` learnable bottleneck
tokens. Per sample:

1. *Gather*: the bottleneck tokens, conditioned on the pooled text (and, in the prompted
   network, on the description), attend to ``m``'s frames (its key mask honoured) and
   summarise them: ``Z_m`` (B, K, h). Optional extra key tokens (the description's, in the
   prompted ``tokens`` mode) are read alongside the frames.
2. *Scatter*: the text tokens attend to ``Z_m`` -- text reads ``m`` only through the
   bottleneck -- giving ``C_m`` (B, L, h), mean-pooled over real text tokens to ``c_m``.
3. *Gate*: ``g_m = sigmoid(W [t; c_m])`` (B, h) decides how much of ``c_m`` enters, and
   the per-sample availability ``a_m`` in {0, 1} zeroes a missing or fully masked modality:
   ``fused = FFN(LayerNorm(t + sum_m a_m * g_m * c_m))`` with ``t`` the pooled text.

A sample whose modality ``m`` is unavailable therefore gets exactly the fusion of the
remaining modalities. Attention maps (per head) can be returned for distillation:
``text_to_<m>`` (B, H, L, K) has the same shape in the plain student and the prompted
network; ``bottleneck_<m>`` (B, H, K, T_m [+ extra keys]).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from students.encoders import Encoded, masked_mean


@dataclass
class FusionOutput:
    """``fused`` (B, h); ``gates[m]`` (B, h) after availability; ``attention`` or None;
    ``contributions``: what each modality adds before the shared tail -- ``text``: the
    pooled text ``t``; ``m``: ``a_m * g_m * c_m`` -- so ``fused = tail(sum of them)``."""

    fused: Tensor
    gates: dict[str, Tensor]
    attention: dict[str, Tensor] | None
    contributions: dict[str, Tensor] | None = None


def _safe_key_mask(mask: Tensor) -> tuple[Tensor, Tensor]:
    """(keys to ignore for attention, rows with at least one valid key).

    A row without any valid key would make softmax produce NaN; it attends to its first
    position instead, and the caller zeroes that row's result through availability.
    """
    has_any = mask.any(1)
    attend = mask.clone()
    attend[~has_any, 0] = True
    return ~attend, has_any


class GatedBottleneckFusion(nn.Module):
    """Text-anchored gated fusion of audio / vision through bottleneck tokens."""

    def __init__(self, hidden: int, modalities: list[str], n_tokens: int, heads: int,
                 dropout: float) -> None:
        super().__init__()
        self.modalities = list(modalities)
        self.n_tokens = n_tokens
        self.bottleneck = nn.ParameterDict({
            m: nn.Parameter(torch.randn(n_tokens, hidden) * 0.02) for m in self.modalities
        })
        # Without audio / vision the fusion is the pooled text through the FFN; no
        # bottleneck weights are created (they would never get a gradient).
        self.query_cond = nn.Linear(hidden, hidden) if self.modalities else None
        self.gather = nn.ModuleDict({
            m: nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
            for m in self.modalities
        })
        self.gather_norm = nn.ModuleDict({m: nn.LayerNorm(hidden) for m in self.modalities})
        self.scatter = nn.ModuleDict({
            m: nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
            for m in self.modalities
        })
        self.gate = nn.ModuleDict({m: nn.Linear(2 * hidden, hidden) for m in self.modalities})
        self.norm = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(2 * hidden, hidden))
        self.out_norm = nn.LayerNorm(hidden)

    def forward(
        self,
        text: Encoded,
        others: dict[str, Encoded],
        available: dict[str, Tensor],
        query_cond: Tensor | None = None,
        extra_keys: Encoded | None = None,
        return_attention: bool = False,
    ) -> FusionOutput:
        """Fuse ``text`` (projected to ``hidden``) with ``others`` (audio / vision).

        ``available[m]`` is (B,) in {0, 1}; ``query_cond`` (B, h) is added to every
        bottleneck query; ``extra_keys`` are read by every bottleneck besides the frames.
        """
        t = text.pooled
        b = t.shape[0]
        cond = self.query_cond(t) if self.query_cond is not None else torch.zeros_like(t)
        if query_cond is not None:
            cond = cond + query_cond
        total = t
        gates: dict[str, Tensor] = {}
        maps: dict[str, Tensor] = {}
        contributions: dict[str, Tensor] = {"text": t}
        for m in self.modalities:
            enc = others[m]
            keys, kmask = enc.tokens, enc.mask
            if extra_keys is not None:
                keys = torch.cat([keys, extra_keys.tokens], dim=1)
                kmask = torch.cat([kmask, extra_keys.mask], dim=1)
            ignore, _ = _safe_key_mask(kmask)
            q = self.bottleneck[m].unsqueeze(0).expand(b, -1, -1) + cond.unsqueeze(1)
            z, a_gather = self.gather[m](q, keys, keys, key_padding_mask=ignore,
                                         need_weights=return_attention,
                                         average_attn_weights=False)
            z = self.gather_norm[m](q + z)
            c, a_scatter = self.scatter[m](text.tokens, z, z, need_weights=return_attention,
                                           average_attn_weights=False)
            c_pooled = masked_mean(c, text.mask)
            avail = available[m].to(t.dtype).reshape(b, 1)
            g = torch.sigmoid(self.gate[m](torch.cat([t, c_pooled], dim=-1))) * avail
            contributions[m] = g * c_pooled
            total = total + contributions[m]
            gates[m] = g
            if return_attention:
                maps[f"bottleneck_{m}"] = a_gather
                maps[f"text_to_{m}"] = a_scatter
        fused = self.tail(total)
        return FusionOutput(fused=fused, gates=gates, attention=maps if return_attention else None,
                            contributions=contributions)

    def tail(self, total: Tensor) -> Tensor:
        """The shared layers after the sum: ``out_norm(h + FFN(h))``, ``h = norm(total)``.

        Every modality's contribution passes through them (the conflict-aware penalty of
        :mod:`students.conflict` compares the modalities' gradients on these weights)."""
        h = self.norm(total)
        return self.out_norm(h + self.ffn(h))

    def tail_modules(self) -> list[nn.Module]:
        """The modules :meth:`tail` runs."""
        return [self.norm, self.ffn, self.out_norm]
