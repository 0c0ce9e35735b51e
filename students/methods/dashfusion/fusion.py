"""DashFusion: dual-stream alignment with hierarchical bottleneck fusion
(``student.dashfusion``, :class:`~workbench.config.DashFusionConfig`).

The module has the interface of :class:`students.fusion.GatedBottleneckFusion` (same
inputs, a :class:`~students.fusion.FusionOutput`, a shared ``tail``), so the model, the
prompted network and the training methods use either. Per sample:

1. *Temporal alignment*: the text tokens attend to each other modality's frames (one
   cross-attention per modality, its key mask honoured) and the text stream becomes
   ``x = t + W_o (sum_m a_m * attn(t -> m))`` -- frame-level correspondences between the
   words and the audio / vision sequences (``a_m`` the availability).
2. *Hierarchical bottleneck fusion*: ``depth`` layers; layer ``l`` keeps ``n_l`` bottleneck
   tokens (:func:`bottleneck_schedule`: ``n_0 = bottleneck``, halved each layer, at least
   one). Learnable tokens (conditioned on the pooled text, and on the description in the
   prompted network) first read the aligned text; in every layer the bottleneck runs
   self-attention, is cut to its first ``n_l`` tokens, then gathers from every stream
   (text, audio, vision; an unavailable stream adds nothing) and each stream is updated by
   cross-attending to the bottleneck only: the streams exchange information through the
   shrinking bottleneck alone.
3. *Read-out*: the first bottleneck token and each stream's pooled state, concatenated and
   projected -- written as a sum of per-part projections, so each modality's contribution
   is explicit (``text`` holds the bottleneck's and the text stream's part), then the
   shared ``tail`` (norm + FFN), as in the gated fusion.

The two alignment losses live in :mod:`.losses`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from students.encoders import Encoded, masked_mean
from students.fusion import FusionOutput, _safe_key_mask
from workbench.config import DashFusionConfig


def bottleneck_schedule(first: int, depth: int) -> list[int]:
    """Bottleneck tokens per fusion layer: ``first``, halved each layer, at least 1."""
    if first < 1 or depth < 1:
        raise ValueError(f"bottleneck_schedule needs first >= 1 and depth >= 1, got "
                         f"first={first}, depth={depth}")
    out, n = [], first
    for _ in range(depth):
        out.append(n)
        n = max(1, n // 2)
    return out


class _Cross(nn.Module):
    """Post-norm cross-attention block: ``norm(q + attn(q, kv))`` then ``norm(x + FFN(x))``."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(2 * hidden, hidden))
        self.norm2 = nn.LayerNorm(hidden)

    def forward(self, q: Tensor, kv: Tensor, kv_mask: Tensor | None = None) -> Tensor:
        ignore = None if kv_mask is None else _safe_key_mask(kv_mask)[0]
        a, _ = self.attn(q, kv, kv, key_padding_mask=ignore, need_weights=False)
        x = self.norm1(q + a)
        return self.norm2(x + self.ffn(x))


class _FusionLayer(nn.Module):
    """One hierarchical layer: bottleneck self-attention, gather from every stream (sum of
    per-stream cross-attentions, unavailable streams zeroed), streams read the bottleneck."""

    def __init__(self, hidden: int, streams: list[str], heads: int, dropout: float) -> None:
        super().__init__()
        self.streams = streams
        self.self_attn = nn.TransformerEncoderLayer(hidden, heads, 2 * hidden, dropout,
                                                    batch_first=True)
        self.gather = nn.ModuleDict({s: nn.MultiheadAttention(hidden, heads, dropout=dropout,
                                                              batch_first=True)
                                     for s in streams})
        self.gather_norm = nn.LayerNorm(hidden)
        self.gather_ffn = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(),
                                        nn.Dropout(dropout), nn.Linear(2 * hidden, hidden))
        self.gather_norm2 = nn.LayerNorm(hidden)
        self.update = nn.ModuleDict({s: _Cross(hidden, heads, dropout) for s in streams})

    def forward(self, query: Tensor, keep: int, streams: dict[str, Encoded],
                avail: dict[str, Tensor], need_weights: bool = False
                ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        query = self.self_attn(query)[:, :keep]
        total = query
        maps: dict[str, Tensor] = {}
        for s in self.streams:
            e = streams[s]
            ignore, _ = _safe_key_mask(e.mask)
            g, w = self.gather[s](query, e.tokens, e.tokens, key_padding_mask=ignore,
                                  need_weights=need_weights, average_attn_weights=False)
            total = total + g * avail[s].to(g.dtype).reshape(-1, 1, 1)
            if need_weights:
                maps[s] = w
        query = self.gather_norm(total)
        query = self.gather_norm2(query + self.gather_ffn(query))
        new = {}
        for s in self.streams:
            e = streams[s]
            tok = self.update[s](e.tokens, query)
            new[s] = Encoded(tokens=tok, mask=e.mask, pooled=masked_mean(tok, e.mask))
        return query, new, maps


class DashFusion(nn.Module):
    """Temporal alignment + hierarchical bottleneck fusion (see the module docstring)."""

    def __init__(self, hidden: int, modalities: list[str], heads: int, dropout: float,
                 cfg: DashFusionConfig) -> None:
        super().__init__()
        self.modalities = list(modalities)
        self.schedule = bottleneck_schedule(cfg.bottleneck, cfg.depth)
        streams = ["text", *self.modalities]
        self.align = nn.ModuleDict({m: nn.MultiheadAttention(hidden, heads, dropout=dropout,
                                                             batch_first=True)
                                    for m in self.modalities})
        self.align_out = nn.Linear(hidden, hidden) if self.modalities else None
        self.align_norm = nn.LayerNorm(hidden)
        self.tokens = nn.Parameter(torch.randn(self.schedule[0], hidden) * 0.02)
        self.query_cond = nn.Linear(hidden, hidden)
        self.init_read = _Cross(hidden, heads, dropout)
        self.layers = nn.ModuleList([_FusionLayer(hidden, streams, heads, dropout)
                                     for _ in self.schedule])
        self.readout = nn.ModuleDict({s: nn.Linear(hidden, hidden, bias=False)
                                      for s in ["bottleneck", *streams]})
        self.readout_bias = nn.Parameter(torch.zeros(hidden))
        self.norm = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(2 * hidden, hidden))
        self.out_norm = nn.LayerNorm(hidden)

    def forward(self, text: Encoded, others: dict[str, Encoded], available: dict[str, Tensor],
                query_cond: Tensor | None = None, extra_keys: Encoded | None = None,
                return_attention: bool = False) -> FusionOutput:
        t = text.pooled
        b = t.shape[0]
        maps: dict[str, Tensor] = {}
        # 1. temporal alignment: words attend to frames
        if self.modalities:
            acc = torch.zeros_like(text.tokens)
            for m in self.modalities:
                e = others[m]
                ignore, _ = _safe_key_mask(e.mask)
                a, w = self.align[m](text.tokens, e.tokens, e.tokens, key_padding_mask=ignore,
                                     need_weights=return_attention, average_attn_weights=False)
                acc = acc + a * available[m].to(a.dtype).reshape(b, 1, 1)
                if return_attention:
                    maps[f"text_to_{m}"] = w
            assert self.align_out is not None
            aligned = self.align_norm(text.tokens + self.align_out(acc))
        else:
            aligned = self.align_norm(text.tokens)
        streams = {"text": Encoded(tokens=aligned, mask=text.mask,
                                   pooled=masked_mean(aligned, text.mask))}
        avail = {"text": torch.ones(b, device=t.device, dtype=t.dtype)}
        for m in self.modalities:
            streams[m] = others[m]
            avail[m] = available[m]
        # 2. hierarchical bottleneck fusion
        cond = self.query_cond(t)
        if query_cond is not None:
            cond = cond + query_cond
        query = self.tokens.unsqueeze(0).expand(b, -1, -1) + cond.unsqueeze(1)
        keys, kmask = aligned, text.mask
        if extra_keys is not None:
            keys = torch.cat([keys, extra_keys.tokens], dim=1)
            kmask = torch.cat([kmask, extra_keys.mask], dim=1)
        query = self.init_read(query, keys, kmask)
        for i, (layer, keep) in enumerate(zip(self.layers, self.schedule, strict=True)):
            query, streams, w = layer(query, keep, streams, avail, return_attention)
            for s, wm in w.items():
                maps[f"bottleneck{i}_{s}"] = wm
        # 3. read-out as a sum of per-part projections
        contributions = {"text": self.readout["bottleneck"](query[:, 0])
                         + self.readout["text"](streams["text"].pooled) + self.readout_bias}
        gates = {}
        for m in self.modalities:
            a = available[m].to(t.dtype).reshape(b, 1)
            contributions[m] = self.readout[m](streams[m].pooled) * a
            gates[m] = a.expand(b, t.shape[1])
        total = torch.stack(list(contributions.values())).sum(0)
        return FusionOutput(fused=self.tail(total), gates=gates,
                            attention=maps if return_attention else None,
                            contributions=contributions)

    def tail(self, total: Tensor) -> Tensor:
        """``out_norm(h + FFN(h))``, ``h = norm(total)`` (shared by every contribution)."""
        h = self.norm(total)
        return self.out_norm(h + self.ffn(h))

    def tail_modules(self) -> list[nn.Module]:
        return [self.norm, self.ffn, self.out_norm]
