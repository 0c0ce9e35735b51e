"""MIDG (student.midg.enabled): the router's load balance and the invariance penalties against
plain references, the experts and the cross-modal adapter, and a tiny student that trains."""

from __future__ import annotations

import pytest
import torch

from students.batching import TrainCollator
from students.collate import Collator, StudentItem
from students.methods.midg.experts import (
    MixtureOfExperts,
    domain_risks,
    irm_penalty,
    load_balance,
    vrex_penalty,
)
from students.model import build_student
from students.objective import training_losses
from tests.support.reference import rand
from tests.support.students import BINS, make_info, make_samples, plan_for, student_cfg, train_steps
from workbench.config import ConfigError, DistillConfig, MidgConfig, load_config

pytestmark = pytest.mark.usefixtures("one_thread")


def ref_load_balance(probs):
    b, e = len(probs), len(probs[0])
    top = [max(range(e), key=lambda k: row[k]) for row in probs]
    frac = [top.count(k) / b for k in range(e)]
    mean = [sum(row[k] for row in probs) / b for k in range(e)]
    return e * sum(f * p for f, p in zip(frac, mean, strict=True))


def test_load_balance_matches_reference_and_its_bounds():
    probs = torch.softmax(rand(7, 3, seed=1) * 2, dim=1)
    assert load_balance(probs).item() == pytest.approx(ref_load_balance(probs.tolist()), rel=1e-6)
    uniform_top = torch.tensor([[0.4, 0.3, 0.3], [0.3, 0.4, 0.3], [0.3, 0.3, 0.4]])
    assert load_balance(uniform_top).item() == pytest.approx(1.0)
    collapsed = torch.tensor([[1.0, 0.0, 0.0]] * 4)
    assert load_balance(collapsed).item() == pytest.approx(3.0)


def test_domain_risks_and_vrex_match_reference():
    pred = torch.tensor([0.0, 1.0, 2.0, 3.0, 1.0, -1.0])
    y = torch.tensor([0.5, 1.0, 0.0, 3.0, 2.0, 0.0])
    dom = torch.tensor([0, 0, 1, 1, 2, -1])
    w, m = torch.ones(6), torch.tensor([1.0, 1, 1, 1, 0, 1])  # domain 2's only row unlabelled
    risks = domain_risks(pred, y, "l1", w, m, dom)
    ref = [(0.5 + 0.0) / 2, (2.0 + 0.0) / 2]
    assert [r.item() for r in risks] == pytest.approx(ref)
    mean = sum(ref) / 2
    assert vrex_penalty(risks).item() == pytest.approx(sum((r - mean) ** 2 for r in ref) / 2)
    assert vrex_penalty(risks[:1]).item() == 0.0


def test_irm_penalty_matches_its_closed_form_for_mse():
    # R_d(w) = mean_d (w p - y)^2  =>  dR/dw at 1 = mean_d 2 (p - y) p
    pred = rand(8, seed=2).requires_grad_(True)
    y = rand(8, seed=3)
    dom = torch.tensor([0, 0, 0, 1, 1, 1, 1, -1])
    w, m = torch.ones(8), torch.ones(8)
    ref = 0.0
    for d in (0, 1):
        idx = [i for i in range(8) if dom[i] == d]
        g = sum(2 * (pred[i].item() - y[i].item()) * pred[i].item() for i in idx) / len(idx)
        ref += g * g
    pen = irm_penalty(pred, y, "mse", w, m, dom)
    assert pen.item() == pytest.approx(ref, rel=1e-5)
    pen.backward()  # differentiable
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert irm_penalty(pred, y, "mse", w, m, torch.zeros(8, dtype=torch.long)).item() == 0.0


def test_mixture_of_experts_is_the_router_weighted_sum():
    torch.manual_seed(0)
    moe = MixtureOfExperts(6, 3, dropout=0.0).eval()
    h = rand(4, 6, seed=4)
    out, p = moe(h)
    assert p.shape == (4, 3) and torch.allclose(p.sum(1), torch.ones(4))
    ref = moe.norm(h + sum(p[:, e:e + 1] * moe.experts[e](h) for e in range(3)))
    torch.testing.assert_close(out, ref)


def _items(samples, n_domains=2):
    return [StudentItem(s, domain=i % n_domains) for i, s in enumerate(samples)]


@pytest.fixture(scope="module")
def midg_model():
    torch.manual_seed(0)
    cfg = student_cfg(text_mode="lora",
                      midg=MidgConfig(enabled=True, n_experts=3, adapter=True, adapter_layers=2,
                                      adapter_rank=8))
    return build_student(cfg, make_info(audio="sequence", vision="vector"), BINS)


def test_adapter_starts_as_identity_and_reads_the_other_modalities(midg_model):
    batch = Collator.for_model(midg_model)(make_samples(4))
    midg_model.eval()
    with torch.no_grad():
        base = midg_model.encode(batch).text.tokens
        blocks = list(midg_model.methods["midg"].adapter.blocks.values())
        assert len(blocks) == 2 * 2  # 2 layers x (audio, vision)
        for blk in blocks:  # a trained adapter: non-zero up-projection
            torch.nn.init.normal_(blk.up.weight, std=0.5)
        moved = midg_model.encode(batch).text.tokens
        assert not torch.allclose(base, moved)
        # the adapter reads audio: another audio input changes the text states
        other = dict(batch, audio=batch["audio"] * 3 + 1)
        assert not torch.allclose(midg_model.encode(other).text.tokens, moved)
        for blk in blocks:
            torch.nn.init.zeros_(blk.up.weight)
        torch.testing.assert_close(midg_model.encode(batch).text.tokens, base)
    assert any(n.startswith("methods.midg.adapter.") for n, p in midg_model.named_parameters()
               if p.requires_grad)


def test_midg_step_has_its_terms_and_the_loss_falls(midg_model):
    cfg = load_config(DistillConfig, None, ["student.midg.enabled=true",
                                            "student.midg.invariance_weight=0.5",
                                            "student.midg.balance_weight=0.2"])
    plan = plan_for(cfg, soft_labels=False, privileged=False)
    assert [m.name for m in plan.methods] == ["midg"] and plan.needs_encoding
    assert plan.methods[0].cfg is cfg.student.midg
    batch = TrainCollator(Collator.for_model(midg_model))(_items(make_samples(8)))
    assert batch["domain"].tolist() == [0, 1] * 4
    midg_model.eval()
    with torch.no_grad():
        parts = training_losses(midg_model, batch, plan, None)
    ref = parts["task"] + 0.2 * parts["midg_balance"] + 0.5 * parts["midg_invariance"]
    assert parts["total"].item() == pytest.approx(ref.item(), rel=1e-5)
    assert parts["midg_balance"].item() >= 1.0 - 1e-6 and parts["midg_invariance"].item() > 0
    hist = train_steps(midg_model, batch, plan, steps=15, lr=5e-3)
    assert hist[-1]["total"] < 0.6 * hist[0]["total"]
    # IRM works in the same step
    plan = plan_for(load_config(DistillConfig, None, ["student.midg.enabled=true",
                                                         "student.midg.invariance=irm"]),
                       soft_labels=False, privileged=False)
    parts = training_losses(midg_model, batch, plan, None)
    parts["total"].backward()
    assert torch.isfinite(parts["midg_invariance"])


def test_midg_config_checks():
    with pytest.raises(ConfigError, match="student.midg.n_experts"):
        MidgConfig(n_experts=1)
    with pytest.raises(ConfigError, match="data.domain"):
        load_config(DistillConfig, None, ["data.domain=columns"])
    with pytest.raises(ConfigError, match="student.midg.invariance"):
        load_config(DistillConfig, None, ["student.midg.invariance=dro"])
    assert load_config(DistillConfig, None, ["student.experts=midg"]).student.midg.enabled
