"""Cross-sample enhancement (after HME) as a method: the memory bank and gates are its
parts, its ``encode`` hook enhances degraded modalities (:mod:`.memory`)."""

from __future__ import annotations

from typing import Any

from torch import nn

from students.methods.base import BuildContext, Method, StudentView
from students.methods.enhance.memory import CrossSampleEnhancer, enhance_encoding
from students.outputs import StudentEncoding
from workbench.config import EnhanceConfig


class Enhance(Method):
    """A missing / masked modality borrows from its nearest training samples;
    ``student.enhance`` (the bank is saved with the checkpoint)."""

    name = "enhance"
    section = "student"
    cfg: EnhanceConfig

    def build(self, ctx: BuildContext) -> nn.Module:
        c = self.cfg
        return CrossSampleEnhancer(ctx.hidden, ctx.streams, ctx.modalities, c.bank, c.k,
                                   c.temperature)

    def encode(self, part: nn.Module | None, enc: StudentEncoding, batch: dict[str, Any],
               model: StudentView) -> StudentEncoding:
        assert isinstance(part, CrossSampleEnhancer)
        return enhance_encoding(part, enc, batch, training=model.training)
