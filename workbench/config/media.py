"""Media ingestion: raw video / audio / image files to frames, acoustic features and a
dataset (``workbench data media``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from workbench.config.data import DataConfig
from workbench.config.fields import check


@dataclass
class MediaConfig:
    """How each clip is decoded and described."""

    frames: int = 3
    """Frames sampled uniformly inside each clip's segment (MMSLF uses 3)."""
    max_side: int = 384
    """Frames are resized so their longer side is at most this many pixels."""
    jpeg_quality: int = 90
    """JPEG quality of the written frames (1-95)."""
    audio: bool = True
    """Decode the audio (16 kHz mono WAV next to the dataset) and compute eGeMAPSv02."""
    audio_features: Literal["lld", "functionals"] = "lld"
    """What the sample's ``audio`` feature holds: the 25 eGeMAPS low-level descriptors at
    100 Hz as a sequence (``lld``, for sequence encoders) or the 88 functionals as one
    utterance vector (``functionals``). The functionals are always kept in ``meta``."""
    standardize: bool = True
    """Z-score each dimension of the ``audio`` feature with the mean and deviation of the
    train clips (eGeMAPS mixes Hz, dB and ratios; students expect comparable scales);
    the statistics are saved in ``OUT/media/feature_stats.json``."""
    image_encoder: str = ""
    """Local directory of a transformers image encoder (``AutoModel`` +
    ``AutoImageProcessor``, e.g. a CLIP or SigLIP vision tower); when set, the sample's
    ``vision`` feature is the sequence of its frames' embeddings."""
    encoder_batch: int = 16
    """Frames per forward pass of the image encoder."""
    device: str = "cpu"
    """Device of the image encoder (cpu, cuda, cuda:N)."""
    processes: int = 1
    """Worker processes decoding clips (each runs decode + frames + eGeMAPS), with
    ``engine: local``."""
    engine: Literal["local", "ray"] = "local"
    """Where clips are decoded: ``local``, in ``processes`` worker processes on this
    machine; ``ray``, one Ray task per clip (1 CPU each) on a Ray cluster
    (``ray_address``), results streamed back to this process, which writes the dataset as
    with ``local``. On a cluster every node reads the media files (the manifest's paths,
    made absolute here) and writes into ``OUT/media``: both must be on storage shared by
    all nodes. Needs the ``ray`` extra."""
    ray_address: str = ""
    """With ``engine: ray``, the cluster to join: empty starts a local instance on this
    machine (or uses ``RAY_ADDRESS`` when set); ``auto`` joins the cluster this machine
    belongs to (``ray start``); ``ray://HOST:10001`` a remote one."""
    max_error_rate: float = 0.2
    """Stop (exit 1) once more than this fraction of all clips failed; finished clips stay
    on disk and a rerun skips them."""
    start_column: str = "start"
    """Manifest column with the segment start in seconds (empty cell: the file's start)."""
    end_column: str = "end"
    """Manifest column with the segment end in seconds (empty cell: the file's end)."""
    cues: bool = True
    """Write plain-word acoustic cues (pitch, loudness, speaking rate, pauses) into each
    sample's ``meta``, for templates' ``cues`` (``cache.cue_fields=[acoustic]``)."""

    def __post_init__(self) -> None:
        check(1 <= self.frames <= 64, "media.frames", self.frames, "use 1..64 frames per clip")
        check(16 <= self.max_side <= 4096, "media.max_side", self.max_side,
              "use a side of 16..4096 pixels")
        check(1 <= self.jpeg_quality <= 95, "media.jpeg_quality", self.jpeg_quality, "use 1..95")
        check(self.processes >= 1, "media.processes", self.processes, "use 1 or more processes")
        check(self.engine in ("local", "ray"), "media.engine", self.engine,
              "use local (worker processes on this machine) or ray")
        check(not self.ray_address or self.engine == "ray", "media.ray_address",
              self.ray_address, "set media.engine=ray to use a Ray cluster, or leave the "
              "address empty")
        check(self.encoder_batch >= 1, "media.encoder_batch", self.encoder_batch, "use 1 or more")
        check(0.0 <= self.max_error_rate <= 1.0, "media.max_error_rate", self.max_error_rate,
              "use a fraction in [0, 1]")


@dataclass
class MediaJobConfig:
    """A whole ingestion job: which manifest, how to decode it, where the dataset goes.

    The library entry is ``workbench.data.ingest.ingest_media(cfg)``; ``workbench data
    media`` builds this object from its arguments.
    """

    data: DataConfig = field(default_factory=DataConfig)
    """The manifest naming the media (``video_file_column`` / ``audio_file_column`` /
    ``frames_column``, plus ``media.start_column`` / ``media.end_column``)."""
    media: MediaConfig = field(default_factory=MediaConfig)
    """Decoding and features."""
    out: str = "runs/data/media"
    """Output dataset directory: the Arrow dataset, ``media/`` (frames, audio, per-clip
    results) and ``media_errors.jsonl``."""

    def __post_init__(self) -> None:
        check(bool(self.out), "out", self.out, "name an output directory")
