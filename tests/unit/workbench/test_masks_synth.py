import numpy as np

from workbench.config import DataConfig
from workbench.data import Sample, availability, load_dataset
from workbench.data.masks import draw_rates, keep_mask, mask_rng
from workbench.data.synth import SynthSpec, write


def test_mask_rng_depends_only_on_seed_epoch_id():
    a = mask_rng(1, 0, "x").random(4)
    assert np.array_equal(a, mask_rng(1, 0, "x").random(4))
    assert not np.array_equal(a, mask_rng(1, 1, "x").random(4))
    assert not np.array_equal(a, mask_rng(2, 0, "x").random(4))
    assert not np.array_equal(a, mask_rng(1, 0, "y").random(4))


def test_keep_mask_rate():
    m = keep_mask(mask_rng(0, 0, "s"), 100_000, 0.3)
    assert abs(m.mean() - 0.7) < 0.01
    assert keep_mask(mask_rng(0, 0, "s"), 10, 0.0).all()
    assert not keep_mask(mask_rng(0, 0, "s"), 10, 1.0).any()
    assert keep_mask(mask_rng(0, 0, "s"), 0, 0.5).shape == (0,)


def test_draw_rates_keeps_half_complete():
    rates = [draw_rates(mask_rng(0, 0, str(i)), ["text", "audio"]) for i in range(4000)]
    complete = np.mean([all(v == 0 for v in r.values()) for r in rates])
    assert abs(complete - 0.5) < 0.03
    partial = [r["audio"] for r in rates if any(r.values())]
    assert 0.45 < np.mean(partial) < 0.55


def test_availability():
    s = Sample(id="a", text="hi", split="train", audio=np.zeros((4, 2)), audio_length=0)
    assert availability(s) == {"text": True, "audio": False, "vision": False}


def test_synth_has_signal_in_every_modality_and_missing_ones(tmp_path):
    manifest = write(tmp_path, SynthSpec(n=400, seed=3))
    ds = load_dataset(DataConfig(path=str(manifest), features=str(tmp_path / "features.npz")))
    samples = ds.samples()
    assert len(samples) == 400 and set(ds.splits) == {"train", "valid", "test"}
    y = np.array([s.label for s in samples])
    for mod in ("audio", "vision"):
        have = [s for s in samples if s.has(mod)]
        assert 0.8 * 400 < len(have) < 400  # some samples lack the modality
        x = np.stack([s.feature(mod) for s in have])
        yy = np.array([s.label for s in have])
        coef, *_ = np.linalg.lstsq(np.c_[x, np.ones(len(x))], yy, rcond=None)
        r = np.corrcoef(np.c_[x, np.ones(len(x))] @ coef, yy)[0, 1]
        assert 0.5 < r < 0.99, (mod, r)  # informative but noisy
    pos = np.array(["good" in s.text or "great" in s.text or "amazing" in s.text for s in samples])
    assert y[pos].mean() > 0.5 > y[~pos].mean() - 0.5
