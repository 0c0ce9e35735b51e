"""Decoding one clip with PyAV: frames sampled inside a segment, audio at 16 kHz mono.

Every way a clip can fail (corrupt or truncated file, no audio or video stream, a segment
outside the file, zero length, an unsupported codec, an implausible sample rate, an audio
segment too long) raises :class:`ClipError` with a plain reason, which the ingestion job
records as that clip's error row.

Audio decoding is bounded in memory: the source's sample rate must lie in
``[MIN_SOURCE_RATE, MAX_SOURCE_RATE]`` (1 kHz to 768 kHz: below, a header claiming e.g.
1 Hz makes a few hundred KB of samples last days, and resampling them to 16 kHz asks for
gigabytes; above, no real recorder writes), the segment may last at most ``MAX_AUDIO_S``
seconds, and the 16 kHz output buffer is allocated once, at the segment's size, before
decoding starts.
"""

from __future__ import annotations

import hashlib
import io
import math
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from workbench.io import atomic_write_bytes

SAMPLE_RATE = 16_000
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".m4a", ".ogg", ".aac")
MIN_AUDIO_S = 0.1
"""Audio shorter than this (after cutting the segment) is a zero-length clip."""
MIN_SOURCE_RATE = 1_000
MAX_SOURCE_RATE = 768_000
"""A source sample rate outside ``[MIN_SOURCE_RATE, MAX_SOURCE_RATE]`` Hz is refused."""
MAX_AUDIO_S = 3_600.0
"""The longest audio segment one clip may have (one hour: 230 MB of 16 kHz float32)."""


class ClipError(Exception):
    """One clip cannot be ingested; ``str(e)`` is the reason recorded for it."""


@dataclass
class ClipSpec:
    """What one manifest row asks for."""

    id: str
    video: str | None = None
    audio: str | None = None
    """An audio file; when None and ``video`` is set, the video's audio stream."""
    images: list[str] = field(default_factory=list)
    """Frame images given directly (used instead of decoding video frames)."""
    start: float | None = None
    end: float | None = None

    def sources(self) -> list[str]:
        return [p for p in (self.video, self.audio) if p] + list(self.images)


def segment_times(start: float, end: float, n: int) -> list[float]:
    """``n`` instants spread uniformly inside ``[start, end)`` (centres of n equal parts)."""
    step = (end - start) / n
    return [start + (k + 0.5) * step for k in range(n)]


def _open(path: str):
    import av

    if not Path(path).is_file():
        raise ClipError(f"file not found: {path}")
    try:
        return av.open(path)
    except av.FFmpegError as e:
        raise ClipError(f"cannot open {Path(path).name} (corrupt or not a media file): {e}") from None


def _stream_duration(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None


def _check_codec(stream, kind: str, path: str) -> None:
    if stream.codec_context is None or not stream.codec_context.name:
        raise ClipError(f"unsupported {kind} codec in {Path(path).name}")


def resolve_segment(start: float | None, end: float | None, duration: float | None,
                    slack: float) -> tuple[float, float]:
    """The segment ``[start, end]`` checked against the file's duration (``slack`` seconds
    of tolerance at the end, e.g. one frame)."""
    s = 0.0 if start is None else float(start)
    if s < 0:
        raise ClipError(f"segment start {s:g}s is negative")
    if end is None:
        if duration is None:
            raise ClipError("the file does not say its duration; give an end time")
        e = duration
    else:
        e = float(end)
    if e <= s:
        raise ClipError(f"zero-length segment: start {s:g}s, end {e:g}s")
    if duration is not None:
        if s >= duration:
            raise ClipError(f"segment [{s:g}s, {e:g}s] starts past the end of the file "
                            f"({duration:.3f}s)")
        if e > duration + slack:
            raise ClipError(f"segment [{s:g}s, {e:g}s] ends past the end of the file "
                            f"({duration:.3f}s)")
        e = min(e, duration)
    return s, e


def decode_frames(path: str, start: float | None, end: float | None, n: int):
    """``n`` PIL images sampled uniformly inside the segment, and the segment used."""
    import av

    with _open(path) as container:
        if not container.streams.video:
            raise ClipError(f"no video stream in {Path(path).name}")
        vs = container.streams.video[0]
        _check_codec(vs, "video", path)
        rate = float(vs.average_rate) if vs.average_rate else 25.0
        seg = resolve_segment(start, end, _stream_duration(container, vs), slack=1.5 / rate)
        targets = segment_times(seg[0], seg[1], n)
        picked = []
        prev = None
        try:
            if seg[0] > 0:
                container.seek(int(seg[0] / vs.time_base), stream=vs, backward=True)
            for frame in container.decode(vs):
                t = frame.time
                if t is None:
                    continue
                while len(picked) < n and t >= targets[len(picked)]:
                    tt = targets[len(picked)]
                    best = frame if prev is None or abs(t - tt) <= abs(prev[1] - tt) else prev[0]
                    picked.append(best.to_image())
                if len(picked) == n:
                    break
                prev = (frame, t)
        except av.FFmpegError as e:
            raise ClipError(f"video of {Path(path).name} cannot be decoded (truncated or "
                            f"corrupt): {e}") from None
        if len(picked) < n and prev is not None and prev[1] >= seg[0] - 1.0 / rate:
            picked += [prev[0].to_image()] * (n - len(picked))  # the last frame of the file
        if len(picked) < n:
            raise ClipError(f"no video frames decoded in [{seg[0]:g}s, {seg[1]:g}s] of "
                            f"{Path(path).name} (truncated?)")
    return picked, seg


def _check_rate(stream, path: str) -> None:
    rate = stream.codec_context.sample_rate or stream.rate
    name = Path(path).name
    if not rate:
        raise ClipError(f"the audio stream of {name} does not say its sample rate (damaged "
                        "header?); re-encode it, e.g. `ffmpeg -i IN -ar 16000 OUT.wav`, or "
                        "remove the row")
    if not MIN_SOURCE_RATE <= rate <= MAX_SOURCE_RATE:
        raise ClipError(f"the audio of {name} claims a sample rate of {rate} Hz, outside "
                        f"{MIN_SOURCE_RATE}-{MAX_SOURCE_RATE} Hz (a damaged or forged "
                        "header); re-encode it at a real rate, e.g. "
                        "`ffmpeg -i IN -ar 16000 OUT.wav`, or remove the row")


def _check_length(seg: tuple[float, float], path: str) -> None:
    if seg[1] - seg[0] > MAX_AUDIO_S:
        raise ClipError(f"the audio segment [{seg[0]:g}s, {seg[1]:g}s] of {Path(path).name} "
                        f"lasts {seg[1] - seg[0]:.0f}s, more than the {MAX_AUDIO_S:g}s one "
                        "clip may have; cut it into clips with start / end columns "
                        "(media.start_column, media.end_column)")


class _SegmentBuffer:
    """The 16 kHz samples of one segment, written into a buffer allocated once at the
    segment's size; samples before the segment or past its end are dropped."""

    def __init__(self, seg: tuple[float, float]) -> None:
        self.seg = seg
        self.out = np.empty(int(math.ceil((seg[1] - seg[0]) * SAMPLE_RATE)) + 1, np.float32)
        self.lo = self.hi = 0
        self.pos: int | None = None
        """Samples seen since the first decoded frame (None before it)."""
        self.filled = 0

    def start(self, first: float) -> None:
        """Place the segment relative to the time of the first decoded frame."""
        self.lo = max(0, int(round((self.seg[0] - first) * SAMPLE_RATE)))
        self.hi = max(self.lo, int(round((self.seg[1] - first) * SAMPLE_RATE)))
        self.hi = min(self.hi, self.lo + self.out.size)
        self.pos = 0

    @property
    def full(self) -> bool:
        return self.pos is not None and self.pos >= self.hi

    def add(self, frame) -> None:
        x = frame.to_ndarray().reshape(-1)
        a, b = max(self.lo, self.pos), min(self.hi, self.pos + x.size)
        if b > a:
            self.out[a - self.lo:b - self.lo] = x[a - self.pos:b - self.pos]
            self.filled = b - self.lo
        self.pos += x.size

    def signal(self) -> np.ndarray:
        return self.out[:self.filled]


def decode_audio(path: str, start: float | None, end: float | None) -> tuple[np.ndarray, tuple[float, float]]:
    """The segment's audio as float32 mono at 16 kHz, and the segment used."""
    import av

    with _open(path) as container:
        if not container.streams.audio:
            raise ClipError(f"no audio stream in {Path(path).name}")
        st = container.streams.audio[0]
        _check_codec(st, "audio", path)
        _check_rate(st, path)
        seg = resolve_segment(start, end, _stream_duration(container, st), slack=0.05)
        _check_length(seg, path)
        buf = _SegmentBuffer(seg)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        try:
            if seg[0] > 0:
                container.seek(int(seg[0] / st.time_base), stream=st, backward=True)
            for frame in container.decode(st):
                if buf.pos is None:
                    buf.start(frame.time if frame.time is not None else 0.0)
                for rf in resampler.resample(frame):
                    buf.add(rf)
                if buf.full or (frame.time is not None and frame.time > seg[1]):
                    break
            if buf.pos is not None and not buf.full:
                for rf in resampler.resample(None):
                    buf.add(rf)
        except av.FFmpegError as e:
            raise ClipError(f"audio of {Path(path).name} cannot be decoded (truncated or "
                            f"corrupt): {e}") from None
    signal = buf.signal()
    if signal.size < MIN_AUDIO_S * SAMPLE_RATE:
        raise ClipError(f"zero-length audio: {signal.size / SAMPLE_RATE:.3f}s decoded in "
                        f"[{seg[0]:g}s, {seg[1]:g}s] of {Path(path).name}")
    return signal, seg


def load_image(path: str):
    from PIL import Image, UnidentifiedImageError

    if not Path(path).is_file():
        raise ClipError(f"file not found: {path}")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise ClipError(f"cannot read image {Path(path).name}: {e}") from None


def write_jpeg(image, out_dir: Path, max_side: int, quality: int) -> Path:
    """Resize to ``max_side`` and write as ``<sha256 of the bytes>.jpg`` (content-addressed:
    the same pixels give the same file, and the name is the hash the cache keys use)."""
    from PIL import Image

    im = image.convert("RGB")
    if max(im.size) > max_side:
        scale = max_side / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                       Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    data = buf.getvalue()
    path = out_dir / f"{hashlib.sha256(data).hexdigest()[:32]}.jpg"
    if not path.exists():
        atomic_write_bytes(path, data)
    return path


def wav_bytes(signal: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    """16-bit PCM mono WAV of a float signal in [-1, 1]."""
    pcm = (np.clip(signal, -1.0, 1.0) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()
