"""Collation into tensors and LNLN missing-modality masks (tokenizer only, no model)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from students.collate import Collator, StudentItem, TeacherSignal, collate
from students.robustness import (
    drop_modalities,
    fixed_rate,
    lnln_train,
    mask_batch,
    removal_patterns,
    sample_rates,
)
from workbench.data.schema import DataError, Sample
from workbench.data.store import DataInfo
from workbench.models import resolve_text_encoder

DA, DV = 5, 3


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(resolve_text_encoder("minilm"))


def info(kind_a="sequence", kind_v="vector", task="regression"):
    return DataInfo(name="tiny", task=task, metric_set="mosi" if task == "regression" else
                    "classification", label_range=(-3.0, 3.0),
                    class_names=["neg", "pos"] if task == "classification" else [],
                    modalities=["text", "audio", "vision"],
                    feature_dims={"audio": DA, "vision": DV},
                    feature_kind={"audio": kind_a, "vision": kind_v})


def samples(n=6, seed=0, seq=8):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = int(rng.integers(1, seq + 1))
        audio = rng.normal(size=(seq, DA)).astype(np.float32)
        audio[length:] = 0
        out.append(Sample(
            id=f"s{i}", text=f"the film number {i} was really quite good and long", split="train",
            label=None if i == 3 else float(i % 3 - 1), label_class=i % 2,
            audio=None if i == 1 else audio, audio_length=None if i == 1 else length,
            vision=None if i == 2 else rng.normal(size=DV).astype(np.float32)))
    return out


def test_collate_shapes_lengths_and_availability(tok):
    ss = samples()
    b = collate(ss, tok, info(), max_text_len=16)
    n = len(ss)
    assert b["ids"] == [s.id for s in ss]
    assert b["input_ids"].shape[0] == n and b["input_ids"].shape[1] <= 16
    t = int(max(s.audio_length or 0 for s in ss))
    assert b["audio"].shape == (n, t, DA) and b["vision"].shape == (n, DV)
    assert b["audio_avail"].tolist() == [1, 0, 1, 1, 1, 1]
    assert b["vision_avail"].tolist() == [1, 1, 0, 1, 1, 1]
    assert b["audio_lengths"][1] == 0 and b["audio_keep"][1].sum() == 0
    for i, s in enumerate(ss):
        if s.audio is not None:
            k = s.audio_length
            assert b["audio_keep"][i].sum() == k
            assert torch.allclose(b["audio"][i, :k], torch.from_numpy(s.audio[:k]))
    assert torch.isnan(b["labels"][3]) and b["label_mask"].tolist() == [1, 1, 1, 0, 1, 1]
    assert b["teacher_mask"].sum() == 0 and b["descriptions"] == [""] * n
    cls = collate(ss, tok, info(task="classification"), max_text_len=16)
    assert cls["label_mask"].tolist() == [1.0] * n and cls["label_class"].tolist() == [0, 1] * 3


def test_collate_teacher_signals_and_errors(tok):
    ss = samples(3)
    items = [StudentItem(ss[0], TeacherSignal(probs=[0.5, 0.5, 0.0], expected=-0.5, entropy=0.69,
                                              off_mass=0.1, description="sad voice")),
             StudentItem(ss[1], None, consistency=0.8),
             StudentItem(ss[2], TeacherSignal(description="neutral"))]
    b = Collator(tok, info(), 16, n_bins=3)(items)
    assert b["teacher_mask"].tolist() == [1, 0, 1]
    assert b["teacher_probs_mask"].tolist() == [1, 0, 0]
    assert b["teacher_probs"][0].tolist() == [0.5, 0.5, 0.0]
    assert b["descriptions"] == ["sad voice", "", "neutral"]
    assert b["teacher_expected"][0] == -0.5 and torch.isnan(b["teacher_expected"][1])
    assert b["consistency"][1] == pytest.approx(0.8) and torch.isnan(b["consistency"][0])
    with pytest.raises(ValueError, match="same label bins"):
        Collator(tok, info(), 16, n_bins=7)(items)
    bad = samples(1)
    bad[0].vision = np.zeros(DV + 1, np.float32)
    with pytest.raises(DataError, match="s0"):
        collate(bad, tok, info(), 16)


def test_collator_pickles(tok):
    c = Collator(tok, info(), 16, n_bins=7, masking=lnln_train(1, 0))
    c2 = pickle.loads(pickle.dumps(c))
    b1, b2 = c(samples()), c2(samples())
    assert torch.equal(b1["input_ids"], b2["input_ids"])


def _rows(batch, key):
    """Per sample id, its row of ``key`` with trailing padding stripped."""
    out = {}
    for i, sid in enumerate(batch["ids"]):
        row = batch[key][i]
        if key == "input_ids":
            row = row[batch["attention_mask"][i].bool()]
        elif key == "audio_keep":
            row = row[: int(batch["audio_lengths"][i])]
        out[sid] = row
    return out


KEYS = ("input_ids", "audio_keep", "vision_keep", "audio_avail", "vision_avail")


def test_masks_identical_across_calls_and_batchings_and_differ_across_epochs(tok):
    ss = samples(12, seed=3)
    spec = lnln_train(seed=7, epoch=0, complete_fraction=0.0)
    b1 = collate(ss, tok, info(), 16, masking=spec)
    b2 = collate(ss, tok, info(), 16, masking=spec)
    # other batch compositions and orders (as with several data-loader workers)
    rev = list(reversed(ss))
    parts = [collate(rev[:5], tok, info(), 16, masking=spec),
             collate(rev[5:], tok, info(), 16, masking=spec)]
    for key in KEYS:
        ref = _rows(b1, key)
        assert all(torch.equal(ref[k], v) for k, v in _rows(b2, key).items()), key
        for part in parts:
            assert all(torch.equal(ref[k], v) for k, v in _rows(part, key).items()), key
    assert not torch.equal(b1["input_ids"], collate(ss, tok, info(), 16)["input_ids"])
    b_next = collate(ss, tok, info(), 16, masking=spec.for_epoch(1))
    assert not torch.equal(b1["input_ids"], b_next["input_ids"])
    assert [sample_rates(spec, s.id) for s in ss] != [sample_rates(spec.for_epoch(1), s.id)
                                                      for s in ss]


def test_text_masking_keeps_cls_sep_and_padding(tok):
    ss = samples(6)
    clean = collate(ss, tok, info(), 16)
    masked = collate(ss, tok, info(), 16, masking=fixed_rate(0.5, seed=1))
    special = clean["special_tokens_mask"].bool() | ~clean["attention_mask"].bool()
    assert torch.equal(masked["input_ids"][special], clean["input_ids"][special])
    assert (masked["input_ids"][:, 0] == tok.cls_token_id).all()
    changed = masked["input_ids"] != clean["input_ids"]
    assert changed.any()
    assert (masked["input_ids"][changed] == tok.unk_token_id).all()
    assert torch.equal(masked["attention_mask"], clean["attention_mask"])
    # rate 1: every content token is [UNK], frames and vectors are zero, nothing available
    full = collate(ss, tok, info(), 16, masking=fixed_rate(1.0, seed=1))
    content = clean["attention_mask"].bool() & ~clean["special_tokens_mask"].bool()
    assert (full["input_ids"][content] == tok.unk_token_id).all()
    assert full["text_avail"].sum() == 0 and full["audio_avail"].sum() == 0
    assert full["audio"].abs().sum() == 0 and full["vision"].abs().sum() == 0
    assert not full["audio_keep"].any() and not full["vision_keep"].any()
    zero = collate(ss, tok, info(), 16, masking=fixed_rate(0.0, seed=1))
    assert torch.equal(zero["input_ids"], clean["input_ids"])


def test_frame_masking_zeroes_dropped_frames_of_sequences(tok):
    ss = samples(6)
    clean = collate(ss, tok, info(), 16)
    m = mask_batch(clean, fixed_rate(0.5, seed=2), tok.unk_token_id)
    assert clean["audio_keep"].sum() > m["audio_keep"].sum() > 0
    dropped = clean["audio_keep"] & ~m["audio_keep"]
    assert m["audio"][dropped].abs().sum() == 0
    kept = m["audio_keep"]
    assert torch.equal(m["audio"][kept], clean["audio"][kept])
    assert not (m["audio_keep"] & ~clean["audio_keep"]).any()  # padding never turns on
    assert clean["audio_keep"].sum() == sum(s.audio_length or 0 for s in ss)  # input untouched


def test_drop_whole_modality_and_patterns(tok):
    ss = samples(6)
    clean = collate(ss, tok, info(), 16)
    b = mask_batch(clean, drop_modalities(["audio"]), tok.unk_token_id)
    assert b["audio_avail"].sum() == 0 and b["audio"].abs().sum() == 0
    assert torch.equal(b["vision"], clean["vision"]) and torch.equal(b["input_ids"],
                                                                     clean["input_ids"])
    pats = removal_patterns(["text", "audio", "vision"])
    assert pats["t"] == ("audio", "vision") and pats["t+a+v"] == () and len(pats) == 7


def test_lnln_keeps_about_half_complete():
    spec = lnln_train(seed=0, epoch=0)
    rates = [sample_rates(spec, f"id{i}") for i in range(2000)]
    complete = np.mean([all(v == 0 for v in r.values()) for r in rates])
    assert abs(complete - 0.5) < 0.04
    with pytest.raises(ValueError, match="rate"):
        fixed_rate(1.5, 0)


def test_masks_do_not_depend_on_dataloader_workers(tok):
    from torch.utils.data import DataLoader

    ss = samples(10, seed=5)
    col = Collator(tok, info(), 16, masking=lnln_train(seed=3, epoch=2, complete_fraction=0.0))

    def run(workers: int, batch_size: int) -> dict[str, dict[str, torch.Tensor]]:
        dl = DataLoader(ss, batch_size=batch_size, collate_fn=col, num_workers=workers,
                        shuffle=False)
        rows: dict[str, dict[str, torch.Tensor]] = {key: {} for key in KEYS}
        for b in dl:
            for key in KEYS:
                rows[key].update(_rows(b, key))
        return rows

    base = run(0, 10)
    other = run(2, 3)
    for key in KEYS:
        assert base[key].keys() == other[key].keys()
        assert all(torch.equal(base[key][k], other[key][k]) for k in base[key]), key
