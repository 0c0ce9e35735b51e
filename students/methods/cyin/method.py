"""CyIN as a method: its variational bottleneck, decoders, label heads and translators are
its parts; its ``encode`` hook replaces every modality by its latent (a missing one
translated from those present); five terms in the step."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from students.methods.base import BuildContext, Method, Step, StudentView
from students.methods.cyin.latent import CyclicLatent, cyin_losses, cyin_total
from students.outputs import StudentEncoding, StudentOutput
from workbench.config import CyinConfig


class Cyin(Method):
    """Cyclic informative latent space (:mod:`.latent`); ``student.cyin``."""

    name = "cyin"
    section = "student"
    cfg: CyinConfig

    def build(self, ctx: BuildContext) -> nn.Module:
        return CyclicLatent(ctx.hidden, ctx.streams, ctx.out_dim, self.cfg)

    def encode(self, part: nn.Module | None, enc: StudentEncoding, batch: dict[str, Any],
               model: StudentView) -> StudentEncoding:
        assert isinstance(part, CyclicLatent)
        return part(enc)

    def losses(self, model: StudentView, out: StudentOutput, batch: dict[str, Any],
               step: Step) -> dict[str, Tensor]:
        return cyin_losses(model, model.methods[self.name], out, batch, self.cfg,
                           task_kind=step.task_kind, classification=step.classification)

    def weighted(self, terms: dict[str, Tensor]) -> list[Tensor]:
        return [cyin_total(terms, self.cfg)]

    def unused_parts(self, part: nn.Module | None) -> dict[str, nn.Module]:
        if not isinstance(part, CyclicLatent):
            return {}
        out: dict[str, nn.Module] = {}
        if self.cfg.label_weight == 0:  # terms weighted 0 train nothing
            out["cyin_label_heads"] = part.label_head
        if self.cfg.recon_weight == 0:
            out["cyin_decoders"] = part.decoder
        return out
