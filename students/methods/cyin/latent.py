"""CyIN: a cyclic informative latent space shared by complete and incomplete inputs
(``student.cyin``, :class:`~workbench.config.CyinConfig`).

Between the encoders and the fusion, every modality ``m`` (text, audio, vision) goes
through a variational information bottleneck (:class:`CyclicLatent`):

* **token-level IB**: a per-token encoder gives ``mu, logvar`` (width ``hidden``); the
  latent is ``z = mu + eps * exp(logvar / 2)`` in training (:func:`reparameterise`) and
  ``mu`` at evaluation; :func:`kl_standard_normal` pulls it towards N(0, I); decoders
  reconstruct, from the pooled latent of each modality ``i``, the pooled encoding of every
  modality ``j`` (``i == j``: its own tokens, token by token) -- the bottleneck is applied
  cyclically among the modalities, so each latent keeps what the others share;
* **label-level IB**: a head per modality predicts the gold label from its pooled latent
  (the latent keeps what predicts the label);
* **cross-modal cyclic translation**: a residual translator ``T_ij`` per ordered pair maps
  the pooled latent of ``i`` to that of ``j``; forward ``T_ij(z_i) ~ z_j`` and reverse
  (cycle) ``T_ji(T_ij(z_i)) ~ z_i`` are trained where both are present (the forward target
  is held fixed, so translation cannot pull the latents together to make itself easy).

At inference -- and in training for samples that lack a modality -- a missing modality's
latent is the mean of its translations from the modalities present, fed to fusion as one
token and marked available, so one model serves complete and incomplete inputs. In
training a present modality is also replaced by its translation with probability
``substitute_prob`` (the fusion learns to read translated latents).

The fusion then reads the latents (the model's ``StudentEncoding`` carries them); the
loss terms come from :func:`cyin_losses`, on what :class:`CyclicLatent` leaves in
``StudentEncoding.extras["cyin"]`` (a :class:`LatentState`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from students.encoders import Encoded, masked_mean
from students.losses import task_loss
from students.methods.base import StudentView
from students.outputs import StudentEncoding, StudentOutput
from workbench.config import CyinConfig


def reparameterise(mu: Tensor, logvar: Tensor, generator: torch.Generator | None = None
                   ) -> Tensor:
    """``mu + eps * exp(logvar / 2)`` with ``eps ~ N(0, I)``."""
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + eps * torch.exp(0.5 * logvar)


def kl_standard_normal(mu: Tensor, logvar: Tensor, mask: Tensor | None = None) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per latent dimension:
    ``-0.5 * mean_d(1 + logvar - mu^2 - exp(logvar))``, averaged over the positions
    (``mask`` (...,) bool: only those; none valid: 0)."""
    per = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).mean(-1)
    if mask is None:
        return per.mean()
    m = mask.to(per.dtype)
    return (per * m).sum() / m.sum().clamp_min(1.0)


def masked_mse(pred: Tensor, target: Tensor, rows: Tensor) -> Tensor:
    """Mean squared error over the last dimension, averaged over ``rows`` (bool, the
    leading dimensions of ``pred``); no row: 0 (still in the graph)."""
    per = (pred - target).pow(2).mean(-1)
    m = rows.to(per.dtype)
    return (per * m).sum() / m.sum().clamp_min(1.0)


@dataclass
class LatentState:
    """What :class:`CyclicLatent` computed in one forward pass, for the losses.

    Per modality: ``mu`` / ``logvar`` (B, T, h) and ``mask`` (B, T) of its tokens, the
    encoder ``inputs`` it read (Encoded, before the bottleneck), the pooled latent ``z``
    (B, h) before any substitution, ``present`` (B,) bool (observed, not translated)."""

    mu: dict[str, Tensor]
    logvar: dict[str, Tensor]
    mask: dict[str, Tensor]
    inputs: dict[str, Encoded]
    z: dict[str, Tensor]
    present: dict[str, Tensor]
    substituted: dict[str, Tensor]


def _mlp(i: int, h: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), nn.GELU(), nn.Linear(h, o))


class CyclicLatent(nn.Module):
    """The variational encoders, decoders, label heads and translators of CyIN."""

    def __init__(self, hidden: int, modalities: list[str], out_dim: int, cfg: CyinConfig
                 ) -> None:
        super().__init__()
        self.modalities = list(modalities)  # text first
        self.cfg = cfg
        inter = cfg.inter or hidden
        self.encoder = nn.ModuleDict({m: _mlp(hidden, inter, 2 * hidden) for m in modalities})
        self.decoder = nn.ModuleDict({m: _mlp(hidden, inter, hidden) for m in modalities})
        self.label_head = nn.ModuleDict({m: nn.Linear(hidden, out_dim) for m in modalities})
        self.translate = nn.ModuleDict({
            f"{i}_to_{j}": _mlp(hidden, inter, hidden)
            for i in modalities for j in modalities if i != j})

    def translator(self, i: str, j: str, z: Tensor) -> Tensor:
        """``T_ij(z) = z + MLP_ij(z)``: the latent of ``j`` from that of ``i``."""
        return z + self.translate[f"{i}_to_{j}"](z)

    def fill(self, z: dict[str, Tensor], present: dict[str, Tensor], target: str
             ) -> tuple[Tensor, Tensor]:
        """Mean over the present modalities ``i != target`` of ``T_i,target(z_i)`` (B, h)
        and which rows have any source (B,) bool."""
        acc = torch.zeros_like(z[target])
        n = torch.zeros(z[target].shape[0], device=acc.device, dtype=acc.dtype)
        for i in self.modalities:
            if i == target:
                continue
            p = present[i].to(acc.dtype)
            acc = acc + self.translator(i, target, z[i]) * p.unsqueeze(1)
            n = n + p
        return acc / n.clamp_min(1.0).unsqueeze(1), n > 0

    def forward(self, enc: StudentEncoding) -> StudentEncoding:
        """A new ``StudentEncoding`` whose modalities are the latents (missing ones
        translated), with ``latent`` set to the :class:`LatentState`."""
        streams = {"text": enc.text, **enc.others}
        avail = enc.available()
        mu, logvar, masks, zs, present, tokens = {}, {}, {}, {}, {}, {}
        for m in self.modalities:
            e = streams[m]
            mu[m], logvar[m] = self.encoder[m](e.tokens).chunk(2, dim=-1)
            logvar[m] = logvar[m].clamp(-10.0, 10.0)
            tok = reparameterise(mu[m], logvar[m]) if self.training else mu[m]
            tokens[m] = tok
            masks[m] = e.mask
            zs[m] = masked_mean(tok, e.mask)
            present[m] = (avail[m] > 0) & e.mask.any(1)
        b = enc.text.pooled.shape[0]
        substituted: dict[str, Tensor] = {}
        new: dict[str, Encoded] = {}
        for m in self.modalities:
            filled, has_source = self.fill(zs, present, m)
            use = ~present[m] & has_source
            if self.training and self.cfg.substitute_prob > 0:
                draw = torch.rand(b, device=filled.device) < self.cfg.substitute_prob
                use = use | (present[m] & has_source & draw)
            substituted[m] = use
            tok, mask = tokens[m], masks[m]
            if use.any():
                u = use.reshape(b, 1, 1)
                tok = torch.where(u, filled.unsqueeze(1).expand_as(tok), tok)
                if m != "text":  # a translated modality is one token
                    one = torch.zeros_like(mask)
                    one[:, 0] = True
                    mask = torch.where(use.reshape(b, 1), one, mask)
            new[m] = Encoded(tokens=tok, mask=mask,
                             pooled=torch.where(use.reshape(b, 1), filled, masked_mean(tok, mask)))
        avail_new = {m: torch.where(substituted[m], torch.ones_like(enc.avail[m]), enc.avail[m])
                     for m in enc.avail}
        state = LatentState(mu=mu, logvar=logvar, mask=masks, inputs=streams, z=zs,
                            present=present, substituted=substituted)
        return replace(enc, text=new["text"], others={m: new[m] for m in enc.others},
                       avail=avail_new, extras={**enc.extras, "cyin": state})


def cyin_losses(model: StudentView, lat: CyclicLatent, out: StudentOutput,
                batch: dict[str, Any], cfg: CyinConfig, *, task_kind: str,
                classification: bool) -> dict[str, Tensor]:
    """CyIN's terms for one step: ``cyin_kl`` (mean over modalities of the token KL),
    ``cyin_recon`` (mean over ordered pairs (i, j), both present, of the MSE of decoder
    ``j`` on the pooled latent of ``i`` against the pooled input of ``j``; ``i == j``
    token by token), ``cyin_label`` (mean over modalities of the task loss of the label
    head on the pooled latent, present rows), ``cyin_translate`` (forward, target fixed)
    and ``cyin_cycle`` (reverse), both on the pooled means and averaged over ordered pairs
    with both present."""
    enc = out.encoding
    if enc is None or "cyin" not in enc.extras:
        raise ValueError("CyIN's losses need forward(..., return_encoding=True) on a student "
                         "built with student.cyin.enabled")
    st: LatentState = enc.extras["cyin"]
    mods = lat.modalities
    target = batch["label_class"] if classification else batch["labels"]
    w, lmask = batch["weights"], batch["label_mask"]
    kl = torch.stack([kl_standard_normal(st.mu[m], st.logvar[m], st.mask[m]) for m in mods]).mean()
    recon, label, fwd, cyc = [], [], [], []
    mean = {m: masked_mean(st.mu[m], st.mask[m]) for m in mods}
    for i in mods:
        zi = mean[i]
        label.append(task_loss(model.shape_output(lat.label_head[i](st.z[i])), target, task_kind, w,
                               lmask * st.present[i].to(lmask.dtype)))
        for j in mods:
            both = st.present[i] & st.present[j]
            if i == j:
                tok_rows = st.mask[i] & st.present[i].unsqueeze(1)
                recon.append(masked_mse(lat.decoder[i](st.mu[i]), st.inputs[i].tokens.detach(),
                                        tok_rows))
                continue
            recon.append(masked_mse(lat.decoder[j](zi), st.inputs[j].pooled.detach(), both))
            ij = lat.translator(i, j, zi)
            fwd.append(masked_mse(ij, mean[j].detach(), both))
            cyc.append(masked_mse(lat.translator(j, i, ij), zi, both))
    zero = kl * 0.0
    return {"cyin_kl": kl, "cyin_recon": torch.stack(recon).mean(),
            "cyin_label": torch.stack(label).mean(),
            "cyin_translate": torch.stack(fwd).mean() if fwd else zero,
            "cyin_cycle": torch.stack(cyc).mean() if cyc else zero}


def cyin_total(parts: dict[str, Tensor], cfg: CyinConfig) -> Tensor:
    """The weighted sum of :func:`cyin_losses`' terms."""
    return (cfg.kl_weight * parts["cyin_kl"] + cfg.recon_weight * parts["cyin_recon"]
            + cfg.label_weight * parts["cyin_label"] + cfg.translate_weight
            * parts["cyin_translate"] + cfg.cycle_weight * parts["cyin_cycle"])
