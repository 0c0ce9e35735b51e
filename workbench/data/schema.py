"""The one sample schema every reader produces and every stage consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workbench.errors import WorkbenchError

FEATURE_MODALITIES = ("audio", "vision")


class DataError(WorkbenchError, ValueError):
    """A dataset file or sample is wrong. The message names the file, ids and the fix."""


@dataclass
class Media:
    """Raw media a teacher may look at (paths as given, resolved against the media root)."""

    frames: list[str] = field(default_factory=list)
    """Video frames or still images, in temporal order."""
    audio_file: str | None = None
    video_file: str | None = None

    def paths(self) -> list[str]:
        out = list(self.frames)
        out += [p for p in (self.audio_file, self.video_file) if p]
        return out

    def is_empty(self) -> bool:
        return not self.paths()


@dataclass
class Sample:
    """One utterance.

    ``audio`` / ``vision`` hold either an utterance vector of shape ``(d,)`` or a padded
    sequence of shape ``(T, d)`` whose first ``*_length`` rows are real frames.
    """

    id: str
    text: str
    split: str
    label: float | None = None
    """Sentiment score (regression datasets); may be None for unlabelled data."""
    label_class: int | None = None
    """Class index (classification datasets, or the MMSA classification label)."""
    audio: np.ndarray | None = None
    audio_length: int | None = None
    vision: np.ndarray | None = None
    vision_length: int | None = None
    media: Media = field(default_factory=Media)
    meta: dict[str, Any] = field(default_factory=dict)

    def feature(self, modality: str) -> np.ndarray | None:
        return getattr(self, modality)

    def length(self, modality: str) -> int | None:
        return getattr(self, f"{modality}_length")

    def has(self, modality: str) -> bool:
        """Whether the sample carries ``modality`` (text, audio or vision)."""
        if modality == "text":
            return bool(self.text and self.text.strip())
        feat = self.feature(modality)
        if feat is not None:
            n = self.length(modality)
            return feat.size > 0 and (n is None or n > 0)
        if modality == "vision":
            return bool(self.media.frames or self.media.video_file)
        if modality == "audio":
            return bool(self.media.audio_file)
        raise ValueError(f"unknown modality {modality!r}")
