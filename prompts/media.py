"""Media in requests: the ``sha256:`` references a rendered request carries, checked
against the files, and turned into what chat APIs take (base64 data URLs for images,
base64 audio for ``input_audio`` parts)."""

from __future__ import annotations

import base64
import mimetypes
from pathlib import Path
from typing import Any

from prompts.template import TemplateError
from workbench.data.store import file_sha256

MEDIA_URL_PREFIX = "sha256:"


def media_file(media: dict[str, str], ref: str) -> str:
    """The file behind a ``sha256:`` reference, checked to still hold the rendered content."""
    h = ref[len(MEDIA_URL_PREFIX):] if ref.startswith(MEDIA_URL_PREFIX) else ref
    path = media.get(h)
    if path is None:
        raise TemplateError(f"media reference {ref!r} is not among the request's media files")
    if file_sha256(path) != h:
        raise TemplateError(f"media file {path} changed since it was rendered; rerun the job")
    return path


def _data_url(path: str) -> str:
    mime = mimetypes.guess_type(path)[0] or "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(Path(path).read_bytes()).decode()


AUDIO_AS_IS = {".wav": "wav", ".mp3": "mp3"}
"""Audio formats chat APIs take in ``input_audio`` parts; other files are decoded to wav."""


def audio_format(path: str) -> str:
    """The ``input_audio`` format a file is sent as."""
    return AUDIO_AS_IS.get(Path(path).suffix.lower(), "wav")


def audio_bytes(path: str) -> bytes:
    """The file's bytes when chat APIs take its format; else its audio as 16 kHz mono wav."""
    if Path(path).suffix.lower() in AUDIO_AS_IS:
        return Path(path).read_bytes()
    import io
    import wave

    import av
    import numpy as np

    try:
        with av.open(path) as container:
            stream = next((s for s in container.streams if s.type == "audio"), None)
            if stream is None:
                raise TemplateError(f"media file {path} has no audio stream")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
            chunks = [f.to_ndarray().reshape(-1) for frame in container.decode(stream)
                      for f in resampler.resample(frame)]
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    except av.error.FFmpegError as e:
        raise TemplateError(f"media file {path}: cannot decode its audio ({e})") from None
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.concatenate(chunks).astype("<i2").tobytes() if chunks else b"")
    return buf.getvalue()


def materialize_messages(messages: list[dict[str, Any]], media: dict[str, str]) -> list[dict[str, Any]]:
    """Messages with ``sha256:`` references replaced by the files' content: image URLs by
    base64 data URLs, ``input_audio`` data by the base64 of the audio (see audio_bytes)."""
    out = []
    for m in messages:
        if isinstance(m["content"], list):
            parts = []
            for part in m["content"]:
                if part.get("type") == "image_url" and part["image_url"]["url"].startswith(MEDIA_URL_PREFIX):
                    path = media_file(media, part["image_url"]["url"])
                    part = {"type": "image_url", "image_url": {"url": _data_url(path)}}
                elif part.get("type") == "input_audio" and part["input_audio"]["data"].startswith(MEDIA_URL_PREFIX):
                    path = media_file(media, part["input_audio"]["data"])
                    data = base64.b64encode(audio_bytes(path)).decode()
                    part = {"type": "input_audio", "input_audio": {**part["input_audio"], "data": data}}
                parts.append(part)
            m = {**m, "content": parts}
        out.append(m)
    return out
