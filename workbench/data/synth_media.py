"""Synthetic media: real video files whose pixels and sound follow a latent sentiment.

:func:`write_clip` writes one video file with PyAV (H.264 or MPEG-4 video, AAC or PCM
audio). :func:`write_media_dataset` (``workbench data synth --media``) writes a small
dataset of mp4 clips from the synthetic set's latent sentiment ``z``: each frame draws a
face whose mouth curves with ``z`` on a background whose warmth follows it, and the audio
is a voiced tone whose pitch, loudness and syllable rate rise with ``z`` plus noise (and a
speaker's own pitch), while the words carry ``z`` on only part of the clips. A manifest
names the clips (with ``start`` / ``end`` inside each file) and ``data.yaml`` reads it;
``workbench data media`` turns it into a dataset. It is synthetic: numbers on it say the
workbench runs, not how a method does on real data.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from workbench.data.synth import SynthSpec, generate

MEDIA_CONFIG_FILE = "data.yaml"


def write_clip(path: str | Path, frames: Iterable[np.ndarray], fps: int,
               audio: np.ndarray | None = None, rate: int = 16_000, *,
               video_codec: str = "libx264", audio_codec: str = "aac") -> Path:
    """Write ``frames`` (H x W x 3 uint8, even sides) and a mono float ``audio`` signal
    into one file (the container from the suffix: .mp4, .mkv, .avi, .webm)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = list(frames)
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as c:
        vs = c.add_stream(video_codec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        if video_codec == "libx264":
            vs.options = {"preset": "ultrafast", "g": str(fps)}
        ast = None
        if audio is not None:
            ast = c.add_stream(audio_codec, rate=rate, layout="mono")
        for i, img in enumerate(frames):
            fr = av.VideoFrame.from_ndarray(np.ascontiguousarray(img, dtype=np.uint8), format="rgb24")
            fr.pts = i
            fr.time_base = Fraction(1, fps)
            for pkt in vs.encode(fr):
                c.mux(pkt)
        for pkt in vs.encode(None):
            c.mux(pkt)
        if ast is not None:
            fmt = "fltp" if audio_codec == "aac" else "s16"
            step = 1024
            sig = np.clip(audio, -1, 1).astype(np.float32)
            for start in range(0, sig.size, step):
                chunk = sig[start:start + step]
                if fmt == "s16":
                    arr = (chunk * 32767).astype(np.int16).reshape(1, -1)
                else:
                    arr = chunk.reshape(1, -1)
                af = av.AudioFrame.from_ndarray(arr, format=fmt, layout="mono")
                af.sample_rate = rate
                af.pts = start
                af.time_base = Fraction(1, rate)
                for pkt in ast.encode(af):
                    c.mux(pkt)
            for pkt in ast.encode(None):
                c.mux(pkt)
    return path


def face_frame(z: float, t: float, size: int = 64) -> np.ndarray:
    """One drawn frame: a face whose mouth curves with ``z`` (up: positive) on a
    background from cool (negative) to warm (positive); ``t`` moves the head a little."""
    s = float(np.tanh(z / 1.5))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.empty((size, size, 3), np.float32)
    img[..., 0] = 0.5 + 0.35 * s
    img[..., 1] = 0.45
    img[..., 2] = 0.5 - 0.35 * s
    cx, cy = 0.5 + 0.04 * np.sin(2 * np.pi * t), 0.5
    face = (xx - cx) ** 2 + (yy - cy) ** 2 < 0.33 ** 2
    img[face] = (0.95, 0.85, 0.6)
    for ex in (-0.12, 0.12):
        img[(xx - cx - ex) ** 2 + (yy - cy + 0.1) ** 2 < 0.035 ** 2] = (0.1, 0.1, 0.1)
    mouth_y = cy + 0.15 - 0.6 * s * (xx - cx) ** 2 * 4 + 0.05 * s
    mouth = (np.abs(yy - mouth_y) < 0.025) & (np.abs(xx - cx) < 0.16) & face
    img[mouth] = (0.6, 0.1, 0.1)
    return (img * 255).astype(np.uint8)


def voice(z: float, seconds: float, rate: int, rng: np.random.Generator, *,
          pitch_shift: float = 0.0) -> np.ndarray:
    """A voiced tone: pitch (2 semitones per unit of ``z``), loudness (2 dB per unit) and
    syllable rate rise with ``z``; pauses between syllables lengthen as it falls.
    ``pitch_shift`` (semitones) moves the pitch independently of ``z``: a speaker's own."""
    n = int(seconds * rate)
    t = np.arange(n) / rate
    f0 = (140.0 * 2 ** ((2 * z + pitch_shift) / 12)
          * (1 + 0.03 * (1 + max(z, 0)) * np.sin(2 * np.pi * 3 * t)))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    tone = sum(np.sin(k * phase) / k for k in range(1, 6))
    syll = max(1.0, 3.0 + 0.6 * z)
    env = np.clip(np.sin(np.pi * syll * t) * 1.3, 0, 1) ** 0.7
    loud = 0.08 * 10 ** (z / 10)
    return (loud * tone * env + 0.002 * rng.normal(size=n)).astype(np.float32)


@dataclass
class MediaSynthSpec:
    n: int = 48
    """Clips (utterances)."""
    seconds: float = 2.0
    """Length of each clip."""
    fps: int = 8
    size: int = 64
    """Frame side in pixels."""
    clips_per_file: int = 2
    """Consecutive clips share one video file, cut by ``start`` / ``end`` (as MOSI does)."""
    seed: int = 0
    text_signal: float = 0.5
    """Probability that the words carry the sentiment (else neutral wording, and only the
    voice and the face tell it)."""
    valid: float = 0.25
    test: float = 0.25
    """Fractions of the clips in the valid and test splits (exact counts, at least one
    clip each; the rest train), drawn at random."""
    voice_noise: float = 0.8
    """Standard deviation of the sentiment the voice expresses around the label, in label
    units: each clip's voice follows ``z + noise``, so the voice alone cannot say ``z``
    exactly (0: it can)."""
    pitch_noise: float = 1.0
    """Standard deviation of each clip's speaker pitch, in semitones, independent of the
    sentiment (which moves it 2 semitones per unit)."""

    def __post_init__(self) -> None:
        if not (0 < self.valid and 0 < self.test and self.valid + self.test < 1):
            raise ValueError(f"MediaSynthSpec valid={self.valid}, test={self.test}: use "
                             "fractions above 0 that leave some clips to train on")


def _splits(n: int, spec: MediaSynthSpec, rng: np.random.Generator) -> list[str]:
    """``n`` split names in random order: round(valid * n) valid, round(test * n) test
    (each at least 1), the rest train."""
    n_valid = max(1, round(spec.valid * n))
    n_test = max(1, round(spec.test * n))
    names = np.array(["train"] * (n - n_valid - n_test) + ["valid"] * n_valid + ["test"] * n_test)
    return list(names[rng.permutation(n)])


def write_media_dataset(out_dir: str | Path, spec: MediaSynthSpec | None = None) -> Path:
    """Write ``videos/*.mp4``, ``manifest.csv`` (id, text, label, split, video, start, end)
    and ``data.yaml`` (naming the manifest beside it); return the config's path.

    The label is the latent sentiment ``z``; the words carry it on ``text_signal`` of the
    clips, the voice (pitch, loudness and syllable rate follow ``z`` plus ``voice_noise``,
    the pitch also a speaker's own offset) and the face on all of them: a student that hears
    the voice can do better than one that reads the words alone."""
    import yaml

    spec = spec or MediaSynthSpec()
    out = Path(out_dir)
    rows, _ = generate(SynthSpec(n=spec.n, seed=spec.seed, text_signal=spec.text_signal))
    rng = np.random.default_rng(spec.seed)
    for row, split in zip(rows, _splits(spec.n, spec, rng), strict=True):
        row["split"] = split
    rate = 16_000
    manifest_rows = []
    for f0 in range(0, spec.n, spec.clips_per_file):
        group = rows[f0:f0 + spec.clips_per_file]
        frames, audio = [], []
        name = f"videos/video_{f0 // spec.clips_per_file:04d}.mp4"
        for j, row in enumerate(group):
            z = float(row["label"])
            k = int(spec.seconds * spec.fps)
            frames += [face_frame(z, i / spec.fps, spec.size) for i in range(k)]
            heard = z + float(rng.normal(0, spec.voice_noise))
            audio.append(voice(heard, spec.seconds, rate, rng,
                               pitch_shift=float(rng.normal(0, spec.pitch_noise))))
            manifest_rows.append({**row, "video": name, "start": round(j * spec.seconds, 3),
                                  "end": round((j + 1) * spec.seconds, 3)})
        write_clip(out / name, frames, spec.fps, np.concatenate(audio), rate)
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["id", "text", "label", "split", "video", "start", "end"])
        w.writeheader()
        w.writerows(manifest_rows)
    cfg = {"name": "synth_media", "path": manifest.name, "video_file_column": "video",
           "modalities": ["text", "audio", "vision"], "task": "regression",
           "metric_set": "mosi", "label_range": [-3, 3]}
    config = out / MEDIA_CONFIG_FILE
    config.write_text("# Synthetic media (mp4 clips) written by `workbench data synth --media` "
                      "(not real data).\n# Ingest: workbench data media " + str(config)
                      + " --out DIR\n" + yaml.safe_dump(cfg, sort_keys=False))
    return config
