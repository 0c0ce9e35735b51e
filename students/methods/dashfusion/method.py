"""DashFusion as a method: it *is* the student's fusion (a structural choice), and adds
its two alignment terms to the step."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from students.methods.base import BuildContext, Method, Step, StudentView
from students.methods.dashfusion.fusion import DashFusion as DashFusionModule
from students.methods.dashfusion.losses import dashfusion_losses
from students.outputs import StudentOutput
from workbench.config import DashFusionConfig


class DashFusion(Method):
    """Temporal alignment + hierarchical bottleneck fusion (:mod:`.fusion`) with its
    alignment losses (:mod:`.losses`); ``student.dashfusion``."""

    name = "dashfusion"
    section = "student"
    cfg: DashFusionConfig

    def build_fusion(self, ctx: BuildContext) -> nn.Module:
        return DashFusionModule(ctx.hidden, ctx.modalities, ctx.heads, ctx.dropout, self.cfg)

    def losses(self, model: StudentView, out: StudentOutput, batch: dict[str, Any],
               step: Step) -> dict[str, Tensor]:
        return dashfusion_losses(out, batch, self.cfg, step.classification)

    def weighted(self, terms: dict[str, Tensor]) -> list[Tensor]:
        return [self.cfg.align_weight * terms["dash_align"],
                self.cfg.supcon_weight * terms["dash_supcon"]]
