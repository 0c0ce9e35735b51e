"""Small real media files for the tests, written with PyAV: videos whose colour changes
every second (so a sampled frame says when it was taken), tones of known pitch, and
broken files (corrupt, truncated, without audio); and a tiny local image encoder for the
frame embeddings."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

from workbench.data.synth_media import write_clip

COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255),
          (255, 255, 255), (0, 0, 0), (128, 128, 128), (255, 128, 0)]


def second_frames(seconds: int, fps: int, size: int = 32) -> list[np.ndarray]:
    """Frames of a flat colour that changes each second (``COLORS[second]``)."""
    return [np.full((size, size, 3), COLORS[(i // fps) % len(COLORS)], np.uint8)
            for i in range(seconds * fps)]


def tone(freq: float, seconds: float, rate: int = 16_000, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def nearest_color(image) -> int:
    """Index in ``COLORS`` of an image's mean colour."""
    mean = np.asarray(image.convert("RGB"), dtype=np.float32).reshape(-1, 3).mean(0)
    return int(np.argmin([np.sum((mean - np.array(c)) ** 2) for c in COLORS]))


def write_video(path: Path, seconds: int = 6, fps: int = 10, *, audio: bool = True,
                freq: float = 220.0, rate: int = 16_000, video_codec: str = "libx264",
                audio_codec: str = "aac") -> Path:
    return write_clip(path, second_frames(seconds, fps), fps,
                      tone(freq, seconds, rate) if audio else None, rate,
                      video_codec=video_codec, audio_codec=audio_codec)


def write_corrupt(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    return path


def write_truncated(src: Path, path: Path, keep: float = 0.3) -> Path:
    data = src.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def write_unknown_codec_wav(path: Path) -> Path:
    """A WAV whose format tag names a codec FFmpeg has no decoder for."""
    import struct

    data = bytes(16_000)
    fmt = struct.pack("<HHIIHH", 0x9999, 1, 16_000, 32_000, 2, 16)
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE"
                     + b"fmt " + struct.pack("<I", len(fmt)) + fmt
                     + b"data" + struct.pack("<I", len(data)) + data)
    return path


def espeak(path: Path, text: str) -> Path | None:
    """A spoken clip from espeak-ng (None where it is not installed)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        return None
    subprocess.run([exe, "-w", str(path), text], check=True, capture_output=True)
    return path


def write_image_encoder(path: Path, hidden_size: int = 32) -> Path:
    """A tiny CLIP vision encoder (random weights, ``hidden_size``-dim embeddings of 32 px
    images) saved with its image processor, for ``media.image_encoder``."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    CLIPVisionModel(CLIPVisionConfig(hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                                     num_hidden_layers=1, num_attention_heads=2, image_size=32,
                                     patch_size=8)
                    ).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
                       ).save_pretrained(path)
    return path
