"""Media ingestion from real files: one long video cut into segments, a second container
and codec pair, an audio file, frame images, a spoken clip (espeak-ng), and bad media --
each bad clip one error row naming its id, the others done; resumable; stops loudly."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tests.support.media import (
    espeak,
    nearest_color,
    tone,
    write_corrupt,
    write_image_encoder,
    write_truncated,
    write_unknown_codec_wav,
    write_video,
)
from workbench.config import DataConfig, MediaConfig, MediaJobConfig
from workbench.data.ingest import ERRORS_FILE, MediaJobFailed, ingest_media
from workbench.data.media import wav_bytes
from workbench.data.store import MSADataset, file_sha256

GOOD = ["long_0", "long_1", "long_2", "mkv_clip", "wav_only", "images"]
BAD = {"corrupt": "cannot open", "truncated": "truncated", "no_audio": "no audio stream",
       "past_end": "past the end", "zero_len": "zero-length", "missing": "file not found",
       "odd_codec": "unsupported audio codec"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("media")
    long = write_video(root / "long.mp4", seconds=6, fps=10, freq=200.0)
    write_video(root / "clip.mkv", seconds=2, fps=10, video_codec="mpeg4",
                audio_codec="pcm_s16le", rate=22_050, freq=300.0)
    (root / "speech.wav").write_bytes(wav_bytes(tone(180.0, 1.5) * np.hanning(24_000)))
    from PIL import Image

    for i, c in enumerate([(250, 0, 0), (0, 0, 250)]):
        Image.new("RGB", (640, 480), c).save(root / f"img{i}.png")
    write_corrupt(root / "corrupt.mp4")
    write_truncated(long, root / "truncated.mp4", keep=0.25)
    write_video(root / "silent.mp4", seconds=2, audio=False)
    write_unknown_codec_wav(root / "odd.wav")
    rows = [
        ("long_0", "long.mp4", "", "", 0, 2, "train", 1.0),
        ("long_1", "long.mp4", "", "", 2, 4, "train", -1.0),
        ("long_2", "long.mp4", "", "", 4, 6, "valid", 2.0),
        ("mkv_clip", "clip.mkv", "", "", "", "", "test", 0.5),
        ("wav_only", "", "speech.wav", "", "", "", "train", -2.0),
        ("images", "", "", "img0.png;img1.png", "", "", "test", 0.0),
        ("corrupt", "corrupt.mp4", "", "", "", "", "train", 0.0),
        ("truncated", "truncated.mp4", "", "", 3, 5.5, "train", 0.0),
        ("no_audio", "silent.mp4", "", "", "", "", "train", 0.0),
        ("past_end", "long.mp4", "", "", 5, 9, "train", 0.0),
        ("zero_len", "long.mp4", "", "", 3, 3, "train", 0.0),
        ("missing", "nowhere.mp4", "", "", "", "", "train", 0.0),
        ("odd_codec", "", "odd.wav", "", "", "", "train", 0.0),
    ]
    with (root / "manifest.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "video", "audio", "frames", "start", "end", "split", "label", "text"])
        for r in rows:
            w.writerow([*r, f"clip {r[0]} was fine"])
    return root


def job(folder: Path, out: Path, **media) -> MediaJobConfig:
    data = DataConfig(path=str(folder / "manifest.csv"), video_file_column="video",
                      audio_file_column="audio", frames_column="frames")
    return MediaJobConfig(data=data, media=MediaConfig(**{"max_error_rate": 0.6, **media}),
                          out=str(out))


@pytest.fixture(scope="module")
def ingested(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "ds"
    report = ingest_media(job(folder, out, processes=2))
    return out, report


def test_each_bad_clip_is_one_error_row_and_the_others_are_done(ingested):
    out, report = ingested
    assert report.done == len(GOOD) and report.skipped == 0
    rows = [json.loads(line) for line in (out / ERRORS_FILE).read_text().splitlines()]
    assert [r["id"] for r in rows] == list(BAD)  # the manifest's order, whoever finished first
    for r in rows:
        assert BAD[r["id"]] in r["reason"], r
    ds = MSADataset.load(out)
    # per split (train, valid, test), in the manifest's order
    assert [s.id for s in ds.samples()] == ["long_0", "long_1", "wav_only", "long_2",
                                            "mkv_clip", "images"]


def test_samples_carry_frames_audio_and_lld_sequences(ingested, folder):
    out, _ = ingested
    ds = MSADataset.load(out)
    by_id = {s.id: s for s in ds.samples()}
    assert ds.info.feature_kind == {"audio": "sequence"} and ds.info.feature_dims == {"audio": 25}
    for sid in ("long_0", "long_1", "long_2"):
        s = by_id[sid]
        assert s.meta["segment"] == [float(sid[-1]) * 2, float(sid[-1]) * 2 + 2]
        assert len(s.media.frames) == 3 and all(Path(p).is_file() for p in s.media.frames)
        assert s.audio.shape[1] == 25 and 190 <= s.audio_length <= 201  # 2 s at 100 Hz
        assert len(s.meta["egemaps"]) == 88
        assert s.meta["source_video"] == str(folder / "long.mp4")
        assert s.meta["acoustic_cues_version"] == 1 and " and " in s.meta["pitch"]
        # frames follow the segment: colour of the second each was taken in
        from PIL import Image

        seconds = [nearest_color(Image.open(p)) for p in s.media.frames]
        start = int(sid[-1]) * 2
        assert seconds == [start, start + 1, start + 1] or seconds == [start, start, start + 1]
        assert all(Path(p).stem == file_sha256(p)[:32] for p in s.media.frames)
    wav = by_id["wav_only"]
    assert wav.media.frames == [] and wav.audio is not None and not wav.has("vision")
    images = by_id["images"]
    assert len(images.media.frames) == 2 and images.audio is None
    from PIL import Image

    assert max(Image.open(images.media.frames[0]).size) == 384  # resized to media.max_side
    mkv = by_id["mkv_clip"]
    assert Path(mkv.media.audio_file).is_file() and mkv.audio_length > 150


def test_a_rerun_skips_the_clips_done(ingested, folder):
    out, first = ingested
    fingerprint = MSADataset.load(out).fingerprint
    again = ingest_media(job(folder, out))
    assert again.done == 0 and again.skipped == len(GOOD) and len(again.errors) == len(BAD)
    assert MSADataset.load(out).fingerprint == fingerprint


def test_too_many_errors_stop_loudly_keeping_the_clips_done(folder, tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(MediaJobFailed, match="clips failed") as e:
        ingest_media(job(folder, out, max_error_rate=0.1))
    assert "rerun skips them" in str(e.value) and (out / ERRORS_FILE).is_file()
    assert e.value.exit_code == 1
    kept = list((out / "media" / "clips").glob("*.json"))
    assert kept  # what was done stays
    report = ingest_media(job(folder, out))
    assert report.skipped == len(kept) and report.done == len(GOOD) - len(kept)


def test_the_cli_ingests_and_lists_the_errors(folder, tmp_path):
    from typer.testing import CliRunner

    from workbench.cli import app

    out = tmp_path / "cli"
    res = CliRunner().invoke(app, ["data", "media", str(folder / "manifest.csv"),
                                   "video_file_column=video", "audio_file_column=audio",
                                   "frames_column=frames", "media.max_error_rate=0.6",
                                   "media.frames=2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "ingested 6 of 13 clips" in res.output
    for sid in BAD:
        assert sid in res.output
    assert all(len(s.media.frames) == 2 for s in MSADataset.load(out).samples() if s.id.startswith("long"))
    res = CliRunner().invoke(app, ["data", "media", str(folder / "manifest.csv"),
                                   "video_file_column=video", "media.max_error_rate=0.0",
                                   "--out", str(tmp_path / "strict")])
    assert res.exit_code == 1 and "clips failed" in res.output and "Traceback" not in res.output


def test_a_spoken_clip_from_espeak(tmp_path):
    wav = espeak(tmp_path / "spoken.wav", "honestly this movie was wonderful and I loved it")
    if wav is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    (tmp_path / "m.csv").write_text(f"id,text,label,split,audio\nspoken,wonderful,2,train,{wav}\n")
    out = tmp_path / "ds"
    ingest_media(MediaJobConfig(data=DataConfig(path=str(tmp_path / "m.csv"),
                                                audio_file_column="audio"), out=str(out)))
    s = MSADataset.load(out).samples()[0]
    import wave

    with wave.open(str(wav)) as w:
        seconds = w.getnframes() / w.getframerate()
    assert abs(s.audio_length - seconds * 100) <= 5
    from workbench.data.acoustic import PITCH, RATE, functional_names

    names = functional_names()
    assert s.meta["egemaps"][names.index(PITCH)] > 10  # voiced: a pitch was found
    assert s.meta["egemaps"][names.index(RATE)] > 0.5  # several voiced segments per second


def test_frame_embeddings_from_a_local_image_encoder(folder, tmp_path):
    enc = write_image_encoder(tmp_path / "clip-vision", hidden_size=32)
    (tmp_path / "m.csv").write_text("id,text,label,split,video,start,end\n"
                                    f"a,fine,1,train,{folder / 'long.mp4'},0,3\n"
                                    f"b,bad,-1,train,{folder / 'long.mp4'},3,6\n")
    cfg = MediaJobConfig(data=DataConfig(path=str(tmp_path / "m.csv"), video_file_column="video"),
                         media=MediaConfig(image_encoder=str(enc), audio=False, frames=3),
                         out=str(tmp_path / "ds"))
    report = ingest_media(cfg)
    ds = MSADataset.load(cfg.out)
    assert ds.info.feature_kind == {"vision": "sequence"} and ds.info.feature_dims == {"vision": 32}
    a, b = sorted(ds.samples(), key=lambda s: s.id)
    assert a.vision.shape == (3, 32) and a.vision_length == 3 and a.audio is None
    assert not np.allclose(a.vision, b.vision)  # different frames, different embeddings
    assert report.seconds["embed"] > 0
    again = ingest_media(cfg)
    assert again.seconds.get("embed", 0) < report.seconds["embed"]  # stored per clip
    np.testing.assert_array_equal(sorted(MSADataset.load(cfg.out).samples(), key=lambda s: s.id)[0].vision,
                                  a.vision)


def test_data_synth_media_writes_real_clips_cut_by_segments(tmp_path):
    import av
    from typer.testing import CliRunner

    from workbench.cli import app

    res = CliRunner().invoke(app, ["data", "synth", "--media", "--n", "20", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    videos = sorted((tmp_path / "videos").glob("*.mp4"))
    assert len(videos) == 10
    with av.open(str(videos[0])) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert c.streams.audio[0].codec_context.name == "aac"
        assert c.duration / 1e6 == pytest.approx(4.0, abs=0.1)  # two 2-second clips
    rows = list(csv.DictReader((tmp_path / "manifest.csv").open()))
    assert [(r["start"], r["end"]) for r in rows[:2]] == [("0.0", "2.0"), ("2.0", "4.0")]
    from workbench.config import load_config

    cfg = load_config(DataConfig, tmp_path / "data.yaml")
    assert cfg.video_file_column == "video"
