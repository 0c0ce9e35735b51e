"""MIDG's cross-modal adapter (``student.midg.adapter``): after chosen layers of the text
encoder, a bottleneck block whose queries are the layer's token states and whose keys are
the audio / vision tokens adds ``up(attn(down(x), others))`` to the states -- the other
modalities are injected into the text encoder, beside the LoRA adapter. ``up`` starts at
zero, so a fresh adapter leaves the encoder unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

from students.encoders import Encoded
from students.fusion import _safe_key_mask


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer layers of a transformers encoder (BERT-style ``encoder.layer``, or
    ``layers``), also inside a PEFT wrapper."""
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and (name.endswith("encoder.layer")
                                               or name.endswith("layers")) and len(mod):
            return mod
    raise ValueError(f"{type(model).__name__} has no encoder.layer / layers list for MIDG's "
                     "cross-modal adapter; set student.midg.adapter=false")


class _AdapterBlock(nn.Module):
    def __init__(self, d_text: int, hidden: int, rank: int, heads: int) -> None:
        super().__init__()
        self.down = nn.Linear(d_text, rank)
        self.keys = nn.Linear(hidden, rank)
        self.attn = nn.MultiheadAttention(rank, heads if rank % heads == 0 else 1,
                                          batch_first=True)
        self.up = nn.Linear(rank, d_text)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor, keys: Tensor, mask: Tensor, avail: Tensor) -> Tensor:
        ignore, _ = _safe_key_mask(mask)
        kv = self.keys(keys).to(x.dtype)
        a, _ = self.attn(self.down(x), kv, kv, key_padding_mask=ignore, need_weights=False)
        return self.up(a) * avail.to(x.dtype).reshape(-1, 1, 1)


class CrossModalAdapter(nn.Module):
    """Cross-attention adapters after the last ``layers`` layers of a transformers
    encoder, reading the other modalities' encoded tokens (see the module docstring)."""

    def __init__(self, encoder_layers: nn.ModuleList, d_text: int, hidden: int,
                 modalities: list[str], layers: int, rank: int, heads: int) -> None:
        super().__init__()
        n = len(encoder_layers)
        self.at = list(range(max(0, n - layers), n))
        self.modalities = list(modalities)
        self.blocks = nn.ModuleDict({
            f"{i}_{m}": _AdapterBlock(d_text, hidden, rank, heads)
            for i in self.at for m in self.modalities})
        self._context: tuple[dict[str, Encoded], dict[str, Tensor]] | None = None
        for i in self.at:
            encoder_layers[i].register_forward_hook(self._hook(i))

    def _hook(self, i: int) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            if self._context is None:
                return output
            others, avail = self._context
            states = output[0] if isinstance(output, tuple) else output
            for m in self.modalities:
                e = others[m]
                states = states + self.blocks[f"{i}_{m}"](states, e.tokens, e.mask, avail[m])
            return (states, *output[1:]) if isinstance(output, tuple) else states
        return hook

    @contextmanager
    def reading(self, others: dict[str, Encoded], avail: dict[str, Tensor]) -> Iterator[None]:
        """Within this block, the hooked layers read ``others`` (availability ``avail``)."""
        self._context = (others, avail)
        try:
            yield
        finally:
            self._context = None
