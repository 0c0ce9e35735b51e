"""Decoding one clip (real files written with PyAV), eGeMAPS and the acoustic cues."""

from __future__ import annotations

import io
import wave

import numpy as np
import pytest

from tests.support.media import nearest_color, tone, write_video
from workbench.data.acoustic import (
    LOUDNESS,
    PITCH,
    PITCH_VAR,
    acoustic_cues,
    cue_thresholds,
    egemaps,
    functional_names,
    lld_names,
)
from workbench.data.media import (
    ClipError,
    decode_audio,
    decode_frames,
    resolve_segment,
    segment_times,
    wav_bytes,
    write_jpeg,
)


def test_segment_times_are_centres_of_equal_parts():
    assert segment_times(2.0, 5.0, 3) == pytest.approx([2.5, 3.5, 4.5])
    assert segment_times(0.0, 1.0, 1) == pytest.approx([0.5])


@pytest.mark.parametrize(("start", "end", "words"), [
    (3.0, 3.0, "zero-length"), (4.0, 2.0, "zero-length"), (7.0, 8.0, "starts past the end"),
    (5.0, 6.5, "ends past the end"), (-1.0, 2.0, "negative"),
])
def test_resolve_segment_refuses_bad_segments(start, end, words):
    with pytest.raises(ClipError, match=words):
        resolve_segment(start, end, 6.0, slack=0.1)


def test_resolve_segment_defaults_to_the_whole_file_and_allows_a_frame_of_slack():
    assert resolve_segment(None, None, 6.0, slack=0.1) == (0.0, 6.0)
    assert resolve_segment(1.0, 6.05, 6.0, slack=0.1) == (1.0, 6.0)


@pytest.mark.parametrize(("suffix", "vcodec", "acodec"), [(".mp4", "libx264", "aac"),
                                                           (".mkv", "mpeg4", "pcm_s16le")])
def test_frames_are_sampled_inside_the_segment(tmp_path, suffix, vcodec, acodec):
    path = write_video(tmp_path / f"v{suffix}", seconds=6, fps=10, video_codec=vcodec,
                       audio_codec=acodec)
    images, seg = decode_frames(str(path), 2.0, 5.0, 3)
    assert seg == (2.0, 5.0)
    assert [nearest_color(im) for im in images] == [2, 3, 4]  # seconds 2, 3 and 4
    whole, seg = decode_frames(str(path), None, None, 2)
    assert seg[1] == pytest.approx(6.0, abs=0.15)
    assert [nearest_color(im) for im in whole] == [1, 4]  # 1.5 s and 4.5 s


def test_audio_is_cut_and_resampled_to_16k_mono(tmp_path):
    path = write_video(tmp_path / "v.mkv", seconds=4, fps=5, freq=440.0, rate=22_050,
                       video_codec="mpeg4", audio_codec="pcm_s16le")
    signal, seg = decode_audio(str(path), 1.0, 3.0)
    assert seg == (1.0, 3.0)
    assert signal.dtype == np.float32 and abs(signal.size - 32_000) <= 320
    spectrum = np.abs(np.fft.rfft(signal))
    assert np.fft.rfftfreq(signal.size, 1 / 16_000)[spectrum.argmax()] == pytest.approx(440, abs=3)


def test_a_video_without_audio_is_a_clip_error(tmp_path):
    path = write_video(tmp_path / "silent.mp4", seconds=2, audio=False)
    with pytest.raises(ClipError, match="no audio stream"):
        decode_audio(str(path), None, None)


def test_a_corrupt_file_is_a_clip_error(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00not a video at all" * 50)
    with pytest.raises(ClipError, match="cannot open"):
        decode_frames(str(bad), None, None, 3)


def test_jpegs_are_named_by_their_content(tmp_path):
    from PIL import Image

    im = Image.new("RGB", (200, 100), (10, 200, 30))
    a = write_jpeg(im, tmp_path, max_side=50, quality=90)
    b = write_jpeg(im.copy(), tmp_path, max_side=50, quality=90)
    c = write_jpeg(Image.new("RGB", (200, 100), (200, 10, 30)), tmp_path, max_side=50, quality=90)
    assert a == b and a != c
    with Image.open(a) as back:
        assert back.size == (50, 25)
    import hashlib

    assert a.stem == hashlib.sha256(a.read_bytes()).hexdigest()[:32]


def test_wav_bytes_round_trip():
    sig = tone(300.0, 0.5)
    with wave.open(io.BytesIO(wav_bytes(sig))) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16_000)
        back = np.frombuffer(w.readframes(w.getnframes()), "<i2") / 32767
    np.testing.assert_allclose(back, sig, atol=1e-4)


def test_egemaps_shapes_and_pitch_follow_the_tone():
    assert len(functional_names()) == 88 and len(lld_names()) == 25
    names = functional_names()
    pitches = []
    for freq in (120.0, 240.0):
        func, lld = egemaps(tone(freq, 1.0) * np.hanning(16_000).astype(np.float32) * 2)
        assert func.shape == (88,) and lld.shape[1] == 25
        assert 90 <= lld.shape[0] <= 101  # 100 Hz
        pitches.append(func[names.index(PITCH)])
    # an octave is 12 semitones
    assert pitches[1] - pitches[0] == pytest.approx(12.0, abs=1.0)


def test_acoustic_cues_are_relative_to_the_dataset():
    names = functional_names()
    rng = np.random.default_rng(0)
    table = rng.normal(size=(30, len(names)))
    thresholds = cue_thresholds(table, names)
    lo_hi = {k: v for k, v in thresholds.items()}
    clip = np.zeros(len(names))
    clip[names.index(PITCH)] = lo_hi["pitch"][1] + 1
    clip[names.index(PITCH_VAR)] = lo_hi["pitch_var"][1] + 1
    clip[names.index(LOUDNESS)] = lo_hi["loudness"][0] - 1
    cues = acoustic_cues(clip, names, thresholds)
    assert cues["pitch"] == "high and varied"
    assert cues["loudness"] == "soft"
    assert set(cues) == {"pitch", "loudness", "speaking_rate", "pauses"}
    # the same clip against louder data reads differently: cues are relative
    shifted = table.copy()
    shifted[:, names.index(LOUDNESS)] -= 10
    assert acoustic_cues(clip, names, cue_thresholds(shifted, names))["loudness"] == "loud"


def test_one_pass_egemaps_equals_opensmiles_own_extraction_per_level():
    import opensmile

    rng = np.random.default_rng(0)
    sig = (tone(200.0, 2.0) * (1 + 0.5 * np.sin(np.arange(32_000) / 3000))
           + 0.01 * rng.normal(size=32_000)).astype(np.float32)
    func, lld = egemaps(sig)
    fs = opensmile.FeatureSet.eGeMAPSv02
    ref_f = opensmile.Smile(feature_set=fs, feature_level=opensmile.FeatureLevel.Functionals
                            ).process_signal(sig, 16_000).to_numpy().reshape(-1)
    ref_l = opensmile.Smile(feature_set=fs, feature_level=opensmile.FeatureLevel.LowLevelDescriptors
                            ).process_signal(sig, 16_000).to_numpy()
    np.testing.assert_allclose(func, ref_f, rtol=1e-6)
    np.testing.assert_allclose(lld, ref_l, rtol=1e-6)
