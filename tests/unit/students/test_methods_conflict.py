"""Conflict-aware gradient penalty and statistical loss (train.conflict): each
function against a plain reference, and a training step checked against gradients
computed one modality at a time."""

from __future__ import annotations

import math

import pytest
import torch

from students.batching import TrainCollator
from students.collate import Collator
from students.losses import task_loss
from students.methods import Conflict
from students.methods.conflict.penalty import (
    conflict_penalty,
    dominance,
    flatten_grads,
    label_statistics,
    opposition,
    statistical_loss,
)
from students.objective import compute_losses, training_losses
from tests.support.reference import rand, ref_cos, ref_norm
from tests.support.students import plan_for, tiny_student, train_items
from workbench.config import ConfigError, DistillConfig, MidgConfig, load_config

pytestmark = pytest.mark.usefixtures("one_thread")


def ref_penalty(vectors, tau):
    norms = [ref_norm(v) for v in vectors]
    mean = sum(norms) / len(norms)
    dom = max(0.0, max(norms) / mean - tau) if mean > 0 else 0.0
    pairs = [(a, b) for a in range(len(vectors)) for b in range(a + 1, len(vectors))]
    opp = sum(max(0.0, -ref_cos(vectors[a], vectors[b])) for a, b in pairs) / len(pairs)
    return dom, opp


# ------------------------------------------------------------------------ pure functions


def test_flatten_grads_fills_unused_parameters_with_zeros():
    p1, p2 = torch.zeros(2, 3), torch.zeros(4)
    v = flatten_grads([torch.ones(2, 3), None], [p1, p2])
    assert v.tolist() == [1.0] * 6 + [0.0] * 4


@pytest.mark.parametrize("tau", [1.0, 1.5, 3.0])
def test_penalty_matches_reference(tau):
    vectors = rand(3, 5, seed=1)
    vectors[2] = -3 * vectors[0] + 0.1 * vectors[1]  # a large, opposing gradient
    got = conflict_penalty(vectors, tau)
    dom, opp = ref_penalty(vectors.tolist(), tau)
    assert got["dominance"].item() == pytest.approx(dom, abs=1e-5)
    assert got["opposition"].item() == pytest.approx(opp, abs=1e-5)
    assert got["penalty"].item() == pytest.approx(dom + opp, abs=1e-5)
    assert got["norms"].tolist() == pytest.approx([ref_norm(v) for v in vectors.tolist()], abs=1e-5)
    assert opp > 0


def test_penalty_edges():
    # aligned, equal gradients: nothing to penalise
    v = torch.tensor([[1.0, 2.0], [2.0, 4.0]])
    assert conflict_penalty(v, 1.5)["penalty"].item() == 0.0
    assert dominance(torch.tensor([1.0, 1.0]), 1.0).item() == 0.0
    # all-zero gradients: no NaN
    z = conflict_penalty(torch.zeros(3, 4), 1.0)
    assert z["penalty"].item() == 0.0 and torch.isfinite(z["penalty"])
    # a single modality: no conflict possible
    assert conflict_penalty(rand(1, 4), 1.0)["penalty"].item() == 0.0
    assert opposition(rand(1, 4)).item() == 0.0
    # orthogonal gradients do not oppose
    assert opposition(torch.tensor([[1.0, 0.0], [0.0, 1.0]])).item() == 0.0


def test_penalty_is_differentiable():
    v = rand(3, 4, seed=2).double().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: conflict_penalty(x, 1.0)["penalty"], (v,))


def test_label_statistics_match_reference():
    ys = [1.0, -2.0, 0.5, float("nan"), 3.0]
    mean, std = label_statistics(ys)
    fin = [y for y in ys if not math.isnan(y)]
    ref_m = sum(fin) / len(fin)
    assert mean == pytest.approx(ref_m)
    assert std == pytest.approx(math.sqrt(sum((y - ref_m) ** 2 for y in fin) / len(fin)))
    assert label_statistics([0, 2, 2, 1], classification=True, n_classes=4) == pytest.approx(
        (0.25, 0.25, 0.5, 0.0))
    with pytest.raises(ValueError):
        label_statistics([float("nan")])


def test_statistical_loss_matches_reference():
    pred = rand(6, seed=3)
    mask = torch.tensor([1, 1, 0, 1, 1, 1.0])
    p = [x for x, m in zip(pred.tolist(), mask.tolist(), strict=True) if m]
    mu = sum(p) / len(p)
    sd = math.sqrt(sum((x - mu) ** 2 for x in p) / len(p))
    ref = (mu - 0.3) ** 2 + (sd - 1.2) ** 2
    assert statistical_loss(pred, (0.3, 1.2), mask).item() == pytest.approx(ref, abs=1e-5)
    # one labelled row: only the mean term; none: 0 in the graph
    one = torch.tensor([1.0, 0, 0, 0, 0, 0])
    assert statistical_loss(pred, (0.3, 1.2), one).item() == pytest.approx(
        (pred[0].item() - 0.3) ** 2, abs=1e-6)
    x = pred.clone().requires_grad_()
    zero = statistical_loss(x, (0.3, 1.2), torch.zeros(6))
    zero.backward()
    assert zero.item() == 0.0 and torch.equal(x.grad, torch.zeros(6))
    # classification: batch-mean probabilities vs the class prior
    logits = rand(4, 3, seed=4)
    probs = torch.softmax(logits, -1).tolist()
    prior = (0.2, 0.5, 0.3)
    ref_c = sum((sum(r[c] for r in probs) / 4 - prior[c]) ** 2 for c in range(3))
    assert statistical_loss(logits, prior, classification=True).item() == pytest.approx(ref_c,
                                                                                       abs=1e-6)


# ---------------------------------------------------------------------- training step


@pytest.fixture(scope="module")
def model():
    return tiny_student(text_mode="frozen")


def _plan(*overrides, label_stats=(0.1, 1.5)):
    cfg = load_config(DistillConfig, None, ["train.conflict.enabled=true", *overrides])
    plan = plan_for(cfg, soft_labels=False, privileged=False)
    plan.methods[0].label_stats = label_stats  # what prepare() reads from the train split
    return plan


def test_conflict_off_is_the_plain_step(model):
    plan = plan_for(load_config(DistillConfig, None, ["loss.unimodal_aux=0.2"]),
                       soft_labels=True, privileged=False)
    assert plan.methods == () and not plan.needs_encoding
    batch = TrainCollator(Collator.for_model(model))(train_items())
    with torch.no_grad():
        a = training_losses(model, batch, plan, model.bins)
        b = compute_losses(model(batch), batch, plan, model.bins)
    assert set(a) == {"task", "unimodal", "soft_kd", "expected", "total"} == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_conflict_step_matches_per_modality_gradients_and_trains_the_encoders(model):
    plan = _plan("train.conflict.weight=0.4", "train.conflict.statistical_weight=0.3",
                 "train.conflict.tau=1.0")
    batch = TrainCollator(Collator.for_model(model))(train_items())
    model.train()
    parts = training_losses(model, batch, plan, None)
    assert {"conflict", "statistical", "conflict_dominance", "conflict_opposition"} <= set(parts)
    assert all(torch.isfinite(v) for v in parts.values())
    assert parts["total"].item() == pytest.approx(
        parts["task"].item() + 0.4 * parts["conflict"].item() + 0.3 * parts["statistical"].item(),
        rel=1e-5)
    # reference: each modality's gradient on the shared weights by its own backward pass
    params = model.shared_parameters()
    out = model(batch)
    vectors = []
    for m, c in out.contributions.items():
        avail = batch["text_avail"] if m == "text" else batch[f"{m}_avail"]
        model.zero_grad()
        task_loss(model.shared_tail(c), batch["labels"], "l1", batch["weights"],
                  batch["label_mask"] * avail).backward(retain_graph=True)
        vectors.append(torch.cat([p.grad.reshape(-1) for p in params]).tolist())
    dom, opp = ref_penalty(vectors, 1.0)
    assert parts["conflict_dominance"].item() == pytest.approx(dom, rel=1e-4, abs=1e-6)
    assert parts["conflict_opposition"].item() == pytest.approx(opp, rel=1e-4, abs=1e-6)
    assert parts["conflict"].item() > 0
    stat_ref = statistical_loss(out.pred.detach(), (0.1, 1.5), batch["label_mask"])
    assert parts["statistical"].item() == pytest.approx(stat_ref.item(), rel=1e-5)
    # the penalty is differentiable: its own gradient reaches the encoders and gates
    model.zero_grad()
    parts["conflict"].backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert any(n.startswith("encoders.audio") and g.abs().sum() > 0 for n, g in grads.items())
    assert any(n.startswith("fusion.gate") and g.abs().sum() > 0 for n, g in grads.items())
    assert any(n.startswith("fusion.ffn") and g.abs().sum() > 0 for n, g in grads.items())


def test_conflict_needs_label_statistics_and_checks_its_fields(model):
    cfg = load_config(DistillConfig, None, ["train.conflict=true"])
    plan = plan_for(cfg, soft_labels=False, privileged=False)
    (method,) = plan.methods
    assert isinstance(method, Conflict) and method.cfg is cfg.train.conflict
    batch = TrainCollator(Collator.for_model(model))(train_items())
    with pytest.raises(ValueError, match="label_stats"):
        training_losses(model, batch, plan, None)
    with pytest.raises(ConfigError, match="train.conflict.tau=0.5 is invalid"):
        load_config(DistillConfig, None, ["train.conflict.tau=0.5"])
    with pytest.raises(ConfigError, match="train.conflict.enabled=True is invalid"):
        load_config(DistillConfig, None, ["train.conflict=true", "student.prompted=true"])


def test_conflict_step_on_a_classification_student():
    from students.model import build_student
    from tests.support.students import make_info, make_samples, student_cfg

    torch.manual_seed(0)
    model = build_student(student_cfg(text_mode="frozen"), make_info(task="classification"))
    dcfg = load_config(DistillConfig, None, [
        "train.conflict.enabled=true", "train.conflict.tau=1.0", "data.task=classification",
        "data.metric_set=classification", "data.class_names=[neg,neu,pos]", "train.task_loss=ce"])
    samples = make_samples(8)
    prior = label_statistics([s.label_class for s in samples], classification=True, n_classes=3)
    plan = plan_for(dcfg, soft_labels=False, privileged=False)
    plan.methods[0].prepare(samples, make_info(task="classification"))
    assert plan.methods[0].label_stats == pytest.approx(prior)
    batch = TrainCollator(Collator.for_model(model))(samples)
    model.train()
    parts = training_losses(model, batch, plan, None)
    assert all(torch.isfinite(v) for v in parts.values())
    assert parts["conflict"].item() > 0
    ref = statistical_loss(model(batch).pred.detach(), prior, batch["label_mask"],
                           classification=True)
    assert parts["statistical"].item() == pytest.approx(ref.item(), rel=1e-5)
    model.zero_grad()
    parts["conflict"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in model.encoders["audio"].parameters())


def test_midg_experts_are_among_the_shared_layers_the_penalty_reads():
    """With student.midg.enabled the experts sit between the fusion and the head for every
    modality: the per-modality path goes through them, and the penalty trains them."""
    from students.model import build_student
    from tests.support.students import HID, make_info, make_samples, student_cfg

    torch.manual_seed(0)
    model = build_student(student_cfg(text_mode="frozen", midg=MidgConfig(enabled=True)),
                          make_info())
    experts = model.methods["midg"].experts
    shared = {id(p) for p in model.shared_parameters()}
    assert {id(p) for p in experts.parameters()} <= shared
    x = torch.randn(4, HID)
    mixed, _ = experts(model.fusion.tail(x))
    assert torch.allclose(model.shared_tail(x), model.shape_output(model.head(mixed)))
    plan = _plan("train.conflict.tau=1.0")
    batch = TrainCollator(Collator.for_model(model))(make_samples(8))
    model.train()
    parts = training_losses(model, batch, plan, None)
    model.zero_grad()
    parts["conflict"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in experts.parameters())
