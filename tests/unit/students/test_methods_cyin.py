"""CyIN (student.cyin.enabled): the KL term, reparameterisation and masked errors against plain
references, the translation of missing modalities, and a tiny student that trains with it."""

from __future__ import annotations

import math

import pytest
import torch

from students.batching import TrainCollator
from students.collate import Collator
from students.methods.cyin.latent import (
    CyclicLatent,
    kl_standard_normal,
    masked_mse,
    reparameterise,
)
from students.model import build_student
from students.objective import freeze_unused, training_losses
from students.robustness import drop_modalities
from tests.support.reference import rand
from tests.support.students import BINS, make_info, make_samples, plan_for, student_cfg, train_steps
from workbench.config import ConfigError, CyinConfig, DistillConfig, load_config

pytestmark = pytest.mark.usefixtures("one_thread")


def ref_kl(mu, logvar):
    """KL(N(mu, s^2) || N(0, 1)) per dimension = 0.5 (s^2 + mu^2 - 1 - log s^2), averaged."""
    terms = [0.5 * (math.exp(lv) + m * m - 1 - lv) for m, lv in zip(mu, logvar, strict=True)]
    return sum(terms) / len(terms)


def test_kl_matches_reference_with_and_without_mask():
    mu, lv = rand(3, 4, 5, seed=1), rand(3, 4, 5, seed=2) * 0.5
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    rows = [(b, t) for b in range(3) for t in range(4)]
    ref_all = sum(ref_kl(mu[b, t].tolist(), lv[b, t].tolist()) for b, t in rows) / len(rows)
    assert kl_standard_normal(mu, lv).item() == pytest.approx(ref_all, rel=1e-5)
    kept = [(b, t) for b, t in rows if mask[b, t]]
    ref = sum(ref_kl(mu[b, t].tolist(), lv[b, t].tolist()) for b, t in kept) / len(kept)
    assert kl_standard_normal(mu, lv, mask).item() == pytest.approx(ref, rel=1e-5)
    assert kl_standard_normal(torch.zeros(2, 3), torch.zeros(2, 3)).item() == 0.0
    assert kl_standard_normal(mu, lv, torch.zeros(3, 4, dtype=torch.bool)).item() == 0.0


def test_reparameterise_has_the_given_mean_and_variance():
    mu = torch.full((20000, 2), 1.5)
    logvar = torch.log(torch.tensor([[0.25, 4.0]])).expand(20000, 2)
    z = reparameterise(mu, logvar, generator=torch.Generator().manual_seed(0))
    assert z.mean(0).tolist() == pytest.approx([1.5, 1.5], abs=0.05)
    assert z.var(0).tolist() == pytest.approx([0.25, 4.0], rel=0.05)


def test_masked_mse_matches_reference():
    a, b = rand(4, 3, seed=3), rand(4, 3, seed=4)
    rows = torch.tensor([True, False, True, False])
    ref = sum(sum((a[i, d] - b[i, d]).item() ** 2 for d in range(3)) / 3 for i in (0, 2)) / 2
    assert masked_mse(a, b, rows).item() == pytest.approx(ref, rel=1e-5)
    assert masked_mse(a, b, torch.zeros(4, dtype=torch.bool)).item() == 0.0


def test_fill_is_the_mean_translation_from_the_present_modalities():
    torch.manual_seed(0)
    lat = CyclicLatent(4, ["text", "audio", "vision"], 1, CyinConfig())
    z = {m: rand(3, 4, seed=i) for i, m in enumerate(lat.modalities)}
    present = {"text": torch.tensor([True, True, False]), "audio": torch.tensor([True, False, False]),
               "vision": torch.tensor([False, False, False])}
    filled, has = lat.fill(z, present, "vision")
    assert has.tolist() == [True, True, False]
    ref0 = (lat.translator("text", "vision", z["text"][:1])
            + lat.translator("audio", "vision", z["audio"][:1])) / 2
    torch.testing.assert_close(filled[:1], ref0)
    torch.testing.assert_close(filled[1:2], lat.translator("text", "vision", z["text"][1:2]))
    assert (filled[2] == 0).all()


@pytest.fixture(scope="module")
def cyin_model():
    torch.manual_seed(0)
    cfg = student_cfg(text_mode="frozen", cyin=CyinConfig(enabled=True))
    return build_student(cfg, make_info(audio="sequence", vision="vector"), BINS)


def test_missing_modalities_are_translated_and_marked_available(cyin_model):
    cyin_model.eval()
    samples = make_samples(6)  # sample 1 has no audio, sample 2 no vision
    batch = Collator.for_model(cyin_model)(samples)
    with torch.no_grad():
        enc = cyin_model.encode(batch)
    st = enc.extras["cyin"]
    assert st.present["audio"].tolist() == [i != 1 for i in range(6)]
    assert enc.extras["cyin"].substituted["audio"].tolist() == [i == 1 for i in range(6)]
    assert (enc.avail["audio"] == 1).all() and (enc.avail["vision"] == 1).all()
    filled, _ = cyin_model.methods["cyin"].fill(st.z, st.present, "audio")
    torch.testing.assert_close(enc.others["audio"].pooled[1], filled[1])
    assert enc.others["audio"].mask[1].tolist() == [True] + [False] * 6
    # evaluation uses the mean: deterministic
    with torch.no_grad():
        again = cyin_model.encode(batch)
    torch.testing.assert_close(again.others["vision"].pooled, enc.others["vision"].pooled)
    # without audio for everyone the prediction still comes (from the translated latent)
    dropped = Collator.for_model(cyin_model, masking=drop_modalities(("audio",)))(samples)
    with torch.no_grad():
        out = cyin_model(dropped, return_encoding=True)
    assert out.encoding.extras["cyin"].substituted["audio"].all() and torch.isfinite(out.pred).all()


def test_cyin_step_has_every_term_and_weights_them(cyin_model):
    cfg = load_config(DistillConfig, None, ["student.cyin.enabled=true", "student.cyin.kl_weight=0.5",
                                            "student.cyin.cycle_weight=0.3"])
    plan = plan_for(cfg, soft_labels=False, privileged=False)
    assert [m.name for m in plan.methods] == ["cyin"] and plan.needs_encoding
    assert plan.methods[0].cfg is cfg.student.cyin
    batch = TrainCollator(Collator.for_model(cyin_model))(make_samples(8))
    cyin_model.eval()
    with torch.no_grad():
        parts = training_losses(cyin_model, batch, plan, None)
    names = ["cyin_kl", "cyin_recon", "cyin_label", "cyin_translate", "cyin_cycle"]
    assert all(parts[n].item() > 0 for n in names)
    c = cfg.student.cyin
    ref = parts["task"] + 0.5 * parts["cyin_kl"] + c.recon_weight * parts["cyin_recon"] \
        + c.label_weight * parts["cyin_label"] + c.translate_weight * parts["cyin_translate"] \
        + 0.3 * parts["cyin_cycle"]
    assert parts["total"].item() == pytest.approx(ref.item(), rel=1e-5)


def test_a_tiny_cyin_student_trains_and_its_loss_falls(cyin_model):
    batch = TrainCollator(Collator.for_model(cyin_model))(make_samples(8))
    plan = plan_for(load_config(DistillConfig, None, ["student.cyin.enabled=true"]),
                       soft_labels=False, privileged=False)
    torch.manual_seed(1)
    hist = train_steps(cyin_model, batch, plan, steps=15)
    assert hist[-1]["total"] < 0.6 * hist[0]["total"]
    # with the translation terms weighted up, the translators learn the latents' map
    plan = plan_for(load_config(DistillConfig, None, [
        "student.cyin.enabled=true", "student.cyin.translate_weight=2", "student.cyin.cycle_weight=2"]),
        soft_labels=False, privileged=False)
    hist = train_steps(cyin_model, batch, plan, steps=15, lr=3e-3)
    assert hist[-1]["cyin_translate"] < hist[0]["cyin_translate"]
    assert hist[-1]["cyin_cycle"] < hist[0]["cyin_cycle"]


def test_cyin_config_checks():
    with pytest.raises(ConfigError, match="student.cyin.substitute_prob"):
        CyinConfig(substitute_prob=1.0)
    with pytest.raises(ConfigError, match="student.latent='vae' is not allowed"):
        load_config(DistillConfig, None, ["student.latent=vae"])  # the old switch
    assert load_config(DistillConfig, None, ["student.latent=cyin"]).student.cyin.enabled


def test_cyin_heads_no_term_trains_are_frozen():
    """label_weight=0 / recon_weight=0: the label heads / decoders get no gradient, so they
    are frozen (no trainable weight without a gradient; DDP rejects those)."""
    torch.manual_seed(0)
    model = build_student(student_cfg(text_mode="frozen", cyin=CyinConfig(enabled=True)), make_info(), BINS)
    plan = plan_for(load_config(DistillConfig, None, [
        "student.cyin.enabled=true", "student.cyin.label_weight=0", "student.cyin.recon_weight=0"]),
        soft_labels=False, privileged=False)
    frozen = freeze_unused(model, plan)
    assert {"cyin_label_heads", "cyin_decoders"} <= set(frozen)
    batch = TrainCollator(Collator.for_model(model))(make_samples(8))
    model.train()
    training_losses(model, batch, plan, None)["total"].backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert not any(n.startswith(("methods.cyin.label_head", "methods.cyin.decoder")) for n, _ in trainable)
    assert all(p.grad is not None for n, p in trainable if n.startswith("methods.cyin.")), \
        [n for n, p in trainable if n.startswith("methods.cyin.") and p.grad is None]
    # weighted, they train
    plan = plan_for(load_config(DistillConfig, None, ["student.cyin.enabled=true"]),
                       soft_labels=False, privileged=False)
    fresh = build_student(student_cfg(text_mode="frozen", cyin=CyinConfig(enabled=True)), make_info(), BINS)
    assert not {"cyin_label_heads", "cyin_decoders"} & set(freeze_unused(fresh, plan))
