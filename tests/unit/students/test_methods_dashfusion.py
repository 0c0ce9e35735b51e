"""DashFusion (student.dashfusion.enabled): the contrastive losses against plain references,
the bottleneck schedule and shapes, and a tiny student that trains with it."""

from __future__ import annotations

import math

import pytest
import torch

from students.batching import TrainCollator
from students.collate import Collator
from students.encoders import Encoded
from students.methods.dashfusion.fusion import DashFusion, bottleneck_schedule
from students.methods.dashfusion.losses import info_nce, polarity, supervised_contrastive
from students.model import build_student
from students.objective import training_losses
from tests.support.reference import rand, ref_cos
from tests.support.students import BINS, make_info, make_samples, plan_for, student_cfg, train_steps
from workbench.config import ConfigError, DashFusionConfig, DistillConfig, load_config

pytestmark = pytest.mark.usefixtures("one_thread")


def ref_info_nce_one_way(a, b, t):
    n = len(a)
    total = 0.0
    for i in range(n):
        s = [ref_cos(a[i], b[j]) / t for j in range(n)]
        mx = max(s)
        total += -(s[i] - mx - math.log(sum(math.exp(x - mx) for x in s)))
    return total / n


def test_info_nce_matches_reference_both_ways_and_masks_rows():
    a, b = rand(5, 4, seed=1), rand(5, 4, seed=2)
    al, bl = a.tolist(), b.tolist()
    ref = 0.5 * (ref_info_nce_one_way(al, bl, 0.2) + ref_info_nce_one_way(bl, al, 0.2))
    assert info_nce(a, b, 0.2).item() == pytest.approx(ref, rel=1e-5)
    valid = torch.tensor([True, False, True, True, False])
    keep = [i for i in range(5) if valid[i]]
    ref = 0.5 * (ref_info_nce_one_way([al[i] for i in keep], [bl[i] for i in keep], 0.2)
                 + ref_info_nce_one_way([bl[i] for i in keep], [al[i] for i in keep], 0.2))
    assert info_nce(a, b, 0.2, valid).item() == pytest.approx(ref, rel=1e-5)
    # aligned pairs score lower than shuffled ones; one row: 0 (still in the graph)
    assert info_nce(a, a, 0.1).item() < info_nce(a, b, 0.1).item()
    one = info_nce(a, b, 0.1, torch.tensor([True, False, False, False, False]))
    assert one.item() == 0.0


def ref_supcon(z, labels, t):
    n = len(z)
    losses = []
    for i in range(n):
        pos = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not pos:
            continue
        s = {a: ref_cos(z[i], z[a]) / t for a in range(n) if a != i}
        mx = max(s.values())
        lse = mx + math.log(sum(math.exp(v - mx) for v in s.values()))
        losses.append(-sum(s[p] - lse for p in pos) / len(pos))
    return sum(losses) / len(losses) if losses else 0.0


def test_supervised_contrastive_matches_reference_and_edges():
    z = rand(6, 3, seed=3)
    labels = torch.tensor([0, 1, 0, 2, 1, 0])  # class 2 has no positive: not an anchor
    ref = ref_supcon(z.tolist(), labels.tolist(), 0.5)
    assert supervised_contrastive(z, labels, 0.5).item() == pytest.approx(ref, rel=1e-5)
    valid = torch.tensor([True, True, True, False, True, False])
    keep = [i for i in range(6) if valid[i]]
    ref = ref_supcon([z.tolist()[i] for i in keep], [labels.tolist()[i] for i in keep], 0.5)
    assert supervised_contrastive(z, labels, 0.5, valid).item() == pytest.approx(ref, rel=1e-5)
    assert supervised_contrastive(z, torch.arange(6), 0.5).item() == 0.0  # no positives
    # same-label rows pulled together give a lower loss
    tight = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.01, 1.0]])
    loose = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.01], [0.01, 1.0]])
    lab = torch.tensor([0, 0, 1, 1])
    assert supervised_contrastive(tight, lab, 0.1) < supervised_contrastive(loose, lab, 0.1)


def test_polarity():
    assert polarity(torch.tensor([-1.5, 0.0, 0.2, 3.0])).tolist() == [-1, 0, 1, 1]


def test_bottleneck_schedule_shrinks_and_checks():
    assert bottleneck_schedule(8, 3) == [8, 4, 2]
    assert bottleneck_schedule(3, 4) == [3, 1, 1, 1]
    assert bottleneck_schedule(1, 1) == [1]
    with pytest.raises(ValueError):
        bottleneck_schedule(0, 2)


def _enc(b, t, h, seed, valid_len=None):
    x = rand(b, t, h, seed=seed)
    mask = torch.ones(b, t, dtype=torch.bool)
    if valid_len is not None:
        for i, k in enumerate(valid_len):
            mask[i, k:] = False
    return Encoded(tokens=x, mask=mask, pooled=(x * mask.unsqueeze(-1)).sum(1)
                   / mask.sum(1, keepdim=True).clamp_min(1))


def test_fusion_shapes_per_layer_and_missing_modality_contributes_nothing():
    torch.manual_seed(0)
    h = 8
    fusion = DashFusion(h, ["audio", "vision"], heads=2, dropout=0.0,
                        cfg=DashFusionConfig(bottleneck=4, depth=3)).eval()
    text = _enc(3, 5, h, 1, [5, 3, 2])
    others = {"audio": _enc(3, 7, h, 2, [7, 1, 4]), "vision": _enc(3, 1, h, 3)}
    avail = {"audio": torch.tensor([1.0, 0.0, 1.0]), "vision": torch.ones(3)}
    out = fusion(text, others, avail, return_attention=True)
    assert out.fused.shape == (3, h)
    att = out.attention
    assert att["text_to_audio"].shape == (3, 2, 5, 7)
    for i, keep in enumerate([4, 2, 1]):  # the bottleneck shrinks layer by layer
        assert att[f"bottleneck{i}_text"].shape == (3, 2, keep, 5)
        assert att[f"bottleneck{i}_audio"].shape == (3, 2, keep, 7)
    assert (out.contributions["audio"][1] == 0).all()
    torch.testing.assert_close(fusion.tail(sum(out.contributions.values())), out.fused)
    # a missing modality's content changes nothing for that sample
    noisy = dict(others, audio=Encoded(tokens=others["audio"].tokens * 5 + 1,
                                       mask=others["audio"].mask, pooled=others["audio"].pooled))
    with torch.no_grad():
        again = fusion(text, noisy, avail)
    torch.testing.assert_close(again.fused[1], out.fused[1])
    assert not torch.allclose(again.fused[0], out.fused[0])


@pytest.fixture(scope="module")
def dash_model():
    torch.manual_seed(0)
    cfg = student_cfg(text_mode="frozen",
                      dashfusion=DashFusionConfig(enabled=True, bottleneck=4, depth=2))
    return build_student(cfg, make_info(audio="sequence", vision="sequence"), BINS)


def _cfg(*extra):
    return load_config(DistillConfig, None, ["student.dashfusion.enabled=true", *extra])


def test_switch_builds_dashfusion_and_plans_its_terms(dash_model):
    assert isinstance(dash_model.fusion, DashFusion)
    cfg = _cfg("student.dashfusion.align_weight=0.3", "student.dashfusion.supcon_weight=0.2")
    plan = plan_for(cfg, soft_labels=False, privileged=False)
    assert [m.name for m in plan.methods] == ["dashfusion"] and plan.needs_encoding
    assert plan.methods[0].cfg is cfg.student.dashfusion
    assert plan_for(load_config(DistillConfig), soft_labels=False,
                       privileged=False).methods == ()
    batch = TrainCollator(Collator.for_model(dash_model))(make_samples(8, vision="sequence"))
    parts = training_losses(dash_model, batch, plan, None)
    assert {"dash_align", "dash_supcon"} <= set(parts)
    ref = parts["task"] + 0.3 * parts["dash_align"] + 0.2 * parts["dash_supcon"]
    assert parts["total"].item() == pytest.approx(ref.item(), rel=1e-5)
    assert parts["dash_align"].item() > 0 and parts["dash_supcon"].item() > 0


def test_a_tiny_dashfusion_student_trains_and_its_loss_falls(dash_model):
    plan = plan_for(_cfg(), soft_labels=False, privileged=False)
    batch = TrainCollator(Collator.for_model(dash_model))(make_samples(8, vision="sequence"))
    hist = train_steps(dash_model, batch, plan, steps=15)
    assert hist[-1]["total"] < 0.6 * hist[0]["total"]
    assert hist[-1]["dash_supcon"] < hist[0]["dash_supcon"]


def test_checkpoint_round_trip(tmp_path, dash_model):
    from students.checkpoint import load_checkpoint, save_checkpoint

    cfg = load_config(DistillConfig, None, [
        "student.text_mode=frozen", "student.hidden=32", "student.heads=4",
        "student.bottleneck_tokens=2", "student.max_text_len=16", "student.dropout=0.0",
        "student.lora.r=4", "student.lora.alpha=8", "student.dashfusion.enabled=true",
        "student.dashfusion.bottleneck=4", "student.dashfusion.depth=2"])
    sel = {"split": "valid", "metric": "valid_mae", "epoch": 1, "value": 0.5}
    path = save_checkpoint(dash_model, cfg, tmp_path / "ckpt", selection=sel, teacher_manifest={})
    loaded, _, _ = load_checkpoint(path)
    assert isinstance(loaded.fusion, DashFusion)
    batch = Collator.for_model(dash_model)(make_samples(4, vision="sequence"))
    dash_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch).pred, dash_model(batch).pred)


def test_dashfusion_config_checks():
    with pytest.raises(ConfigError, match="student.dashfusion.bottleneck"):
        DashFusionConfig(bottleneck=0)
    with pytest.raises(ConfigError, match="student.dashfusion.temperature"):
        load_config(DistillConfig, None, ["student.dashfusion.temperature=0"])
    with pytest.raises(ConfigError, match="student.fusion='bogus' is not allowed"):
        load_config(DistillConfig, None, ["student.fusion=bogus"])  # the old switch
    old = load_config(DistillConfig, None, ["student.fusion=dashfusion"])
    assert old.student.dashfusion.enabled
    gated = load_config(DistillConfig, None, ["student.fusion=gated"])
    assert not gated.student.dashfusion.enabled
