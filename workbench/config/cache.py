"""The teacher cache, and a whole caching job (``configs/cache/``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from workbench.config.data import DataConfig
from workbench.config.fields import SPLITS, ConfigError, check, short_repr
from workbench.config.teacher import TeacherConfig


@dataclass
class CacheConfig:
    """Where teacher outputs are stored and how many failures a job tolerates."""

    dir: str = "runs/cache"
    """Cache directory (holds ``cache.sqlite`` and ``manifest.json``)."""
    template: str = "sentiment_score"
    """Prompt template name (see ``prompts/templates``)."""
    max_error_rate: float = 0.05
    """Fail the job once more than this fraction of finished requests are errors."""
    min_ok_fraction: float = 0.9
    """Consumers (training) refuse a cache with fewer ok rows than this fraction."""
    cue_fields: list[str] = field(default_factory=list)
    """Manifest columns shown to the teacher as cues (e.g. [audio_cues, visual_cues]);
    ``acoustic`` stands for the cues ``workbench data media`` writes (pitch, loudness,
    speaking rate, pauses), whose wording version then enters the cache key."""

    def __post_init__(self) -> None:
        check(0.0 <= self.max_error_rate <= 1.0, "cache.max_error_rate", self.max_error_rate,
              "use a fraction in [0, 1]")
        check(0.0 <= self.min_ok_fraction <= 1.0, "cache.min_ok_fraction",
              self.min_ok_fraction, "use a fraction in [0, 1]")


@dataclass
class CacheJobConfig:
    """A whole teacher caching job (``configs/cache/``; ``workbench cache run --config``):
    which data, which teacher, which template into which cache, and which samples.

    The library entry is ``teachers.run.run_cache_job(cfg)``; ``workbench cache run`` builds
    this object from its flags or a recipe.
    """

    data: DataConfig = field(default_factory=DataConfig)
    """The dataset to ask about (a section or a path to a data YAML)."""
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    """The teacher (a section or a path to a ``configs/teachers/`` YAML)."""
    cache: CacheConfig = field(default_factory=CacheConfig)
    """Cache directory, template, error threshold."""
    splits: list[str] = field(default_factory=list)
    """Splits to ask about; empty: every split."""
    shard: str = "0/1"
    """Deterministic subset ``i/N`` of the samples (by a hash of the sample id), so N
    machines can share a job and their caches be merged."""
    variants: int = 1
    """Requests per sample (e.g. k paraphrases, each its own key)."""
    limit: int = 0
    """Only the first N selected samples (0: all)."""

    def __post_init__(self) -> None:
        for s in self.splits:
            check(s in SPLITS, "splits", self.splits, f"name splits from {list(SPLITS)}")
        self.shard_tuple()
        check(self.variants >= 1, "variants", self.variants, "use at least 1")
        check(self.limit >= 0, "limit", self.limit, "use 0 (all samples) or a positive count")

    def shard_tuple(self) -> tuple[int, int]:
        """``shard`` as ``(i, n)``."""
        try:
            i, n = (int(x) for x in self.shard.split("/"))
        except ValueError:
            raise ConfigError(f"shard={short_repr(self.shard)} must look like i/N, e.g. 0/4") from None
        if not (n >= 1 and 0 <= i < n):
            raise ConfigError(f"shard={short_repr(self.shard)} is invalid: need 0 <= i < N, e.g. 0/4")
        return i, n
