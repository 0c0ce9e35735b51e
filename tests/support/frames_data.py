"""A small dataset of real media files written in code: JPEG frames drawn with PIL, and
audio clips (a wav written with the standard library, a FLAC written with PyAV)."""

from __future__ import annotations

import csv
import math
import struct
import wave
from pathlib import Path

from workbench.config import DataConfig

SPLITS = ["train", "train", "valid", "valid", "test", "test"]


def write_jpeg(path: Path, colour: tuple[int, int, int], size=(48, 40), mark: int = 0) -> Path:
    """A frame: a flat colour with a white bar at ``mark`` (so frames differ in content)."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", size, colour)
    ImageDraw.Draw(im).rectangle([mark * 6 % size[0], 4, mark * 6 % size[0] + 5, size[1] - 4],
                                 fill=(255, 255, 255))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format="JPEG", quality=90)
    return path


def write_wav(path: Path, freq: float, seconds: float = 0.5, rate: int = 16000) -> Path:
    n = int(seconds * rate)
    samples = [int(12000 * math.sin(2 * math.pi * freq * i / rate)) for i in range(n)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(struct.pack(f"<{n}h", *samples))
    return path


def write_flac(path: Path, freq: float, seconds: float = 0.5, rate: int = 44100) -> Path:
    """A stereo 44.1 kHz FLAC through PyAV (chat APIs do not take FLAC: it gets decoded)."""
    import av
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    tone = (12000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("flac", rate=rate, layout="stereo")
        frame = av.AudioFrame.from_ndarray(np.stack([tone, tone]).reshape(1, -1), format="s16",
                                           layout="stereo")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def frames_dataset(root: Path, frame_counts=(2, 2, 1, 2, 2, 1), audio: bool = False) -> DataConfig:
    """A manifest of ``len(frame_counts)`` utterances with that many frames each (and, with
    ``audio``, a wav per utterance, the last one a FLAC)."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, k in enumerate(frame_counts):
        colour = ((40 * i) % 256, (90 + 30 * i) % 256, (200 - 25 * i) % 256)
        frames = [write_jpeg(root / "frames" / f"u{i}_{j}.jpg", colour, mark=j + i) for j in range(k)]
        row = {"id": f"u{i}", "text": f"utterance {i} was {'good' if i % 2 else 'bad'}",
               "label": 1.5 if i % 2 else -1.5, "split": SPLITS[i % len(SPLITS)],
               "frames": ";".join(str(f.relative_to(root)) for f in frames)}
        if audio:
            last = i == len(frame_counts) - 1
            f = (write_flac(root / "audio" / f"u{i}.flac", 220 + 40 * i) if last
                 else write_wav(root / "audio" / f"u{i}.wav", 220 + 40 * i))
            row["audio"] = str(f.relative_to(root))
        rows.append(row)
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return DataConfig(path=str(manifest), frames_column="frames",
                      audio_file_column="audio" if audio else "", modalities=["text", "vision"])
