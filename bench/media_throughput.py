"""Throughput of media ingestion (decode + frames + eGeMAPS) at 1 and 2 processes.

Writes N synthetic 10-second mp4 clips (H.264 + AAC, 128 px, 15 fps: drawn faces and
voiced tones), then ingests them with ``workbench.data.ingest.ingest_media`` (3 frames per
clip, 16 kHz audio, eGeMAPSv02 functionals + LLDs, cues) into a fresh directory with 1
process and with 2. Prints clips per second of each, their ratio, and the share of the
workers' time in each part (decode video, write frames, decode audio, eGeMAPS).
Numbers on a shared machine are noisy; the ratio and the shares are the figures.

    python bench/media_throughput.py [N_CLIPS]
"""

from __future__ import annotations

import csv
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from common import loadavg

from workbench.config import DataConfig, MediaConfig, MediaJobConfig
from workbench.data.ingest import ingest_media
from workbench.data.synth_media import face_frame, voice, write_clip

SECONDS, FPS, SIZE = 10, 15, 128


def write_clips(root: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        z = float(rng.uniform(-3, 3))
        frames = [face_frame(z, k / FPS, SIZE) for k in range(SECONDS * FPS)]
        write_clip(root / f"clip_{i:03d}.mp4", frames, FPS, voice(z, SECONDS, 16_000, rng))
        rows.append({"id": f"clip_{i:03d}", "text": "a clip", "label": round(z, 2),
                     "split": "train", "video": f"clip_{i:03d}.mp4"})
    with (root / "manifest.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root / "manifest.csv"


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    tmp = Path(tempfile.mkdtemp())
    manifest = write_clips(tmp, n)
    data = DataConfig(path=str(manifest), video_file_column="video")
    rates: dict[int, float] = {}
    parts: Counter = Counter()
    for procs in (1, 2):
        report = ingest_media(MediaJobConfig(data=data, out=str(tmp / f"out{procs}"),
                                             media=MediaConfig(processes=procs)))
        assert report.done == n, report.errors
        rates[procs] = n / report.wall_s
        if procs == 1:
            parts = report.seconds
        print(f"{procs} process{'es' if procs > 1 else ''}: {n} clips of {SECONDS}s in "
              f"{report.wall_s:.1f}s = {rates[procs]:.2f} clips/s "
              f"({rates[procs] * SECONDS:.1f}x real time)")
    print(f"2 processes / 1 process: {rates[2] / rates[1]:.2f}x")
    total = sum(parts.values())
    print(f"work per clip (1 process, sum of the parts): {total / n:.2f}s")
    print("share of the clip time (1 process): " + ", ".join(
        f"{k} {parts[k] / total:.0%}" for k in ("decode_video", "frames", "decode_audio", "egemaps")))
    print(loadavg())


if __name__ == "__main__":
    main()
