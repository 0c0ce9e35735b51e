"""The protocol a method fills: a few hooks the core student, objective and recipe call.

A method is one object (a :class:`Method` subclass) built from its config object; the
student (:mod:`students.model`), the loss (:mod:`students.objective`) and the training
loop (:mod:`students.recipe`) call its hooks and never name it. Every hook has a default
that does nothing, so a method fills only those it needs. The hooks, in the order a step
meets them, and the methods that fill them today:

==================  ===========================================================  ===========
hook                what it does                                                 filled by
==================  ===========================================================  ===========
``build_fusion``    the student's fusion module, when the method *is* the        DashFusion
                    fusion (a structural choice: at most one method may)
``build``           its parts, kept in the student's ``methods`` ModuleDict      MS-Mix,
                    under its name (parts of ``train`` methods are built after   CyIN, HME,
                    every ``student`` part, so they never change the student's   MIDG
                    initialisation)
``text_reader``     a part that reads the other modalities inside the text       MIDG
                    encoder (the student then encodes them first)
``encode``          rewrites the encoding between the encoders and fusion        CyIN, HME
``after_fusion``    rewrites the fused vector before the heads (also inside      MIDG
                    ``shared_tail``); what else it returns goes to
                    ``StudentOutput.extras[name]``
``shared_modules``  its modules among the layers every modality shares           MIDG
``prepare``         what it reads from the train split before training           conflict
``masking``         the missing-modality masks of an epoch's training batches    LNLN
``losses``          its terms for one step (unweighted, logged by name)          MS-Mix,
                                                                                 conflict,
                                                                                 DashFusion,
                                                                                 CyIN, MIDG
``weighted``        how its terms add to the total, term by term                 (same)
``reads_heads``     the student's own heads its terms read (kept trainable)      MS-Mix
``unused_parts``    its parts no term reads (frozen: no weight without a         MS-Mix,
                    gradient)                                                    CyIN
==================  ===========================================================  ===========

``section`` says where the method's config object sits and what a checkpoint keeps:
``student`` methods change the model (their config is ``student.<name>``, their parts are
saved and rebuilt with the checkpoint, the prompted network has them too); ``train``
methods change training only (``train.<name>``; their parts, if any, are never saved).
Every config object is switched by its ``enabled`` field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import numpy as np
from torch import Tensor, nn

from students.outputs import StudentEncoding, StudentOutput

if TYPE_CHECKING:
    from students.robustness import MaskSpec
    from workbench.data.schema import Sample
    from workbench.data.store import DataInfo


class StudentView(Protocol):
    """What a method reads of the student it is part of (:class:`students.model.
    StudentModel` is one): methods are typed against this, so they never import the model,
    which imports them."""

    training: bool
    methods: nn.ModuleDict
    """The active methods' parts, by method name."""

    def fuse_and_predict(self, enc: StudentEncoding,
                         return_attention: bool = False) -> StudentOutput:
        """Fusion and heads on an encoding (e.g. a mixed one)."""
        ...

    def shared_tail(self, x: Tensor) -> Tensor:
        """A fusion-sum vector through the layers every modality shares, shaped like
        ``pred``."""
        ...

    def shared_parameters(self) -> list[nn.Parameter]:
        """The trainable weights of :meth:`shared_tail`."""
        ...

    def shape_output(self, y: Tensor) -> Tensor:
        """A head's output shaped like ``pred`` ((B,) for one score, (B, C) for classes)."""
        ...


@dataclass
class BuildContext:
    """What a method's parts are built for: the student's width and modalities."""

    hidden: int
    modalities: list[str]
    """The feature modalities (audio / vision) the student has; text is always there."""
    out_dim: int
    """Width of ``pred``: 1 for regression, the number of classes for classification."""
    heads: int
    dropout: float
    text: Any
    """The student's :class:`~students.encoders.TextEncoder` (a part may hook its layers)."""

    @property
    def streams(self) -> list[str]:
        """Every modality, text first."""
        return ["text", *self.modalities]


@dataclass
class Step:
    """What a loss hook needs besides the model, its output and the batch."""

    task_kind: str
    """The task loss (``train.task_loss``)."""
    classification: bool
    label_range: tuple[float, float]
    bins: Tensor | None
    """The label bins of the soft labels (on the model's device), or None."""
    rng: np.random.Generator | None = None
    """Seeded per step by the loop, for terms that draw (pairs, ratios)."""


class Method:
    """A training method (see the module docstring). Subclasses set ``name`` (the key of
    :data:`students.methods.METHODS` and of its config object) and ``section``, and fill
    the hooks they need; ``cfg`` is the method's config object."""

    name: ClassVar[str]
    section: ClassVar[Literal["student", "train"]]

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.cfg!r})"

    # ------------------------------------------------------------------------ the model
    def build_fusion(self, ctx: BuildContext) -> nn.Module | None:
        """The student's fusion module (the interface of
        :class:`~students.fusion.GatedBottleneckFusion`), or None to keep the default."""
        return None

    def build(self, ctx: BuildContext) -> nn.Module | None:
        """Its parts (``model.methods[name]``), or None when it has none."""
        return None

    def text_reader(self, part: nn.Module | None) -> Any:
        """An object whose ``reading(others, avail)`` context lets the text encoder read
        the encoded feature modalities, or None."""
        return None

    def encode(self, part: nn.Module | None, enc: StudentEncoding, batch: dict[str, Any],
               model: StudentView) -> StudentEncoding:
        """The encoding fusion reads (default: ``enc`` unchanged)."""
        return enc

    def after_fusion(self, part: nn.Module | None, fused: Tensor) -> tuple[Tensor, Any]:
        """(the fused vector the heads read, what else to keep in the output or None)."""
        return fused, None

    def shared_modules(self, part: nn.Module | None) -> list[nn.Module]:
        """Its modules between fusion and the head, which every modality passes."""
        return []

    # ----------------------------------------------------------------------- training
    def prepare(self, samples: list[Sample], info: DataInfo) -> None:
        """Read what it needs from the train split (before the first step)."""

    def masking(self, seed: int, epoch: int, streams: tuple[str, ...]) -> MaskSpec | None:
        """The missing-modality masks of epoch ``epoch``'s training batches, or None."""
        return None

    @property
    def adds_losses(self) -> bool:
        """Whether :meth:`losses` gives terms (the step then keeps the encoding)."""
        return type(self).losses is not Method.losses

    def losses(self, model: StudentView, out: StudentOutput, batch: dict[str, Any],
               step: Step) -> dict[str, Tensor]:
        """Its terms for one step, unweighted, named ``<name>...`` (logged as they are).
        ``out`` is the forward pass with its encoding; ``model`` the unwrapped student."""
        return {}

    def weighted(self, terms: dict[str, Tensor]) -> list[Tensor]:
        """What :meth:`losses`' terms add to the total, in order (each added in turn)."""
        return []

    def reads_heads(self) -> set[str]:
        """Names of the student's own heads its terms read (``unimodal_heads``)."""
        return set()

    def unused_parts(self, part: nn.Module | None) -> dict[str, nn.Module]:
        """Its parts that no term reads, by a name for the log (they are frozen)."""
        return {}

