"""The compact multimodal student and the prompted (privileged) network.

``build_student(cfg, info, bins)`` assembles: a pre-trained text encoder (LoRA / frozen /
full, optional 8-bit / 4-bit base), one small encoder per feature modality the dataset
has, :class:`~students.fusion.GatedBottleneckFusion` (or the fusion a method supplies),
a prediction head, a head over the label bins, one auxiliary head per modality, and a
linear projection of the fused vector for representation distillation. With
``cfg.prompted`` it also gets the :class:`~students.description.DescriptionBranch`
(MMSLF's teacher network): a frozen text encoder reads the teacher's cached description,
and its projection modulates fusion.

How the bins relate to the scalar prediction
--------------------------------------------
For a regression dataset, ``pred`` comes from the regression head and ``bin_logits``
from a separate linear head over the bins (e.g. the seven integers -3..3 of MOSI). The
bin distribution ``q = softmax(bin_logits)`` has its own scalar estimate
``E_q[bin] = sum_i q_i * bins[i]`` (:meth:`StudentModel.expected_score`), bounded by the
outer bins. The two heads share the fused representation and are tied only through the
losses the trainer adds: KL(teacher || q) shapes the distribution, an expected-score loss
ties ``E_q`` to the teacher's expected score, and the task loss fits ``pred`` to gold.
``pred`` is what metrics read. For a classification dataset the bins are the classes and
``bin_logits`` *is* ``pred`` (the class logits).

Two halves of the forward pass
------------------------------
``forward(batch)`` is ``fuse_and_predict(encode(batch))``: :meth:`StudentModel.encode`
runs the text / feature encoders (and the methods' ``encode`` hooks) into a
:class:`~students.outputs.StudentEncoding`; :meth:`StudentModel.fuse_and_predict` runs
fusion and the heads on one. A method that mixes encodings runs the second half on them.

Methods
-------
The methods on (:mod:`students.methods`, from the config's switches) act through their
hooks: a method may supply the fusion, keeps its parts in the ``methods`` ModuleDict
under its name, may let the text encoder read the other modalities, rewrite the encoding
before fusion, or the fused vector before the heads. The parts of a ``train`` method
are training only: built after every other part, neither counted in ``all`` nor saved
(:meth:`StudentModel.training_only_prefixes`).
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from students.description import DescriptionBranch
from students.encoders import (
    Encoded,
    TextEncoder,
    build_feature_encoder,
    feature_modalities,
    masked_mean,
)
from students.fusion import GatedBottleneckFusion
from students.losses import expected_score
from students.methods import BuildContext, Method, active
from students.outputs import StudentEncoding, StudentOutput
from workbench.config import ConfigError, StudentConfig
from workbench.config.legacy import migrate_weights
from workbench.data.store import DataInfo

log = logging.getLogger(__name__)

__all__ = ["ParamCount", "StudentEncoding", "StudentModel", "StudentOutput", "build_student",
           "count_parameters"]


@dataclass
class ParamCount:
    """Numbers of parameters (4-bit weights counted unpacked)."""

    total: int
    trainable: int


def _numel(p: nn.Parameter) -> int:
    qs = getattr(p, "quant_state", None)  # bitsandbytes Params4bit stores two values a byte
    if qs is not None and getattr(qs, "shape", None) is not None:
        return int(torch.Size(qs.shape).numel())
    return p.numel()


def count_parameters(module: nn.Module) -> ParamCount:
    """Total and trainable parameters of ``module``."""
    total = trainable = 0
    for p in module.parameters():
        n = _numel(p)
        total += n
        if p.requires_grad:
            trainable += n
    return ParamCount(total=total, trainable=trainable)


def _check_bins(bins: list[float] | None, info: DataInfo) -> list[float] | None:
    if info.task == "classification":
        n = len(info.class_names)
        if bins is None:
            return [float(i) for i in range(n)]
        if len(bins) != n:
            raise ValueError(f"bins has {len(bins)} entries but dataset {info.name!r} has {n} "
                             "classes; pass one bin per class (or None)")
    if bins is None:
        return None
    vals = [float(b) for b in bins]
    if len(vals) < 2 or any(b >= c for b, c in zip(vals, vals[1:], strict=False)):
        raise ValueError(f"bins={bins!r}: give at least two strictly increasing values, e.g. "
                         "[-3, -2, -1, 0, 1, 2, 3] for MOSI")
    return vals


class StudentModel(nn.Module):
    """Text encoder + audio / visual encoders + gated bottleneck fusion + heads.

    Build it with :func:`build_student`. ``forward(batch)`` takes the dict made by
    :class:`students.collate.Collator` and returns a :class:`StudentOutput`.
    """

    def __init__(self, cfg: StudentConfig, info: DataInfo, bins: list[float] | None = None,
                 device: str | torch.device | None = None,
                 methods: list[Method] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.info = info
        self.task = info.task
        self.out_dim = 1 if info.task == "regression" else len(info.class_names)
        self.bin_values = _check_bins(bins, info)
        self.register_buffer(
            "bins", torch.tensor(self.bin_values or [], dtype=torch.float32), persistent=False)
        h = cfg.hidden
        self.text = TextEncoder(cfg.text_encoder, cfg.text_mode, cfg.lora, cfg.quantize,
                                cfg.quant_compute_dtype, cfg.gradient_checkpointing, device)
        self.text_proj = nn.Sequential(nn.Linear(self.text.out_dim, h), nn.LayerNorm(h))
        self.modalities = feature_modalities(info)
        self.active_methods: list[Method] = list(active(cfg) if methods is None else methods)
        """The methods on, in :data:`students.methods.METHODS` order."""
        ctx = BuildContext(hidden=h, modalities=list(self.modalities), out_dim=self.out_dim,
                           heads=cfg.heads, dropout=cfg.dropout, text=self.text)
        if cfg.prompted and cfg.prompt_fusion == "tokens" and not self.modalities:
            raise ConfigError(
                f"student.prompt_fusion=tokens: dataset {info.name!r} has no audio / visual "
                "features, so no bottleneck would read the description; set "
                "student.prompt_fusion=film")
        self.feature_kind = {m: info.feature_kind[m] for m in self.modalities}
        self.encoders = nn.ModuleDict({
            m: build_feature_encoder(info.feature_kind[m], info.feature_dims[m], h,
                                     cfg.seq_encoder, cfg.seq_layers, cfg.heads, cfg.dropout)
            for m in self.modalities
        })
        self.fusion = self._build_fusion(ctx)
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(h, h), nn.GELU(),
                                  nn.Dropout(cfg.dropout), nn.Linear(h, self.out_dim))
        self.bin_head = (nn.Linear(h, len(self.bin_values))
                         if self.bin_values is not None and self.task == "regression" else None)
        self.unimodal_heads = nn.ModuleDict({
            m: nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.Linear(h, self.out_dim))
            for m in ["text", *self.modalities]
        })
        self.kd_proj = nn.Linear(h, cfg.kd_repr_dim or h)
        self.prompt = DescriptionBranch(cfg, device) if cfg.prompted else None
        self.methods = nn.ModuleDict()
        """Each method's parts, under its name (:meth:`~students.methods.Method.build`)."""
        for section in ("student", "train"):  # a training-only part never moves the others
            for method in self.active_methods:
                part = method.build(ctx) if method.section == section else None
                if part is not None:
                    self.methods[method.name] = part
        self.serve_merged = False
        """Serving (:func:`students.inference.predict`): the text encoder runs its merged
        copy (:meth:`~students.encoders.TextEncoder.merged`) under no-grad in eval mode."""

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False
                        ) -> Any:
        """:meth:`torch.nn.Module.load_state_dict`, after the weights a checkpoint saved
        under an old name are renamed (:func:`workbench.config.legacy.migrate_weights`)."""
        return super().load_state_dict(migrate_weights(state_dict), strict=strict,
                                       assign=assign)

    def _build_fusion(self, ctx: BuildContext) -> nn.Module:
        """The fusion a method supplies (a structural choice: at most one may), else
        :class:`~students.fusion.GatedBottleneckFusion`."""
        supplied = {m.name: f for m in self.active_methods
                    if (f := m.build_fusion(ctx)) is not None}
        if len(supplied) > 1:
            raise ConfigError(f"methods {sorted(supplied)} each replace the student's fusion; "
                              "switch all but one off (student.<name>.enabled=false)")
        if supplied:
            return next(iter(supplied.values()))
        cfg = self.cfg
        return GatedBottleneckFusion(ctx.hidden, self.modalities, cfg.bottleneck_tokens,
                                     cfg.heads, cfg.dropout)

    # ------------------------------------------------------------------ properties
    @property
    def tokenizer(self) -> Any:
        """The text encoder's tokenizer (what the collator must use)."""
        return self.text.tokenizer

    @property
    def device(self) -> torch.device:
        return self.bins.device  # a buffer: also on an int8 model, whose Linear has no .weight

    def parameter_counts(self) -> dict[str, ParamCount]:
        """Total / trainable parameters per component and overall (``all``)."""
        parts: dict[str, nn.Module] = {"text_encoder": self.text, "text_proj": self.text_proj}
        for m in self.modalities:
            parts[f"{m}_encoder"] = self.encoders[m]
        parts["fusion"] = self.fusion
        heads = nn.ModuleList([self.head, self.unimodal_heads, self.kd_proj]
                              + ([self.bin_head] if self.bin_head is not None else []))
        parts["heads"] = heads
        if self.prompt is not None:
            parts["description_branch"] = self.prompt
        training_only = []
        for method in self.active_methods:
            if method.name in self.methods:
                if method.section == "student":
                    parts[method.name] = self.methods[method.name]
                else:
                    training_only.append(count_parameters(self.methods[method.name]))
        out = {k: count_parameters(v) for k, v in parts.items()}
        every = count_parameters(self)
        out["all"] = ParamCount(total=every.total - sum(c.total for c in training_only),
                                trainable=every.trainable - sum(c.trainable
                                                                for c in training_only))
        return out

    def training_only_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes of the parts only training reads (a ``train`` method's):
        a checkpoint leaves them out."""
        return tuple(f"methods.{m.name}." for m in self.active_methods
                     if m.section == "train" and m.name in self.methods)

    def part(self, method: Method) -> nn.Module | None:
        """``method``'s parts in this student, or None."""
        return self.methods[method.name] if method.name in self.methods else None

    def param_groups(self, lr: float, encoder_lr: float, weight_decay: float
                     ) -> list[dict[str, Any]]:
        """Optimizer groups: the text encoder's trainable weights at ``encoder_lr``, the
        rest at ``lr``; biases and norm weights (1-D) without weight decay."""
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            key = (name.startswith("text."), p.ndim <= 1)
            groups.setdefault(key, []).append(p)
        return [{"params": ps, "lr": encoder_lr if enc else lr,
                 "weight_decay": 0.0 if no_decay else weight_decay}
                for (enc, no_decay), ps in sorted(groups.items())]

    def expected_score(self, bin_logits: Tensor) -> Tensor:
        """``sum_i softmax(bin_logits)_i * bins[i]``: the bin head's scalar estimate."""
        if self.bin_values is None:
            raise ValueError("this student was built without bins; pass bins to build_student")
        return expected_score(bin_logits, self.bins)

    # --------------------------------------------------------------------- forward
    def _get(self, batch: dict[str, Any], key: str) -> Any:
        if key not in batch:
            raise KeyError(f"batch has no {key!r}; build batches with students.collate.Collator "
                           f"for dataset {self.info.name!r} (modalities {self.modalities})")
        return batch[key]

    def forward(self, batch: dict[str, Any], return_attention: bool = False,
                return_encoding: bool = False) -> StudentOutput:
        """Run the student on a collated batch (see :mod:`students.collate`):
        ``fuse_and_predict(encode(batch))``; ``return_encoding`` keeps the encoding in
        the output (``StudentOutput.encoding``)."""
        enc = self.encode(batch)
        out = self.fuse_and_predict(enc, return_attention=return_attention)
        if return_encoding:
            out.encoding = enc
        return out

    def encode(self, batch: dict[str, Any]) -> StudentEncoding:
        """The first half: every modality through its encoder (text projected to
        ``hidden``; with a method's text reader, its layers read the encoded feature
        modalities), the description branch, then each method's ``encode`` hook."""
        readers = [r for m in self.active_methods
                   if (r := m.text_reader(self.part(m))) is not None]
        feats = self._features(batch) if readers else None
        ids, am = self._get(batch, "input_ids"), self._get(batch, "attention_mask")
        if feats is not None:  # the text encoder's layers read the other modalities
            with ExitStack() as stack:
                for reader in readers:
                    stack.enter_context(reader.reading(*feats))
                te = self.text(ids, am, batch.get("token_type_ids"))
        else:  # serving may run the merged encoder (not with readers: they hook its layers)
            te = self.text(ids, am, batch.get("token_type_ids"), merged=self.serve_merged)
        tok = self.text_proj(te.tokens)
        text = Encoded(tokens=tok, mask=te.mask, pooled=masked_mean(tok, te.mask))
        others, avail = feats if feats is not None else self._features(batch)
        text_avail = batch.get("text_avail")
        if text_avail is None:
            text_avail = torch.ones(tok.shape[0], device=tok.device)
        desc = None
        if self.prompt is not None:
            desc = self.prompt(self._get(batch, "descriptions"), self.device)
        enc = StudentEncoding(text=text, others=others, avail=avail, text_avail=text_avail,
                              desc=desc)
        for method in self.active_methods:
            enc = method.encode(self.part(method), enc, batch, self)
        return enc

    def _features(self, batch: dict[str, Any]) -> tuple[dict[str, Encoded], dict[str, Tensor]]:
        others: dict[str, Encoded] = {}
        avail: dict[str, Tensor] = {}
        for m in self.modalities:
            x = self._get(batch, m)
            keep = self._get(batch, f"{m}_keep")
            if self.feature_kind[m] == "vector":
                others[m] = self.encoders[m](x, keep)
            else:
                others[m] = self.encoders[m](x, self._get(batch, f"{m}_lengths"), keep)
            avail[m] = self._get(batch, f"{m}_avail")
        return others, avail

    def fuse_and_predict(self, enc: StudentEncoding,
                         return_attention: bool = False) -> StudentOutput:
        """The second half: fusion (FiLM / description keys for the prompted network),
        the heads, the auxiliary heads on each modality's pooled representation."""
        desc = enc.desc
        cond = extra = None
        if desc is not None and self.prompt is not None:
            if self.prompt.mode == "film":
                cond = desc.pooled
            else:
                extra = desc.tokens
        fo = self.fusion(enc.text, enc.others, enc.avail, query_cond=cond, extra_keys=extra,
                         return_attention=return_attention)
        fused = fo.fused
        if desc is not None and self.prompt is not None and self.prompt.mode == "film":
            fused = self.prompt.modulate(fused, desc)
        extras: dict[str, Any] = {}
        for method in self.active_methods:
            fused, extra = method.after_fusion(self.part(method), fused)
            if extra is not None:
                extras[method.name] = extra
        pred = self.shape_output(self.head(fused))
        if self.task == "classification":
            bin_logits = pred
        else:
            bin_logits = self.bin_head(fused) if self.bin_head is not None else None
        unimodal = {m: self.shape_output(self.unimodal_heads[m](v)) for m, v in enc.pooled().items()}
        return StudentOutput(pred=pred, bin_logits=bin_logits, fused=fused,
                             projected=self.kd_proj(fused), unimodal=unimodal, gates=fo.gates,
                             attention=fo.attention, contributions=fo.contributions,
                             extras=extras)

    # ---------------------------------------------------------- for training methods
    def shared_tail(self, x: Tensor) -> Tensor:
        """A fusion-sum vector (B, h) through the layers every modality shares -- the
        fusion tail, the methods' ``after_fusion`` hooks, and the prediction head --
        shaped like ``pred``."""
        h = self.fusion.tail(x)
        for method in self.active_methods:
            h, _ = method.after_fusion(self.part(method), h)
        return self.shape_output(self.head(h))

    def shared_parameters(self) -> list[nn.Parameter]:
        """The trainable weights of :meth:`shared_tail` (fusion tail, the methods' shared
        modules, head)."""
        mods = [*self.fusion.tail_modules(),
                *[mod for m in self.active_methods for mod in m.shared_modules(self.part(m))],
                self.head]
        return [p for mod in mods for p in mod.parameters() if p.requires_grad]

    def shape_output(self, y: Tensor) -> Tensor:
        """A head's output shaped like ``pred`` ((B,) for one score, (B, C) for classes)."""
        return y.squeeze(-1) if self.out_dim == 1 else y


def build_student(cfg: StudentConfig, info: DataInfo, bins: list[float] | None = None,
                  device: str | torch.device | None = None,
                  methods: list[Method] | None = None) -> StudentModel:
    """Build the student (or, with ``cfg.prompted``, the prompted network) for ``info``.

    ``bins`` are the label bins the teacher's soft labels are over (e.g. -3..3 for MOSI);
    without them the model has no bin head. ``device`` places the model; a quantized text
    base is loaded straight onto it (bitsandbytes weights cannot be moved afterwards).
    ``methods``: the methods on (:func:`students.methods.active`); default: those
    ``cfg`` switches on (a ``train`` method's parts are training only, never saved).
    """
    model = StudentModel(cfg, info, bins, device, methods=methods)
    if device is not None:
        quantized = cfg.quantize != "none"
        for name, child in model.named_children():
            if quantized and name in ("text", "prompt"):
                if name == "prompt":
                    for part in (child.proj, child.film):
                        if part is not None:
                            part.to(device)
                continue
            child.to(device)
        model.bins = model.bins.to(device)
    counts = model.parameter_counts()["all"]
    # one trainable count in a run's log: the trainer's, after the heads no loss reads are
    # frozen (students.objective.freeze_unused)
    log.info("student for %s: modalities=%s prompted=%s params total=%d",
             info.name, "+".join(["text", *model.modalities]), cfg.prompted, counts.total)
    return model
