"""The compact multimodal student and the prompted (privileged) network.

``build_student(cfg, info, bins)`` assembles: a pre-trained text encoder (LoRA / frozen /
full, optional 8-bit / 4-bit base), one small encoder per feature modality the dataset
has, :class:`~students.fusion.GatedBottleneckFusion` (or, with
``student.fusion=dashfusion``, :class:`~students.dashfusion.DashFusion`), a prediction head, a head over the
label bins, one auxiliary head per modality, and a linear projection of the fused vector
for representation distillation. With ``cfg.prompted`` it also gets the
:class:`~students.description.DescriptionBranch` (MMSLF's teacher network): a frozen text encoder reads the
teacher's cached description, and its projection modulates fusion.

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
runs the text / feature encoders (and, with ``student.enhance.enabled``, the cross-sample
enhancement of :mod:`students.enhance`) into a :class:`StudentEncoding`;
:meth:`StudentModel.fuse_and_predict` runs fusion and the heads on one. The trainer's
MS-Mix (:mod:`students.msmix`) mixes encodings and runs the second half on them.
Built with ``msmix=True`` the model also has one *intensity head* per modality
(training only: the checkpoint leaves them out, :data:`TRAINING_ONLY_PREFIXES`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from students.cyin import CyclicLatent
from students.dashfusion import DashFusion
from students.description import DescriptionBranch, DescriptionEncoding
from students.encoders import (
    Encoded,
    TextEncoder,
    build_feature_encoder,
    feature_modalities,
    masked_mean,
)
from students.enhance import CrossSampleEnhancer, observed_fraction
from students.fusion import GatedBottleneckFusion
from students.losses import expected_score
from students.midg import CrossModalAdapter, MixtureOfExperts, encoder_layers
from workbench.config import ConfigError, StudentConfig
from workbench.data.store import DataInfo

log = logging.getLogger(__name__)

TRAINING_ONLY_PREFIXES = ("intensity_heads.",)
"""State-dict prefixes of heads that only training reads (MS-Mix's intensity heads): they
are neither counted in ``all`` nor saved in a checkpoint."""


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


@dataclass
class StudentOutput:
    """What :meth:`StudentModel.forward` returns.

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
    router: Tensor | None = None
    """``student.experts=midg``: the router's (B, n_experts) probabilities."""


@dataclass
class StudentEncoding:
    """What :meth:`StudentModel.encode` returns: the encoded modalities before fusion.

    * ``text``: projected text tokens (B, L, h), mask, pooled (B, h).
    * ``others``: per feature modality, its :class:`~students.encoders.Encoded` (with
      ``student.enhance.enabled``, an extra key token for the samples it enhanced).
    * ``avail``: per feature modality, (B,) in {0, 1}, what fusion gates with.
    * ``text_avail``: (B,) 1 where the sample has text.
    * ``desc``: the description branch's encoding (prompted network), or None.
    * ``enhanced``: per enhanced modality, (B,) bool: samples that got neighbours' help.
    """

    text: Encoded
    others: dict[str, Encoded]
    avail: dict[str, Tensor]
    text_avail: Tensor
    desc: DescriptionEncoding | None = None
    enhanced: dict[str, Tensor] | None = None
    latent: Any = None
    """``student.latent=cyin``: the :class:`students.cyin.LatentState` of this pass."""

    def pooled(self) -> dict[str, Tensor]:
        """Per modality (``text`` first), the pooled (B, h) representation."""
        return {"text": self.text.pooled, **{m: e.pooled for m, e in self.others.items()}}

    def available(self) -> dict[str, Tensor]:
        """Per modality (``text`` first), (B,) availability."""
        return {"text": self.text_avail, **self.avail}


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
                 device: str | torch.device | None = None, msmix: bool = False) -> None:
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
        self.fusion: GatedBottleneckFusion | DashFusion = (
            DashFusion(h, self.modalities, cfg.heads, cfg.dropout, cfg.dashfusion)
            if cfg.fusion == "dashfusion" else
            GatedBottleneckFusion(h, self.modalities, cfg.bottleneck_tokens, cfg.heads,
                                  cfg.dropout))
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
        ecfg = cfg.enhance
        self.enhance = (CrossSampleEnhancer(h, ["text", *self.modalities], self.modalities,
                                            ecfg.bank, ecfg.k, ecfg.temperature)
                        if ecfg.enabled else None)
        self.latent = (CyclicLatent(h, ["text", *self.modalities], self.out_dim, cfg.cyin)
                       if cfg.latent == "cyin" else None)
        mc = cfg.midg
        midg = cfg.experts == "midg"
        self.experts = MixtureOfExperts(h, mc.n_experts, cfg.dropout) if midg else None
        self.adapter = (CrossModalAdapter(encoder_layers(self.text.model), self.text.out_dim, h,
                                          self.modalities, mc.adapter_layers, mc.adapter_rank,
                                          cfg.heads)
                        if midg and mc.adapter and self.modalities else None)
        self.serve_merged = False
        """Serving (:func:`students.inference.predict`): the text encoder runs its merged
        copy (:meth:`~students.encoders.TextEncoder.merged`) under no-grad in eval mode."""
        # MS-Mix: emotional intensity |score| per modality (training only).
        self.intensity_heads = (nn.ModuleDict({
            m: nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.Linear(h, 1))
            for m in ["text", *self.modalities]}) if msmix else None)

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
        if self.enhance is not None:
            parts["enhance"] = self.enhance
        if self.latent is not None:
            parts["latent"] = self.latent
        if self.experts is not None:
            parts["experts"] = self.experts
        if self.adapter is not None:
            parts["adapter"] = self.adapter
        out = {k: count_parameters(v) for k, v in parts.items()}
        every = count_parameters(self)
        if self.intensity_heads is not None:  # training only, not part of the student
            extra = count_parameters(self.intensity_heads)
            every = ParamCount(total=every.total - extra.total,
                               trainable=every.trainable - extra.trainable)
        out["all"] = every
        return out

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
        ``hidden``), the description branch, and (``student.enhance.enabled``) cross-sample
        enhancement of degraded audio / vision, which in training mode also pushes the
        batch's complete samples into the memory bank."""
        feats = self._features(batch) if self.adapter is not None else None
        ids, am = self._get(batch, "input_ids"), self._get(batch, "attention_mask")
        if self.adapter is not None and feats is not None:
            with self.adapter.reading(*feats):  # MIDG: the text layers read audio / vision
                te = self.text(ids, am, batch.get("token_type_ids"))
        else:  # serving may run the merged encoder (MIDG's adapter hooks the layers: not then)
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
        if self.latent is not None:
            enc = self.latent(enc)
        if self.enhance is not None:
            enc = self._enhance(enc, batch)
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

    def _enhance(self, enc: StudentEncoding, batch: dict[str, Any]) -> StudentEncoding:
        assert self.enhance is not None
        observed = {m: observed_fraction(self._get(batch, f"{m}_keep"),
                                         self._get(batch, f"{m}_lengths")) * (enc.avail[m] > 0)
                    for m in self.modalities}
        pooled = enc.pooled()
        present = enc.available()
        blended, apply, _ = self.enhance(pooled, present, observed)
        if self.training:
            rates = batch.get("missing_rates") or {}
            text_whole = enc.text_avail > 0
            if "text" in rates:
                text_whole = text_whole & (rates["text"].to(text_whole.device) <= 0)
            complete = text_whole
            for m in self.modalities:
                complete = complete & (observed[m] >= 1.0)
            self.enhance.push(pooled, complete)
        others = dict(enc.others)
        avail = dict(enc.avail)
        for m in self.modalities:
            e, a = others[m], apply[m]
            others[m] = Encoded(
                tokens=torch.cat([e.tokens, blended[m].unsqueeze(1).to(e.tokens.dtype)], dim=1),
                mask=torch.cat([e.mask, a.unsqueeze(1)], dim=1),
                pooled=torch.where(a.unsqueeze(1), blended[m].to(e.pooled.dtype), e.pooled))
            avail[m] = torch.where(a, torch.ones_like(avail[m]), avail[m])
        return StudentEncoding(text=enc.text, others=others, avail=avail,
                               text_avail=enc.text_avail, desc=enc.desc, enhanced=apply,
                               latent=enc.latent)

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
        router = None
        if self.experts is not None:
            fused, router = self.experts(fused)
        pred = self._shape(self.head(fused))
        if self.task == "classification":
            bin_logits = pred
        else:
            bin_logits = self.bin_head(fused) if self.bin_head is not None else None
        unimodal = {m: self._shape(self.unimodal_heads[m](v)) for m, v in enc.pooled().items()}
        return StudentOutput(pred=pred, bin_logits=bin_logits, fused=fused,
                             projected=self.kd_proj(fused), unimodal=unimodal, gates=fo.gates,
                             attention=fo.attention, contributions=fo.contributions,
                             router=router)

    # ---------------------------------------------------------- for training methods
    def shared_tail(self, x: Tensor) -> Tensor:
        """A fusion-sum vector (B, h) through the layers every modality shares -- the
        fusion tail, MIDG's experts when the student has them, and the prediction head --
        shaped like ``pred``."""
        h = self.fusion.tail(x)
        if self.experts is not None:
            h, _ = self.experts(h)
        return self._shape(self.head(h))

    def shared_parameters(self) -> list[nn.Parameter]:
        """The trainable weights of :meth:`shared_tail` (fusion tail, experts, head)."""
        mods = [*self.fusion.tail_modules(), *([self.experts] if self.experts is not None else []),
                self.head]
        return [p for mod in mods for p in mod.parameters() if p.requires_grad]

    def intensity(self, enc: StudentEncoding) -> dict[str, Tensor]:
        """MS-Mix: predicted emotional intensity (B,) >= 0 per modality (softplus)."""
        if self.intensity_heads is None:
            raise ValueError("this student has no intensity heads; build it with msmix=True "
                             "(train.msmix=true)")
        return {m: torch.nn.functional.softplus(self.intensity_heads[m](v)).squeeze(-1)
                for m, v in enc.pooled().items()}

    def _shape(self, y: Tensor) -> Tensor:
        return y.squeeze(-1) if self.out_dim == 1 else y


def build_student(cfg: StudentConfig, info: DataInfo, bins: list[float] | None = None,
                  device: str | torch.device | None = None, msmix: bool = False) -> StudentModel:
    """Build the student (or, with ``cfg.prompted``, the prompted network) for ``info``.

    ``bins`` are the label bins the teacher's soft labels are over (e.g. -3..3 for MOSI);
    without them the model has no bin head. ``device`` places the model; a quantized text
    base is loaded straight onto it (bitsandbytes weights cannot be moved afterwards).
    ``msmix`` adds MS-Mix's intensity heads (training only, never saved in a checkpoint).
    """
    model = StudentModel(cfg, info, bins, device, msmix=msmix)
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
    log.info("student for %s: modalities=text+%s prompted=%s params total=%d",
             info.name, "+".join(model.modalities) or "none", cfg.prompted, counts.total)
    return model
