"""Cross-sample enhancement (student.enhance.enabled): each retrieval function against a plain
reference, the memory bank, a training step, and a checkpoint round trip of the bank."""

from __future__ import annotations

import math

import pytest
import torch

from students.collate import Collator
from students.methods.enhance.memory import (
    CrossSampleEnhancer,
    cosine_matrix,
    enrich,
    fifo_push,
    neighbour_scores,
    observed_fraction,
    top_k_weights,
    weight_entropy,
)
from students.robustness import drop_modalities
from tests.support.reference import rand, ref_cos
from tests.support.students import BINS, tiny_student, train_items
from workbench.config import DistillConfig, EnhanceConfig, load_config

pytestmark = pytest.mark.usefixtures("one_thread")


def ref_softmax(xs):
    mx = max(xs)
    e = [math.exp(x - mx) for x in xs]
    return [x / sum(e) for x in e]


# ------------------------------------------------------------------------ pure functions


def test_observed_fraction_matches_reference():
    keep = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    lengths = torch.tensor([2, 4, 0, 4])
    ref = [2 / 2, 2 / 4, 0.0, 1.0]
    assert observed_fraction(keep, lengths).tolist() == pytest.approx(ref)
    # utterance vectors: keep (B, 1), lengths 1 / 0
    assert observed_fraction(torch.tensor([[True], [False]]), torch.tensor([1, 1])).tolist() == [1, 0]


def test_cosine_matrix_matches_reference_and_zero_vectors_give_zero():
    a, b = rand(3, 4, seed=1), rand(5, 4, seed=2)
    b[2] = 0.0
    got = cosine_matrix(a, b)
    for i in range(3):
        for j in range(5):
            assert got[i, j].item() == pytest.approx(ref_cos(a[i].tolist(), b[j].tolist()), abs=1e-6)
    assert (got[:, 2] == 0).all()


def test_neighbour_scores_average_the_present_key_modalities():
    q = {"text": rand(3, 4, seed=3), "vision": rand(3, 4, seed=4)}
    present = {"text": torch.tensor([1.0, 1.0, 0.0]), "vision": torch.tensor([1.0, 0.0, 0.0])}
    bank = {"text": rand(4, 4, seed=5), "vision": rand(4, 4, seed=6)}
    valid = torch.tensor([True, True, True, False])
    scores, has_key = neighbour_scores(q, present, bank, valid)
    assert has_key.tolist() == [True, True, False]
    for b in range(3):
        for j in range(4):
            mods = [m for m in q if present[m][b] > 0]
            if not mods or not valid[j]:
                assert scores[b, j].item() == -math.inf
                continue
            ref = sum(ref_cos(q[m][b].tolist(), bank[m][j].tolist()) for m in mods) / len(mods)
            assert scores[b, j].item() == pytest.approx(ref, abs=1e-6)


def ref_top_k(row, k, t):
    finite = sorted([(s, j) for j, s in enumerate(row) if s != -math.inf], reverse=True)[:k]
    if not finite:
        return [], []
    w = ref_softmax([s / t for s, _ in finite])
    return [j for _, j in finite], w


def test_top_k_weights_match_reference_including_too_few_and_no_neighbours():
    scores = torch.tensor([[0.9, 0.1, 0.5, -math.inf, 0.7],
                           [-math.inf, 0.2, -math.inf, -math.inf, -math.inf],
                           [-math.inf] * 5])
    idx, w = top_k_weights(scores, k=3, temperature=0.5)
    assert idx.shape == (3, 3)
    for b in range(3):
        ref_idx, ref_w = ref_top_k(scores[b].tolist(), 3, 0.5)
        got = {int(j): float(x) for j, x in zip(idx[b], w[b], strict=True) if x > 0}
        assert set(got) == set(ref_idx)
        for j, x in zip(ref_idx, ref_w, strict=True):
            assert got[j] == pytest.approx(x, abs=1e-6)
    assert w[2].sum() == 0  # no neighbour at all: zero weights, no NaN
    assert torch.isfinite(w).all()
    with pytest.raises(ValueError):
        top_k_weights(scores, k=0, temperature=1.0)


def test_enrich_is_the_weighted_mean_of_the_neighbours():
    values = rand(6, 3, seed=7)
    idx = torch.tensor([[0, 4], [5, 5]])
    w = torch.tensor([[0.25, 0.75], [0.5, 0.5]])
    got = enrich(values, idx, w)
    for b in range(2):
        ref = [sum(w[b, k].item() * values[idx[b, k], d].item() for k in range(2)) for d in range(3)]
        assert got[b].tolist() == pytest.approx(ref, abs=1e-6)


def test_weight_entropy_matches_reference_and_edges():
    w = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.2, 0.3, 0.5], [0.0, 0.0, 0.0]])
    got = weight_entropy(w)
    for b in range(3):
        ref = -sum(x * math.log(x) for x in w[b].tolist() if x > 0) / math.log(3)
        assert got[b].item() == pytest.approx(ref, abs=1e-6)
    assert got[1].item() == pytest.approx(0.0) and got[3].item() == 1.0
    assert weight_entropy(torch.tensor([[1.0], [0.0]])).tolist() == [0.0, 1.0]


def test_fifo_push_wraps_and_keeps_the_last_rows():
    bank = torch.zeros(4, 2)
    ref = [[0.0, 0.0] for _ in range(4)]
    ptr = filled = 0
    rptr = 0
    for step, m in enumerate([3, 2, 6, 0]):
        rows = torch.arange(m * 2, dtype=torch.float32).reshape(m, 2) + 100 * step
        bank, ptr, filled = fifo_push(bank, ptr, filled, rows)
        for r in rows.tolist()[-4:] if m > 4 else rows.tolist():
            ref[rptr] = r
            rptr = (rptr + 1) % 4
        assert bank.tolist() == ref and ptr == rptr
    assert filled == 4


# ----------------------------------------------------------------------- the module


def test_enhancer_retrieves_before_it_pushes_and_pushes_complete_rows_only():
    torch.manual_seed(0)
    enh = CrossSampleEnhancer(4, ["text", "audio"], ["audio"], bank_size=8, k=2, temperature=0.1)
    pooled = {"text": rand(3, 4, seed=8), "audio": rand(3, 4, seed=9)}
    present = {"text": torch.ones(3), "audio": torch.tensor([1.0, 0.0, 1.0])}
    observed = {"audio": torch.tensor([1.0, 0.0, 0.5])}
    out, apply, unc = enh(pooled, present, observed)
    assert not apply["audio"].any()  # empty bank: nothing to borrow
    assert (unc["audio"] == 1).all()
    enh.push(pooled, torch.tensor([True, False, False]))
    assert enh.filled == 1
    assert torch.equal(enh.bank_audio[0], pooled["audio"][0])
    out, apply, _ = enh(pooled, present, observed)
    assert apply["audio"].tolist() == [False, True, True]  # degraded rows only
    # with one neighbour the enriched vector is that row; the gate blends it in
    g = torch.sigmoid(enh.gate["audio"](torch.cat(
        [pooled["audio"], pooled["audio"][:1].expand(3, -1), torch.zeros(3, 1),
         observed["audio"].unsqueeze(1)], dim=-1)))
    ref = g * pooled["audio"][:1] + (1 - g) * pooled["audio"]
    torch.testing.assert_close(out["audio"], ref)


# ------------------------------------------------------------------ model and training


@pytest.fixture(scope="module")
def enhanced():
    return tiny_student(text_mode="frozen", enhance=EnhanceConfig(enabled=True, k=2, bank=16))


def test_enhance_off_leaves_the_model_unchanged():
    plain = tiny_student(text_mode="frozen")
    assert "enhance" not in plain.methods
    assert not [k for k in plain.state_dict() if k.startswith("methods.")]


def test_an_empty_bank_changes_nothing(enhanced):
    plain = tiny_student(text_mode="frozen")
    enhanced.eval()
    res = enhanced.load_state_dict(plain.state_dict(), strict=False)
    assert all(k.startswith("methods.enhance.") for k in res.missing_keys)
    assert not res.unexpected_keys
    enhanced.methods["enhance"].bank_filled.zero_()
    batch = Collator.for_model(plain, masking=drop_modalities(("audio",)))(train_items())
    plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(enhanced(batch).pred, plain(batch).pred)


def test_a_training_step_fills_the_bank_and_enhances_dropped_audio(enhanced):
    enhanced.methods["enhance"].bank_filled.zero_()
    enhanced.methods["enhance"].bank_ptr.zero_()
    enhanced.train()
    items = train_items()
    full = Collator.for_model(enhanced)(items)
    n_complete = int((full["vision_avail"] * full["audio_avail"]).sum())
    enhanced(full)
    assert enhanced.methods["enhance"].filled == n_complete == 7  # sample 3 has no vision
    dropped = Collator.for_model(enhanced, masking=drop_modalities(("audio",)))(items)
    enc = enhanced.encode(dropped)
    assert enc.extras["enhance"]["audio"].all() and (enc.avail["audio"] == 1).all()
    assert enhanced.methods["enhance"].filled == n_complete  # nothing complete in this batch
    out = enhanced.fuse_and_predict(enc)
    loss = (out.pred - dropped["labels"]).abs().mean()
    assert torch.isfinite(loss)
    enhanced.zero_grad()
    loss.backward()
    g = enhanced.methods["enhance"].gate["audio"].weight.grad
    assert g is not None and g.abs().sum() > 0
    # eval mode: the bank is frozen
    enhanced.eval()
    with torch.no_grad():
        enhanced(full)
    assert enhanced.methods["enhance"].filled == n_complete


def test_checkpoint_round_trips_the_bank(tmp_path, enhanced):
    from students.checkpoint import load_checkpoint, save_checkpoint

    enhanced.train()
    enhanced(Collator.for_model(enhanced)(train_items(seed=3)))  # fills the bank
    assert enhanced.methods["enhance"].filled > 0
    cfg = load_config(DistillConfig, None, [
        "student.text_mode=frozen", "student.hidden=16", "student.heads=2",
        "student.bottleneck_tokens=2", "student.max_text_len=16", "student.dropout=0.0",
        "student.prompt_max_len=16", "student.lora.r=2", "student.lora.alpha=4",
        "student.enhance.enabled=true", "student.enhance.k=2", "student.enhance.bank=16"])
    sel = {"split": "valid", "metric": "valid_mae", "epoch": 1, "value": 0.5}
    path = save_checkpoint(enhanced, cfg, tmp_path / "ckpt", selection=sel, teacher_manifest={})
    loaded, _, meta = load_checkpoint(path)
    assert meta.bins == BINS
    for name in ("bank_text", "bank_audio", "bank_vision", "bank_ptr", "bank_filled"):
        assert torch.equal(getattr(loaded.methods["enhance"], name), getattr(enhanced.methods["enhance"], name))
    batch = Collator.for_model(enhanced, masking=drop_modalities(("audio",)))(train_items())
    enhanced.eval()
    with torch.no_grad():
        a, b = enhanced(batch), loaded(batch)
    torch.testing.assert_close(a.pred, b.pred, atol=1e-6, rtol=0)
    # and the bank matters: emptied, the prediction changes
    loaded.methods["enhance"].bank_filled.zero_()
    with torch.no_grad():
        assert not torch.allclose(loaded(batch).pred, a.pred)


def test_partly_masked_sequences_and_missing_vectors_are_enhanced():
    from students.model import build_student
    from students.robustness import fixed_rate
    from tests.support.students import make_info, make_samples, student_cfg

    torch.manual_seed(0)
    model = build_student(student_cfg(text_mode="frozen",
                                      enhance=EnhanceConfig(enabled=True, k=2, bank=8)),
                          make_info(audio="sequence", vision="vector"), BINS)
    model.train()
    samples = make_samples(8)  # sample 1 has no audio, sample 2 no vision
    model(Collator.for_model(model)(samples))
    assert model.methods["enhance"].filled == 6
    batch = Collator.for_model(model, masking=fixed_rate(0.2, seed=1, modalities=("audio",)))(
        samples)
    frac = observed_fraction(batch["audio_keep"], batch["audio_lengths"])
    assert frac[1] == 0 and (frac < 1).sum() > 1 and (frac == 1).any()
    enc = model.encode(batch)
    assert enc.extras["enhance"]["audio"].tolist() == (frac < 1).tolist()
    assert enc.extras["enhance"]["vision"].tolist() == [i == 2 for i in range(8)]
    assert enc.others["audio"].tokens.shape[1] == batch["audio"].shape[1] + 1
    assert enc.avail["audio"].tolist() == [1.0] * 8  # the missing one is filled in
    assert torch.isfinite(model.fuse_and_predict(enc).pred).all()
