"""From a folder of mp4 files to an evaluated student, through three teachers of media:
media ingestion (frames, 16 kHz audio, eGeMAPS LLD, acoustic cues) -> caching jobs with
(a) Gemma 3 270M through hf_local hearing the acoustic cues in its prompt, (b) the tiny
vision-language model through hf_local seeing the frames, (c) an OpenAI-compatible server
on loopback sent the frames as image parts and the audio as input_audio parts ->
distillation on the LLD sequences (Gemma's soft labels, the VLM's descriptions for the
prompted network) -> evaluation with the missing-rate sweep."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest

from tests.support.distill import distill_cfg
from tests.support.fake_openai import FakeOpenAI
from tests.support.teacher_env import api_teacher, run_job
from tests.support.tiny_vlm import TOKENS_PER_IMAGE, build_tiny_vlm
from workbench.cache.store import CacheStore
from workbench.config import (
    CacheConfig,
    DataConfig,
    MediaConfig,
    MediaJobConfig,
    TeacherConfig,
    load_config,
)
from workbench.data.ingest import ingest_media
from workbench.data.store import MSADataset
from workbench.data.synth_media import MediaSynthSpec, write_media_dataset

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gemma():
    from workbench.models import gemma_available

    ok, why = gemma_available()
    if not ok:
        pytest.skip(f"Gemma 3 270M: {why}")
    return load_config(TeacherConfig, REPO / "configs" / "teachers" / "gemma3_270m_cpu.yaml",
                       ["num_threads=1"])


def test_mp4_folder_to_evaluated_student_through_three_media_teachers(tmp_path, gemma, one_thread):
    from eval.evaluate import evaluate_checkpoint
    from eval.options import EvalOptions
    from students.trainer import train

    # media ingestion from real mp4 files (H.264 + AAC, clips cut by start/end)
    src = write_media_dataset(tmp_path / "src", MediaSynthSpec(n=20, seconds=1.0, fps=6, size=32))
    assert len(list((tmp_path / "src").rglob("*.mp4"))) >= 1
    out = tmp_path / "ds"
    report = ingest_media(MediaJobConfig(data=load_config(DataConfig, src), out=str(out),
                                         media=MediaConfig(frames=2)))
    assert report.ok == 20 and not report.errors
    ds = MSADataset.load(out)
    samples = {s.id: s for s in ds.samples()}
    assert ds.info.feature_kind == {"audio": "sequence"}
    assert all(len(s.media.frames) == 2 and s.media.audio_file for s in samples.values())
    data = DataConfig(path=str(out))

    # (a) Gemma 3 270M hears the voice through the acoustic cues (on half the train clips:
    # the student reads soft labels where it has them)
    cache = tmp_path / "cache"
    a = run_job(gemma, data, cache, template="sentiment_polarity", splits=["train"], shard="0/2",
                ccfg=CacheConfig(dir=str(cache), template="sentiment_polarity",
                                 cue_fields=["acoustic"], max_error_rate=0.2))
    # (b) the tiny VLM sees the frames (descriptions for the prompted network)
    b = run_job(TeacherConfig(backend="hf_local", model=str(build_tiny_vlm(tmp_path / "vlm")),
                              api="chat", device="cpu", max_tokens=6, batch_size=8),
                data, cache, template="context_aware", splits=["train", "valid"])
    with CacheStore(cache) as store:
        a_out, b_out = store.current(a.job_id), store.current(b.job_id)
        a_req = [store.request(k) for k in a.keys]
        b_req = [store.request(k) for k in b.keys]
    assert len(a_out) >= 4 and sum(o.ok for o in a_out.values()) >= 0.9 * len(a_out)
    assert all("pitch:" in r["prompt"] and "loudness:" in r["prompt"] for r in a_req)
    assert all(r["messages"][1]["content"].count("pitch:") == 0 for r in a_req
               if isinstance(r["messages"][1]["content"], list))  # cues are text, not media
    assert all(o.ok and o.description for o in b_out.values())
    assert all(o.tokens_in > 2 * TOKENS_PER_IMAGE for o in b_out.values())  # both frames went in
    assert all(sum(p["type"] == "image_url" for p in r["messages"][1]["content"]) == 2 for r in b_req)

    # (c) an OpenAI-compatible server gets the frames and the audio themselves
    with FakeOpenAI() as srv:
        c = run_job(api_teacher(srv.base_url, api="chat", send_audio=True), data,
                    tmp_path / "cache-api", template="sentiment_polarity", splits=["test"])
        bodies = list(srv.bodies)
    assert c.report.ok == c.report.sent == len(bodies) > 0
    test_ids = [s for s in samples.values() if s.split == "test"]
    for s in test_ids:
        [body] = [b for b in bodies if f'"{s.text}"' in b["messages"][-1]["content"][0]["text"]]
        parts = body["messages"][-1]["content"]
        assert [p["image_url"]["url"] for p in parts if p["type"] == "image_url"] == [
            "data:image/jpeg;base64," + base64.b64encode(Path(f).read_bytes()).decode()
            for f in s.media.frames]
        [audio] = [p["input_audio"] for p in parts if p["type"] == "input_audio"]
        assert audio["format"] == "wav"
        assert base64.b64decode(audio["data"]) == Path(s.media.audio_file).read_bytes()

    # distillation on the LLD sequences, with Gemma's soft labels and the VLM's descriptions
    cfg = distill_cfg(tmp_path / "run", {"path": str(out), "name": "synth_media"},
                      "train.epochs=1", f"signals.cache_dir={cache}",
                      "signals.soft_label_template=sentiment_polarity",
                      "train.privileged.enabled=true", "signals.min_ok_fraction=0.4")
    best = train(cfg)
    from students.checkpoint import load_checkpoint
    from students.encoders import SequenceEncoder

    model, _, _ = load_checkpoint(best)
    assert isinstance(model.encoders["audio"], SequenceEncoder)
    ev = evaluate_checkpoint(best, EvalOptions(missing_rates=[0.0, 1.0], seeds=[1], patterns=None,
                                               cost=False, device="cpu"))
    assert ev.modalities == ["text", "audio"]
    assert np.isfinite(ev.metrics["mae"]) and sorted(ev.sweep) == [0.0, 1.0]
