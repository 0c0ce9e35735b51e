"""The student built on the real MiniLM: shapes, training modes, prompted branch, a step."""

from __future__ import annotations

import pytest
import torch

from students.collate import Collator, StudentItem
from students.losses import soft_label_kd, task_loss, weighted_mean
from students.model import StudentOutput, build_student
from tests.support.students import (
    BINS,
    HID,
    make_info,
    make_samples,
    student_cfg,
    teacher_signal,
)
from workbench.config import LoraConfig


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine, two threads spin against other
    processes and run 20x slower; restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def lora_model():
    torch.manual_seed(0)
    return build_student(student_cfg(), make_info(), BINS)


def test_forward_shapes_sequence_and_vector_with_missing_modality(lora_model):
    m = lora_model.eval()
    ss = make_samples()
    batch = Collator.for_model(m)(ss)
    with torch.no_grad():
        out = m(batch, return_attention=True)
    assert isinstance(out, StudentOutput)
    b = len(ss)
    assert out.pred.shape == (b,) and out.bin_logits.shape == (b, len(BINS))
    assert out.fused.shape == (b, HID) and out.projected.shape == (b, HID)
    assert set(out.unimodal) == {"text", "audio", "vision"}
    assert all(v.shape == (b,) for v in out.unimodal.values())
    # a missing modality contributes nothing: its gate is zero for that sample
    assert out.gates["audio"][1].abs().sum() == 0 and out.gates["vision"][2].abs().sum() == 0
    assert out.gates["audio"][0].abs().sum() > 0
    l_txt = batch["input_ids"].shape[1]
    assert out.attention["text_to_audio"].shape == (b, 4, l_txt, 2)
    assert out.attention["bottleneck_audio"].shape == (b, 4, 2, batch["audio"].shape[1])
    assert out.attention["bottleneck_vision"].shape == (b, 4, 2, 1)
    assert m.expected_score(out.bin_logits).shape == (b,)
    # changing the features of an unavailable / masked modality changes nothing
    batch2 = dict(batch)
    batch2["audio"] = batch["audio"].clone()
    batch2["audio"][1] = 5.0
    batch2["vision"] = batch["vision"].clone()
    batch2["vision"][2] = -5.0
    with torch.no_grad():
        out2 = m(batch2)
    assert torch.allclose(out.pred, out2.pred, atol=1e-6)


def test_lora_trains_only_adapters_and_heads(lora_model):
    names = [n for n, p in lora_model.named_parameters() if p.requires_grad]
    text = [n for n in names if n.startswith("text.")]
    assert text and all("lora_" in n for n in text)
    assert any(n.startswith("fusion.") for n in names) and any(n.startswith("head.") for n in names)
    frozen_text = [n for n, p in lora_model.text.named_parameters() if not p.requires_grad]
    assert all("lora_" not in n for n in frozen_text)
    counts = lora_model.parameter_counts()
    # MiniLM-L6: 6 layers x 2 targets x r * (384 + 384)
    assert counts["text_encoder"].trainable == 6 * 2 * 4 * (384 + 384)
    assert counts["text_encoder"].total > 22_000_000
    assert counts["all"].trainable == sum(v.trainable for k, v in counts.items() if k != "all")
    groups = lora_model.param_groups(lr=1e-3, encoder_lr=1e-4, weight_decay=0.01)
    assert sum(len(g["params"]) for g in groups) == len(names)
    assert {g["lr"] for g in groups} == {1e-3, 1e-4}


def test_frozen_and_full_modes():
    info = make_info(mods=("text", "audio"), audio="sequence")
    frozen = build_student(student_cfg(text_mode="frozen", seq_encoder="gru"), info, None)
    assert frozen.parameter_counts()["text_encoder"].trainable == 0
    frozen.train()
    assert not frozen.text.model.training  # a frozen encoder keeps dropout off
    assert frozen.bin_head is None and "vision" not in frozen.encoders
    ss = make_samples(4)
    for s in ss:
        s.vision = None
    batch = Collator.for_model(frozen)(ss)
    assert "vision" not in batch and "teacher_probs" not in batch
    out = frozen(batch)
    assert out.bin_logits is None and set(out.unimodal) == {"text", "audio"}
    out.pred.sum().backward()
    assert all(p.grad is None for p in frozen.text.parameters())
    assert frozen.encoders["audio"].inp[0].weight.grad is not None
    full = build_student(student_cfg(text_mode="full"), info, None)
    c = full.parameter_counts()["text_encoder"]
    assert c.trainable == c.total


def test_bad_lora_target_names_the_available_layers():
    with pytest.raises(ValueError, match=r"query.*value|dense"):
        build_student(student_cfg(lora=LoraConfig(target_modules=["q_proj"])), make_info(), BINS)


def test_classification_bins_are_the_classes():
    info = make_info(task="classification", audio="vector", vision="sequence")
    m = build_student(student_cfg(text_mode="frozen"), info, None).eval()
    ss = make_samples(4, audio="vector", vision="sequence")
    with torch.no_grad():
        out = m(Collator.for_model(m)(ss))
    assert out.pred.shape == (4, 3) and out.bin_logits is out.pred
    assert out.unimodal["vision"].shape == (4, 3)


@pytest.mark.parametrize("mode", ["film", "tokens"])
def test_prompted_branch_reads_descriptions_and_plain_ignores_them(mode, lora_model):
    torch.manual_seed(0)
    pm = build_student(student_cfg(prompted=True, prompt_fusion=mode), make_info(), BINS).eval()
    assert pm.prompt is not None
    assert pm.parameter_counts()["description_branch"].trainable > 0
    assert all(not p.requires_grad for p in pm.prompt.encoder.parameters())
    ss = make_samples(4)
    col = Collator.for_model(pm)
    b1 = col([StudentItem(s, teacher_signal(s, "a cheerful voice and a smile")) for s in ss])
    b2 = col([StudentItem(s, teacher_signal(s, "a flat voice and a frown")) for s in ss])
    with torch.no_grad():
        o1, o2 = pm(b1, return_attention=True), pm(b2)
        p1, p2 = lora_model.eval()(b1), lora_model(b2)
    assert not torch.allclose(o1.pred, o2.pred, atol=1e-5)
    assert not torch.allclose(o1.fused, o2.fused, atol=1e-5)
    assert torch.equal(p1.pred, p2.pred) and torch.equal(p1.fused, p2.fused)
    # text->bottleneck maps match the plain student's shape (attention distillation)
    assert o1.attention["text_to_audio"].shape == lora_model(b1, True).attention[
        "text_to_audio"].shape
    with pytest.raises(KeyError, match="descriptions"):
        pm({k: v for k, v in b1.items() if k != "descriptions"})


def test_training_step_reduces_loss_on_fixed_batch():
    torch.manual_seed(0)
    m = build_student(student_cfg(), make_info(), BINS)
    ss = make_samples(8)
    batch = Collator.for_model(m)([StudentItem(s, teacher_signal(s)) for s in ss])
    opt = torch.optim.AdamW(m.param_groups(lr=3e-3, encoder_lr=3e-3, weight_decay=0.0))

    def loss_fn() -> torch.Tensor:
        out = m(batch)
        loss = task_loss(out.pred, batch["labels"], "l1", mask=batch["label_mask"])
        loss = loss + soft_label_kd(out.bin_logits, batch["teacher_probs"], 2.0,
                                    mask=batch["teacher_probs_mask"])
        for mod, pred in out.unimodal.items():
            avail = batch["text_avail"] if mod == "text" else batch[f"{mod}_avail"]
            loss = loss + 0.1 * task_loss(pred, batch["labels"], "l1",
                                          mask=batch["label_mask"] * avail)
        return loss

    m.train()
    before = loss_fn()
    lora_b = next(p for n, p in m.named_parameters() if "lora_B" in n)
    lora_before = lora_b.detach().clone()
    for _ in range(5):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    after = loss_fn()
    assert after.item() < before.item()
    assert not torch.equal(lora_b.detach(), lora_before)  # the adapter learned too
    assert weighted_mean(torch.ones(2)).item() == 1.0


def _all_trainable_get_gradients(model, batch) -> list[str]:
    model.zero_grad(set_to_none=True)
    out = model(batch)
    loss = out.pred.sum() + out.projected.sum() + sum(v.sum() for v in out.unimodal.values())
    if out.bin_logits is not None:
        loss = loss + out.bin_logits.sum()
    loss.backward()
    return [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


@pytest.mark.parametrize("mods,extra", [
    (("text", "audio", "vision"), {}),
    (("text", "audio", "vision"), {"prompted": True, "prompt_fusion": "tokens"}),
    (("text",), {"prompted": True, "prompt_fusion": "film"}),
])
def test_every_trainable_parameter_gets_a_gradient(mods, extra):
    """No dead weights (distributed data parallel rejects parameters without gradients)."""
    m = build_student(student_cfg(text_mode="frozen", **extra), make_info(mods=mods), BINS)
    ss = make_samples(4)
    for s in ss:
        s.audio = s.audio if "audio" in mods else None
        s.vision = s.vision if "vision" in mods else None
    batch = Collator.for_model(m)([StudentItem(s, teacher_signal(s)) for s in ss])
    assert _all_trainable_get_gradients(m, batch) == []
    if mods == ("text",):
        assert set(m(batch).unimodal) == {"text"} and not m.encoders


def test_tokens_prompt_needs_a_non_text_modality():
    with pytest.raises(ValueError, match="prompt_fusion=film"):
        build_student(student_cfg(text_mode="frozen", prompted=True, prompt_fusion="tokens"),
                      make_info(mods=("text",)), BINS)
