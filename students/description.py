"""The prompted (privileged) network's description branch (MMSLF's teacher network): a
frozen text encoder reads the teacher's cached description, a trainable projection turns
it into a vector that modulates the student's fusion (FiLM or extra key tokens)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from students.encoders import Encoded, TextEncoder, masked_mean
from workbench.config import StudentConfig


@dataclass
class DescriptionEncoding:
    """The description branch's output: pooled (B, h), token states, availability (B,)."""

    pooled: Tensor
    tokens: Encoded
    available: Tensor


class DescriptionBranch(nn.Module):
    """Frozen text encoder + trainable projection for the teacher's descriptions.

    An empty description (no teacher output for the sample) contributes nothing: its
    pooled vector, token mask and FiLM terms are zeroed.
    """

    def __init__(self, cfg: StudentConfig, device: str | torch.device | None) -> None:
        super().__init__()
        self.encoder = TextEncoder(cfg.prompt_encoder or cfg.text_encoder, mode="frozen",
                                   quantize=cfg.quantize,
                                   compute_dtype=cfg.quant_compute_dtype, device=device)
        self.max_len = cfg.prompt_max_len
        self.mode = cfg.prompt_fusion
        self.proj = nn.Sequential(nn.Linear(self.encoder.out_dim, cfg.hidden),
                                  nn.LayerNorm(cfg.hidden))
        # Only the film mode has FiLM weights (no parameter without a gradient, which
        # distributed training would reject).
        self.film = nn.Linear(cfg.hidden, 2 * cfg.hidden) if self.mode == "film" else None

    def forward(self, descriptions: list[str], device: torch.device) -> DescriptionEncoding:
        if not isinstance(descriptions, (list, tuple)) or not all(
                isinstance(d, str) for d in descriptions):
            raise TypeError("batch['descriptions'] must be a list of strings ('' where a sample "
                            f"has none), got {type(descriptions).__name__}")
        available = torch.tensor([1.0 if d.strip() else 0.0 for d in descriptions],
                                 device=device)
        tok = self.encoder.tokenizer(list(descriptions), padding=True, truncation=True,
                                     max_length=self.max_len, return_tensors="pt")
        tok = {k: v.to(device) for k, v in tok.items()}
        enc = self.encoder(tok["input_ids"], tok["attention_mask"], tok.get("token_type_ids"))
        tokens = self.proj(enc.tokens)
        mask = enc.mask & available.bool().unsqueeze(1)
        pooled = masked_mean(tokens, enc.mask) * available.unsqueeze(1)
        return DescriptionEncoding(pooled=pooled,
                                   tokens=Encoded(tokens=tokens * mask.unsqueeze(-1), mask=mask,
                                                  pooled=pooled),
                                   available=available)

    def modulate(self, fused: Tensor, desc: DescriptionEncoding) -> Tensor:
        """FiLM: ``fused * (1 + gamma) + beta``, with gamma, beta from the description."""
        if self.film is None:
            raise ValueError("FiLM needs student.prompt_fusion=film")
        gamma, beta = self.film(desc.pooled).chunk(2, dim=-1)
        a = desc.available.unsqueeze(1)
        return fused * (1.0 + gamma * a) + beta * a
