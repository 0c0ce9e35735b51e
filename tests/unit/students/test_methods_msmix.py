"""MS-Mix (train.msmix): each function against a plain reference, and a training step."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from students.batching import TrainCollator
from students.collate import Collator
from students.encoders import Encoded
from students.methods import MsMix
from students.methods.msmix.mixing import (
    cosine_rows,
    draw_pairs,
    gaussian_bins,
    mean_ratio,
    mix_encoded,
    mix_ratios,
    mixed_labels,
    modality_kl,
    select_pairs,
)
from students.model import build_student
from students.objective import compute_losses, training_losses
from tests.support.reference import rand, ref_cos
from tests.support.students import BINS, plan_for, tiny_info, train_items
from workbench.config import (
    ConfigError,
    DistillConfig,
    LoraConfig,
    MsMixConfig,
    StudentConfig,
    load_config,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------ pure functions


def test_cosine_rows_matches_reference():
    a, b = rand(4, 3, seed=1), rand(4, 3, seed=2)
    b[1] = 0
    ref = [ref_cos(x, y) for x, y in zip(a.tolist(), b.tolist(), strict=True)]
    assert cosine_rows(a, b).tolist() == pytest.approx(ref, abs=1e-6)


def test_draw_pairs_is_seeded_and_beta_distributed():
    p1, l1 = draw_pairs(6, 0.5, np.random.default_rng(3))
    p2, l2 = draw_pairs(6, 0.5, np.random.default_rng(3))
    assert torch.equal(p1, p2) and torch.equal(l1, l2)
    assert sorted(p1.tolist()) == list(range(6)) and ((l1 >= 0) & (l1 <= 1)).all()
    ref = np.random.default_rng(3)
    assert p1.tolist() == ref.permutation(6).tolist()
    assert l1.tolist() == pytest.approx(ref.beta(0.5, 0.5, size=6).tolist(), abs=1e-6)
    _, many = draw_pairs(20000, 2.0, np.random.default_rng(0))
    assert float(many.mean()) == pytest.approx(0.5, abs=0.01)
    assert float(many.var()) == pytest.approx(1 / 20, abs=0.005)  # Beta(2,2): 1/(4*5)
    with pytest.raises(ValueError):
        draw_pairs(3, 0.0, np.random.default_rng(0))


def ref_select(pooled, avail, perm, thr, label_mask):
    out = []
    for i, j in enumerate(perm):
        ok = label_mask[i] > 0 and label_mask[j] > 0 and i != j
        for m in pooled:
            ai, aj = avail[m][i] > 0, avail[m][j] > 0
            if ai != aj:
                ok = False
            elif ai and not ref_cos(pooled[m][i], pooled[m][j]) > thr:
                ok = False
        out.append(ok)
    return out


def test_select_pairs_matches_reference():
    g = torch.Generator().manual_seed(5)
    base = torch.randn(8, 4, generator=g)
    pooled = {"text": base + 0.3 * torch.randn(8, 4, generator=g),
              "audio": base + 0.3 * torch.randn(8, 4, generator=g)}
    avail = {"text": torch.ones(8), "audio": torch.tensor([1, 1, 0, 1, 0, 1, 1, 1.0])}
    label_mask = torch.tensor([1, 1, 1, 1, 1, 0, 1, 1.0])
    for perm in (torch.tensor([1, 0, 4, 2, 2, 7, 6, 5]), torch.arange(8).flip(0)):
        for thr in (-1.0, 0.0, 0.5, 0.99):
            got = select_pairs(pooled, avail, perm, thr, label_mask).tolist()
            ref = ref_select({m: p.tolist() for m, p in pooled.items()},
                             {m: a.tolist() for m, a in avail.items()}, perm.tolist(), thr,
                             label_mask.tolist())
            assert got == ref
    # fixed points never pair with themselves; threshold -1 keeps every matching pair
    ident = select_pairs(pooled, avail, torch.arange(8), -1.0, torch.ones(8))
    assert not ident.any()


def test_mix_ratios_match_reference_and_edges():
    lam0 = torch.tensor([0.2, 0.9, 0.5])
    ii = {"text": torch.tensor([1.0, 0.0, 2.0])}
    ij = {"text": torch.tensor([3.0, 0.0, 2.0])}
    got = mix_ratios(lam0, ii, ij, blend=0.5)["text"].tolist()
    ref = [0.5 * 0.2 + 0.5 * 0.25, 0.5 * 0.9 + 0.5 * 0.5, 0.5 * 0.5 + 0.5 * 0.5]
    assert got == pytest.approx(ref, abs=1e-5)
    assert mix_ratios(lam0, ii, ij, blend=0.0)["text"].tolist() == pytest.approx(lam0.tolist())
    with pytest.raises(ValueError):
        mix_ratios(lam0, ii, ij, blend=1.5)


def test_mix_encoded_matches_reference():
    ta, tb = rand(2, 3, 2, seed=6), rand(2, 3, 2, seed=7)
    ma = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    mb = torch.tensor([[1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    a = Encoded(tokens=ta, mask=ma, pooled=rand(2, 2, seed=8))
    b = Encoded(tokens=tb, mask=mb, pooled=rand(2, 2, seed=9))
    lam = torch.tensor([0.3, 0.8])
    got = mix_encoded(a, b, lam)
    for r in range(2):
        lr = lam[r].item()
        for t in range(3):
            for d in range(2):
                ref = lr * ta[r, t, d].item() * ma[r, t].item() \
                    + (1 - lr) * tb[r, t, d].item() * mb[r, t].item()
                assert got.tokens[r, t, d].item() == pytest.approx(ref, abs=1e-6)
                assert got.mask[r, t].item() == bool(ma[r, t] or mb[r, t])
        ref_p = [lr * x + (1 - lr) * y for x, y in zip(a.pooled[r].tolist(), b.pooled[r].tolist(),
                                                      strict=True)]
        assert got.pooled[r].tolist() == pytest.approx(ref_p, abs=1e-6)


def test_mean_ratio_and_mixed_labels():
    ratios = {"text": torch.tensor([0.2, 0.4, 0.6]), "audio": torch.tensor([0.6, 0.8, 1.0])}
    avail = {"text": torch.tensor([1.0, 1.0, 0.0]), "audio": torch.tensor([1.0, 0.0, 0.0])}
    assert mean_ratio(ratios, avail).tolist() == pytest.approx([0.4, 0.4, 0.5])
    y = mixed_labels(torch.tensor([2.0, -1.0]), torch.tensor([-2.0, 1.0]), torch.tensor([0.75, 0.5]))
    assert y.tolist() == pytest.approx([0.75 * 2 - 0.25 * 2, 0.0])


def test_gaussian_bins_matches_reference():
    score = torch.tensor([0.3, -2.9, 5.0])
    got = gaussian_bins(score, torch.tensor(BINS), sigma=1.0)
    for r, s in enumerate(score.tolist()):
        e = [math.exp(-((b - s) ** 2) / 2) for b in BINS]
        assert got[r].tolist() == pytest.approx([x / sum(e) for x in e], abs=1e-6)
    with pytest.raises(ValueError):
        gaussian_bins(score, torch.tensor(BINS), sigma=0.0)


def test_modality_kl_matches_reference():
    g = torch.Generator().manual_seed(10)
    dists = {m: torch.softmax(torch.randn(3, 4, generator=g), -1) for m in ("text", "audio", "vision")}
    avail = {"text": torch.ones(3), "audio": torch.tensor([1.0, 1.0, 0.0]),
             "vision": torch.tensor([1.0, 0.0, 0.0])}
    got = modality_kl(dists, avail)
    for r in range(3):
        mods = [m for m in dists if avail[m][r] > 0]
        kls = [sum(p * math.log(p / q) for p, q in zip(dists[a][r].tolist(), dists[b][r].tolist(),
                                                      strict=True))
               for a in mods for b in mods if a != b]
        ref = sum(kls) / len(kls) if kls else 0.0
        assert got[r].item() == pytest.approx(ref, abs=1e-6)
    assert got[2].item() == 0.0  # a single modality: nothing to align


# ---------------------------------------------------------------------- training step


@pytest.fixture(scope="module")
def mixer():
    cfg = StudentConfig(hidden=16, heads=2, bottleneck_tokens=2, max_text_len=16, dropout=0.0,
                        text_mode="frozen", lora=LoraConfig(r=2, alpha=4, dropout=0.0))
    torch.manual_seed(0)
    return build_student(cfg, tiny_info(), BINS, methods=[MsMix(MsMixConfig(enabled=True))])


def _batch(model, **kw):
    return TrainCollator(Collator.for_model(model), **kw)(train_items())


def test_msmix_off_is_the_plain_step_and_the_model_without_intensity_heads(mixer):
    plain = build_student(mixer.cfg, tiny_info(), BINS)
    assert "msmix" not in plain.methods and "msmix" in mixer.methods
    assert not [k for k in plain.state_dict() if k.startswith("methods.")]
    assert plain.parameter_counts()["all"] == mixer.parameter_counts()["all"]
    assert mixer.training_only_prefixes() == ("methods.msmix.",)  # never saved
    plan = plan_for(load_config(DistillConfig), soft_labels=True, privileged=False)
    assert plan.methods == () and not plan.needs_encoding
    batch = _batch(mixer)
    mixer.eval()
    with torch.no_grad():
        a = training_losses(mixer, batch, plan, mixer.bins)
        b = compute_losses(mixer(batch), batch, plan, mixer.bins)
    assert set(a) == set(b) == {"task", "soft_kd", "expected", "total"}
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_msmix_step_adds_finite_terms_with_gradients(mixer):
    cfg = load_config(DistillConfig, None, [
        "train.msmix.enabled=true", "train.msmix.threshold=-1", "train.msmix.weight=0.7",
        "train.msmix.kl_weight=0.3", "train.msmix.intensity_weight=0.2"])
    plan = plan_for(cfg, soft_labels=True, privileged=False)
    assert [type(m) for m in plan.methods] == [MsMix]
    assert plan.methods[0].cfg is cfg.train.msmix  # the method holds its config object
    batch = _batch(mixer)
    mixer.train()
    mixer.zero_grad()
    parts = training_losses(mixer, batch, plan, mixer.bins, rng=np.random.default_rng(1))
    assert {"msmix", "msmix_kl", "msmix_intensity", "msmix_frac"} <= set(parts)
    assert all(torch.isfinite(v) for v in parts.values())
    # pairs with the same modalities are mixed (sample 3 lacks vision)
    assert 0 < parts["msmix_frac"].item() < 1
    assert parts["msmix"].item() > 0 and parts["msmix_kl"].item() > 0
    base = sum(w * parts[k].item() for k, w in (("task", 1.0), ("soft_kd", 1.0),
                                                  ("expected", 0.5)))
    extra = 0.7 * parts["msmix"].item() + 0.3 * parts["msmix_kl"].item() \
        + 0.2 * parts["msmix_intensity"].item()
    assert parts["total"].item() == pytest.approx(base + extra, rel=1e-5)
    parts["msmix"].backward(retain_graph=True)
    grads = {n: p.grad for n, p in mixer.named_parameters() if p.grad is not None}
    assert any(n.startswith("encoders.audio") and g.abs().sum() > 0 for n, g in grads.items())
    assert any(n.startswith("fusion.") for n in grads)
    mixer.zero_grad()
    parts["msmix_intensity"].backward(retain_graph=True)
    assert mixer.methods["msmix"]["audio"][0].weight.grad.abs().sum() > 0
    mixer.zero_grad()
    parts["msmix_kl"].backward()
    assert mixer.unimodal_heads["text"][0].weight.grad.abs().sum() > 0
    # the same rng seed gives the same step
    mixer.eval()
    with torch.no_grad():
        a = training_losses(mixer, batch, plan, mixer.bins, rng=np.random.default_rng(4))
        b = training_losses(mixer, batch, plan, mixer.bins, rng=np.random.default_rng(4))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_msmix_mixes_nothing_above_a_strict_threshold(mixer):
    cfg = load_config(DistillConfig, None, ["train.msmix.enabled=true",
                                            "train.msmix.threshold=0.9999"])
    plan = plan_for(cfg, soft_labels=False, privileged=False)
    parts = training_losses(mixer, _batch(mixer), plan, None, rng=np.random.default_rng(1))
    assert parts["msmix_frac"].item() == 0 and parts["msmix"].item() == 0
    parts["total"].backward()  # still one graph
    with pytest.raises(ValueError, match="rng"):
        training_losses(mixer, _batch(mixer), plan, None)


def test_msmix_config_checks():
    with pytest.raises(ConfigError, match="train.msmix.enabled=True is invalid: MS-Mix"):
        load_config(DistillConfig, None, ["train.msmix=true", "data.task=classification",
                                          "data.metric_set=classification",
                                          "data.class_names=[a,b]", "train.task_loss=ce"])
    with pytest.raises(ConfigError, match="train.msmix.alpha"):
        load_config(DistillConfig, None, ["train.msmix.alpha=0"])
    with pytest.raises(ConfigError, match="train.msmix.threshold"):
        load_config(DistillConfig, None, ["train.msmix.threshold=1"])
    with pytest.raises(ConfigError, match="train.msmix.kl_weight"):
        load_config(DistillConfig, None, ["train.msmix.kl_weight=-1"])
