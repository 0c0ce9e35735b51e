"""A student on media-derived data: mp4 clips -> eGeMAPS LLD and frame-embedding
sequences -> sequence encoders with padding masks, LNLN missing-modality training, and the
missing-rate sweep at evaluation, unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.distill import distill_cfg
from tests.support.media import write_image_encoder
from workbench.config import DataConfig, MediaConfig, MediaJobConfig, load_config
from workbench.data.ingest import ingest_media
from workbench.data.store import MSADataset
from workbench.data.synth_media import MediaSynthSpec, write_media_dataset


@pytest.fixture(scope="module")
def media_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth_media")
    enc = write_image_encoder(root / "clip-vision", hidden_size=16)
    # a voice that follows the label exactly (the demo's default adds noise to it)
    config = write_media_dataset(root / "src", MediaSynthSpec(n=24, seconds=1.0, fps=6, size=32,
                                                              voice_noise=0, pitch_noise=0))
    out = root / "ds"
    ingest_media(MediaJobConfig(data=load_config(DataConfig, config), out=str(out),
                                media=MediaConfig(frames=3, image_encoder=str(enc))))
    return out


def test_ingested_synthetic_clips_follow_the_latent_sentiment(media_data):
    ds = MSADataset.load(media_data)
    assert ds.info.feature_kind == {"audio": "sequence", "vision": "sequence"}
    samples = ds.samples()
    assert all(s.vision_length == 3 and s.audio_length > 80 for s in samples)
    # the synthetic voice's pitch rises with the label; the cue words say so
    from workbench.data.acoustic import PITCH, functional_names

    i = functional_names().index(PITCH)
    labels = np.array([s.label for s in samples])
    pitch = np.array([s.meta["egemaps"][i] for s in samples])
    assert np.corrcoef(labels, pitch)[0, 1] > 0.9
    lowest = min(samples, key=lambda s: s.label)
    highest = max(samples, key=lambda s: s.label)
    assert lowest.meta["pitch"].startswith("low") and highest.meta["pitch"].startswith("high")
    train = np.concatenate([s.audio for s in samples if s.split == "train"])
    np.testing.assert_allclose(train.mean(0), 0, atol=1e-4)  # standardised on train


def test_a_student_trains_on_lld_and_frame_sequences_and_sweeps(media_data, tmp_path):
    from eval.evaluate import evaluate_checkpoint
    from eval.options import EvalOptions
    from students.checkpoint import load_checkpoint
    from students.encoders import SequenceEncoder
    from students.trainer import train

    cfg = distill_cfg(tmp_path / "run", {"path": str(media_data), "name": "synth_media"},
                      "train.epochs=1", "train.missing.enabled=true", "train.batch_size=8")
    best = train(cfg)
    model, _, _ = load_checkpoint(best)
    encoders = {m: type(model.encoders[m]) for m in ("audio", "vision")}
    assert encoders == {"audio": SequenceEncoder, "vision": SequenceEncoder}
    ev = evaluate_checkpoint(best, EvalOptions(missing_rates=[0.0, 0.5, 1.0], seeds=[1, 2],
                                               patterns=None, cost=False, device="cpu"))
    assert ev.modalities == ["text", "audio", "vision"]
    assert sorted(ev.sweep) == [0.0, 0.5, 1.0] and all(len(v) == 2 for v in ev.sweep.values())
    assert {"no audio", "no vision"} <= set(ev.conditions)
    for metrics in ev.conditions.values():
        assert np.isfinite(metrics["mae"])
