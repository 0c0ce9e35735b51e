"""MIDG as a method: the experts act on the fused vector (and are among the layers every
modality shares), the optional adapter lets the text encoder read the other modalities;
two terms in the step."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from students.methods.base import BuildContext, Method, Step, StudentView
from students.methods.midg.adapter import CrossModalAdapter, encoder_layers
from students.methods.midg.experts import MixtureOfExperts, midg_losses
from students.outputs import StudentOutput
from workbench.config import MidgConfig


class MidgParts(nn.Module):
    """MIDG's parts: the mixture of experts and, with ``adapter=true`` and a feature
    modality to read, the cross-modal adapter (else None)."""

    def __init__(self, ctx: BuildContext, cfg: MidgConfig) -> None:
        super().__init__()
        self.experts = MixtureOfExperts(ctx.hidden, cfg.n_experts, ctx.dropout)
        self.adapter = (CrossModalAdapter(encoder_layers(ctx.text.model), ctx.text.out_dim,
                                          ctx.hidden, ctx.modalities, cfg.adapter_layers,
                                          cfg.adapter_rank, ctx.heads)
                        if cfg.adapter and ctx.modalities else None)


class Midg(Method):
    """Mixture of invariant experts + cross-modal adapter (:mod:`.experts`,
    :mod:`.adapter`); ``student.midg`` (domains from ``data.domain``)."""

    name = "midg"
    section = "student"
    cfg: MidgConfig

    def build(self, ctx: BuildContext) -> nn.Module:
        return MidgParts(ctx, self.cfg)

    def text_reader(self, part: nn.Module | None) -> CrossModalAdapter | None:
        return part.adapter if isinstance(part, MidgParts) else None

    def after_fusion(self, part: nn.Module | None, fused: Tensor) -> tuple[Tensor, Any]:
        assert isinstance(part, MidgParts)
        return part.experts(fused)  # (mixed, the router's probabilities)

    def shared_modules(self, part: nn.Module | None) -> list[nn.Module]:
        return [part.experts] if isinstance(part, MidgParts) else []

    def losses(self, model: StudentView, out: StudentOutput, batch: dict[str, Any],
               step: Step) -> dict[str, Tensor]:
        return midg_losses(out, batch, self.cfg, task_kind=step.task_kind,
                           classification=step.classification)

    def weighted(self, terms: dict[str, Tensor]) -> list[Tensor]:
        return [self.cfg.balance_weight * terms["midg_balance"],
                self.cfg.invariance_weight * terms["midg_invariance"]]
