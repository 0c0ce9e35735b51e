"""Length-aware batching: token budgets (train.batch_tokens), the epoch's batches, the
validation and prediction batches, and the padding report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from students.batching import (
    EpochBatchSampler,
    EpochSampler,
    length_batches,
    padding_report,
    token_batches,
)
from students.collate import Collator
from students.inference import predict, predict_batches, token_counts
from students.model import build_student
from students.trainer import train
from tests.support.distill import distill_cfg, tiny_data
from tests.support.students import BINS, make_info, make_samples
from workbench.config import ConfigError, DistillConfig, LoraConfig, StudentConfig, load_config

pytestmark = pytest.mark.usefixtures("one_thread")


def skewed_lengths(n: int, seed: int = 0) -> list[int]:
    """Token counts like MOSI's: most texts short, a long tail."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(2.6, 0.6, size=n).astype(int), 3, 64).tolist()


# ------------------------------------------------------------------------ pure cutting


def test_token_batches_fill_the_budget_in_order():
    lengths = [10, 9, 9, 5, 5, 5, 5, 2, 1]
    assert token_batches(lengths, 20) == [[0, 1], [2, 3], [4, 5, 6, 7], [8]]
    # reference: each batch is consecutive, within the budget, and one more would not fit
    lens = sorted(skewed_lengths(300), reverse=True)
    out = token_batches(lens, 256)
    assert [i for b in out for i in b] == list(range(300))
    for k, b in enumerate(out):
        assert len(b) * max(lens[i] for i in b) <= 256 or len(b) == 1
        if k + 1 < len(out):
            nxt = b + [out[k + 1][0]]
            assert len(nxt) * max(lens[i] for i in nxt) > 256


def test_token_batches_cut_where_too_little_would_be_real():
    lengths = [20, 19, 18, 10, 10, 9, 2]
    assert token_batches(lengths, 1000) == [list(range(7))]
    # [20, 19, 18, 10]: 67 real of 80 < 0.9; [10, 10, 9, 2]: 31 of 40 < 0.9
    assert token_batches(lengths, 1000, min_real=0.9) == [[0, 1, 2], [3, 4, 5], [6]]


def test_token_batches_put_a_text_over_the_budget_alone():
    assert token_batches([50, 40, 3, 3], 32) == [[0], [1], [2, 3]]
    with pytest.raises(ValueError, match="batch_tokens=0"):
        token_batches([3], 0)


def test_length_batches_pad_less_than_fixed_batches_of_the_same_mean_size():
    lens = skewed_lengths(192)
    fixed = length_batches(lens, 64, batch_tokens=0)
    assert [len(b) for b in fixed] == [64, 64, 64]
    budget = length_batches(lens, 64)  # default: 64 x the mean length
    for batches in (fixed, budget):
        assert sorted(np.concatenate(batches).tolist()) == list(range(192))
    rep_fixed = padding_report([[lens[i] for i in b] for b in fixed])
    rep = padding_report([[lens[i] for i in b] for b in budget])
    assert rep["real_tokens"] == rep_fixed["real_tokens"] == sum(lens)
    assert rep_fixed["real_share"] < 0.75
    budget_tokens = 64 * int(np.ceil(np.mean(lens)))
    for b in budget:  # within 64 x the mean length, and at least 90 % real tokens each
        ls = [lens[i] for i in b]
        assert len(ls) * max(ls) <= budget_tokens or len(ls) == 1
        assert sum(ls) >= 0.9 * len(ls) * max(ls)
    assert rep["real_share"] >= 0.9
    with pytest.raises(ValueError, match="batch_tokens=-1"):
        length_batches(lens, 64, batch_tokens=-1)


def test_padding_report_counts_real_and_padded_tokens():
    rep = padding_report([[4, 2], [3]])
    assert rep == {"batches": 2, "samples": 3, "real_tokens": 9, "padded_tokens": 11,
                   "real_share": 9 / 11, "mean_batch": 1.5}


# ----------------------------------------------------------------------- epoch sampler


def test_a_token_budget_epoch_depends_only_on_seed_and_epoch():
    lens = skewed_lengths(500, seed=1)
    a = EpochSampler(500, seed=3, lengths=lens, batch_size=16, group=4, batch_tokens=320)
    b = EpochSampler(500, seed=3, lengths=lens, batch_size=16, group=4, batch_tokens=320)
    for e in (0, 3):
        ba, bb = a.batches(e), b.batches(e)
        assert [x.tolist() for x in ba] == [x.tolist() for x in bb]
        assert sorted(np.concatenate(ba).tolist()) == list(range(500))
    assert [x.tolist() for x in a.batches(0)] != [x.tolist() for x in a.batches(1)]
    c = EpochSampler(500, seed=4, lengths=lens, batch_size=16, group=4, batch_tokens=320)
    assert [x.tolist() for x in a.batches(0)] != [x.tolist() for x in c.batches(0)]
    sizes = set()
    for bt in a.batches(2):
        ls = [lens[i] for i in bt]
        assert ls == sorted(ls, reverse=True)  # cut from one sorted window
        assert len(ls) * ls[0] <= 320 or len(ls) == 1
        sizes.add(len(ls))
    assert max(sizes) > 16 > min(sizes)  # short texts in large batches, long in small
    # the windows are shuffled: the longest batch is not always first
    firsts = [int(max(lens[i] for i in a.batches(e)[0])) for e in range(8)]
    assert len(set(firsts)) > 1


def test_a_token_budget_pads_less_than_fixed_batches():
    lens = skewed_lengths(1000, seed=2)
    budget = EpochSampler(1000, 1, lens, batch_size=32, group=50, batch_tokens=32 * 16)
    fixed = EpochSampler(1000, 1, lens, batch_size=32, group=50)
    rand = EpochSampler(1000, 1, batch_size=32)
    share = {name: padding_report([[lens[i] for i in b] for b in s.batches(0)])["real_share"]
             for name, s in (("budget", budget), ("fixed", fixed), ("random", rand))}
    assert share["budget"] >= share["fixed"] > share["random"]


def test_a_token_budget_needs_lengths_and_a_sane_value():
    with pytest.raises(ValueError, match="needs the samples' lengths"):
        EpochSampler(10, 1, batch_tokens=64)
    with pytest.raises(ValueError, match="batch_tokens=-5"):
        EpochSampler(10, 1, [3] * 10, batch_tokens=-5)


def test_the_batch_sampler_feeds_a_loader_the_epochs_batches():
    lens = skewed_lengths(120, seed=3)
    sampler = EpochSampler(120, 5, lens, batch_size=8, group=5, batch_tokens=160)
    bs = EpochBatchSampler(sampler)
    loader = DataLoader(list(range(120)), batch_sampler=bs, collate_fn=list)
    for epoch in (0, 1):
        bs.set_epoch(epoch)
        got = list(loader)
        assert got == [b.tolist() for b in sampler.batches(epoch)]
        assert len(bs) == len(got)
    assert bs.total(2) == len(sampler.batches(0)) + len(sampler.batches(1))


def test_a_fixed_batch_size_keeps_todays_order():
    """batch_tokens=0 is the sampler as it was: the same indices for the same seed."""
    lens = skewed_lengths(53, seed=4)
    s = EpochSampler(53, seed=1, lengths=lens, batch_size=8, group=3)
    s.set_epoch(2)
    # the order written out from the definition (a permutation, windows of 24 sorted
    # longest first, full batches shuffled, the short one last)
    from students.batching import epoch_seed

    rng = np.random.default_rng(epoch_seed(1, 2, stream=1))
    perm = rng.permutation(53)
    arr = np.asarray(lens)
    batches = []
    for start in range(0, 53, 24):
        w = perm[start:start + 24]
        w = w[np.argsort(-arr[w], kind="stable")]
        batches += [w[i:i + 8] for i in range(0, len(w), 8)]
    full = [b for b in batches if len(b) == 8]
    short = [b for b in batches if len(b) < 8]
    want = np.concatenate([full[i] for i in rng.permutation(len(full))] + short).tolist()
    assert list(s) == want


# --------------------------------------------------------------------------- config


def test_batch_tokens_is_checked_with_its_field_named():
    with pytest.raises(ConfigError, match=r"train\.batch_tokens=-1 is invalid"):
        load_config(DistillConfig, None, ["train.batch_tokens=-1"])
    with pytest.raises(ConfigError, match="train.group_by_length=true"):
        load_config(DistillConfig, None, ["train.batch_tokens=512"])
    cfg = load_config(DistillConfig, None, ["train.batch_tokens=512",
                                            "train.group_by_length=true"])
    assert cfg.train.batch_tokens == 512


# ------------------------------------------------------------------------- predict


def _student():
    cfg = StudentConfig(hidden=16, heads=2, bottleneck_tokens=2, max_text_len=32, dropout=0.0,
                        lora=LoraConfig(r=2, alpha=4, dropout=0.0))
    torch.manual_seed(0)
    return build_student(cfg, make_info(), BINS).eval()


def _varied_samples(n: int):
    samples = make_samples(n)
    rng = np.random.default_rng(0)
    words = "really quite good bad film plot actor scene honestly".split()
    for s in samples:
        s.text = " ".join(rng.choice(words, size=int(rng.integers(1, 25))))
    return samples


def test_predict_cuts_batches_by_tokens_and_keeps_the_input_order():
    model = _student()
    samples = _varied_samples(40)
    with torch.no_grad():  # one padded batch: padding changes no prediction
        want = model(Collator.for_model(model)(samples)).pred.numpy()
    counts = token_counts(model, samples)
    batches = predict_batches(model, samples, batch_size=8)
    fixed = predict_batches(model, samples, batch_size=8, batch_tokens=0)
    assert [len(b) for b in fixed] == [8] * 5
    assert len({len(b) for b in batches}) > 1
    share = [padding_report([[counts[i] for i in b] for b in bb])["real_share"]
             for bb in (batches, fixed)]
    assert share[0] > share[1]
    for bt in (None, 0, 40):
        got = predict(model, samples, batch_size=8, batch_tokens=bt)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="batch_tokens=-2"):
        predict(model, samples, batch_tokens=-2)


# ------------------------------------------------------------------------- training


def test_training_with_a_token_budget_runs_every_batch_and_the_whole_schedule(
        tmp_path, monkeypatch):
    data = tiny_data(tmp_path / "data", n=64)
    yielded: list[list[list[int]]] = []
    real_iter = EpochBatchSampler.__iter__

    def record(self):
        batches = list(real_iter(self))
        assert batches == [b.tolist() for b in self.sampler.batches()]
        yielded.append(batches)
        return iter(batches)

    monkeypatch.setattr(EpochBatchSampler, "__iter__", record)
    cfg = distill_cfg(tmp_path / "run", data, "signals.cache_dir=", "train.group_by_length=true",
                      "train.batch_tokens=96", "train.epochs=2")
    assert train(cfg).is_dir()
    state = json.loads((tmp_path / "run" / "last" / "trainer_state.json").read_text())
    assert len(yielded) == 2  # one pass per epoch
    sizes = [len(b) for epoch in yielded for b in epoch]
    assert len(set(sizes)) > 1 and max(sizes) > cfg.train.batch_size
    for epoch in yielded:  # every train sample once per epoch
        flat = sorted(i for b in epoch for i in b)
        assert flat == list(range(len(flat)))
    assert yielded[0] != yielded[1]
    # one optimizer step per batch of each epoch, and the cosine schedule, whose length
    # counted those batches, ends at zero
    assert state["global_step"] == len(yielded[0]) + len(yielded[1])
    assert state["history"][-1]["lr"][0] == pytest.approx(0.0, abs=1e-12)
