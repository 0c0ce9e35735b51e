"""What the student's two halves hand on: :class:`StudentEncoding` (after the encoders,
before fusion) and :class:`StudentOutput` (after the heads).

They live apart from :mod:`students.model` so that a method (:mod:`students.methods`)
can read and build them without importing the model that calls it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from students.description import DescriptionEncoding
from students.encoders import Encoded


@dataclass
class StudentEncoding:
    """What :meth:`~students.model.StudentModel.encode` returns: the encoded modalities
    before fusion.

    * ``text``: projected text tokens (B, L, h), mask, pooled (B, h).
    * ``others``: per feature modality, its :class:`~students.encoders.Encoded` (a method's
      ``encode`` hook may have rewritten it, e.g. added a token).
    * ``avail``: per feature modality, (B,) in {0, 1}, what fusion gates with.
    * ``text_avail``: (B,) 1 where the sample has text.
    * ``desc``: the description branch's encoding (prompted network), or None.
    * ``extras``: per method name, what its ``encode`` hook left for its losses or for
      the caller (e.g. which samples it changed).
    """

    text: Encoded
    others: dict[str, Encoded]
    avail: dict[str, Tensor]
    text_avail: Tensor
    desc: DescriptionEncoding | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def pooled(self) -> dict[str, Tensor]:
        """Per modality (``text`` first), the pooled (B, h) representation."""
        return {"text": self.text.pooled, **{m: e.pooled for m, e in self.others.items()}}

    def available(self) -> dict[str, Tensor]:
        """Per modality (``text`` first), (B,) availability."""
        return {"text": self.text_avail, **self.avail}


@dataclass
class StudentOutput:
    """What :meth:`~students.model.StudentModel.forward` returns.

    * ``pred``: (B,) regression score, or (B, C) class logits.
    * ``bin_logits``: (B, n_bins) logits over the label bins, or None without bins.
    * ``fused``: (B, hidden) fused representation (what a prompted teacher hands down).
    * ``projected``: (B, kd_repr_dim) ``fused`` through the representation-distillation
      projection (compare it with the prompted network's ``fused``).
    * ``unimodal``: per modality ('text', 'audio', 'vision'), the auxiliary head's
      prediction, shaped like ``pred``; mask it with the batch's ``<m>_avail``.
    * ``gates``: per non-text modality, the (B, hidden) gate after availability.
    * ``attention``: fusion attention maps (see :mod:`students.fusion`), or None.
    * ``contributions``: per modality, what it adds to the fusion sum before the shared
      tail (``text``: the pooled text; ``m``: ``a_m * g_m * c_m``).
    * ``encoding``: the :class:`StudentEncoding` it came from, with
      ``forward(..., return_encoding=True)``; else None.
    * ``extras``: per method name, what its ``after_fusion`` hook returned besides the
      fused vector (e.g. a router's probabilities).
    """

    pred: Tensor
    bin_logits: Tensor | None
    fused: Tensor
    projected: Tensor
    unimodal: dict[str, Tensor]
    gates: dict[str, Tensor]
    attention: dict[str, Tensor] | None
    contributions: dict[str, Tensor] | None = None
    encoding: StudentEncoding | None = None
    extras: dict[str, Any] = field(default_factory=dict)
