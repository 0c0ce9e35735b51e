"""MS-Mix as a method: intensity heads built for training, its three terms in the step."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from students.methods.base import BuildContext, Method, Step, StudentView
from students.methods.msmix.mixing import intensity_heads, msmix_losses
from students.outputs import StudentOutput
from workbench.config import MsMixConfig


class MsMix(Method):
    """Sentiment-aware mixup of the encoded modalities (:mod:`.mixing`); ``train.msmix``."""

    name = "msmix"
    section = "train"
    cfg: MsMixConfig

    def build(self, ctx: BuildContext) -> nn.Module:
        return intensity_heads(ctx.hidden, ctx.streams)

    def losses(self, model: StudentView, out: StudentOutput, batch: dict[str, Any],
               step: Step) -> dict[str, Tensor]:
        if step.rng is None:
            raise ValueError("MS-Mix needs rng= (a numpy Generator seeded per step)")
        return msmix_losses(model, model.methods[self.name], out, batch, self.cfg,
                            task_kind=step.task_kind, label_range=step.label_range,
                            bins=step.bins, rng=step.rng)

    def weighted(self, terms: dict[str, Tensor]) -> list[Tensor]:
        c = self.cfg
        return [c.weight * terms["msmix"], c.kl_weight * terms["msmix_kl"],
                c.intensity_weight * terms["msmix_intensity"]]

    def reads_heads(self) -> set[str]:
        return {"unimodal_heads"} if self.cfg.kl_weight > 0 else set()

    def unused_parts(self, part: nn.Module | None) -> dict[str, nn.Module]:
        return {"intensity_heads": part} if part is not None and self.cfg.intensity_weight == 0 \
            else {}
