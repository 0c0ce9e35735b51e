"""The teacher cache, and a whole caching job (``configs/cache/``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from workbench.config.data import DataConfig
from workbench.config.fields import SPLITS, ConfigError, check, short_repr
from workbench.config.teacher import TeacherConfig


@dataclass
class RayConfig:
    """The Ray engine of a caching job (``cache.engine: ray``): its cluster and actor pool.

    Runtime knobs, not part of any cache key or job id: the same job run with either engine,
    or with another pool, asks the same keys."""

    address: str = ""
    """Cluster to join: empty starts a local instance on this machine (or uses
    ``RAY_ADDRESS`` when set); ``auto`` joins the cluster this machine belongs to
    (``ray start``); ``ray://HOST:10001`` a remote one."""
    actors: int = 2
    """Teacher actors in the pool, each holding one backend (one model copy for
    ``hf_local`` / ``vllm_engine``). An API teacher's ``max_concurrency``,
    ``requests_per_minute`` and ``tokens_per_minute`` are shared out between them (they are
    the totals), so the pool never has more actors than the smallest set limit."""
    num_cpus: float = 0.0
    """CPUs Ray reserves per actor; 0: one for a local model, 0.25 for an API teacher (its
    work is waiting on the network)."""
    num_gpus: float = 0.0
    """GPUs Ray reserves per actor; 0: none, except ``vllm_engine``, which gets
    ``teacher.tensor_parallel_size``."""
    batch_size: int = 0
    """Requests per actor call; 0: four times ``teacher.batch_size`` for a local model (its
    backend sorts each call's requests by length before batching them), four times the
    actor's share of ``max_concurrency`` for an API teacher (so a batch's slowest answer
    stalls little). An answer waits in Ray for at most the rest of its batch."""
    max_reruns: int = 2
    """Times a batch is sent again after its actor died under it (Ray restarts the
    actor); past that its requests become ``backend_error`` rows, retryable."""

    def __post_init__(self) -> None:
        check(self.actors >= 1, "cache.ray.actors", self.actors, "use at least 1")
        check(self.num_cpus >= 0, "cache.ray.num_cpus", self.num_cpus, "use 0 (default) or more")
        check(self.num_gpus >= 0, "cache.ray.num_gpus", self.num_gpus, "use 0 (default) or more")
        check(self.batch_size >= 0, "cache.ray.batch_size", self.batch_size,
              "use 0 (the backend's default) or a positive count")
        check(self.max_reruns >= 0, "cache.ray.max_reruns", self.max_reruns, "use 0 or more")


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
    engine: Literal["local", "ray"] = "local"
    """How the job sends: ``local`` from this process (the backend's own concurrency), or
    ``ray`` through a pool of teacher actors on a Ray cluster (``cache.ray``); planning,
    keys, leases, budget, parsing and storing stay on this machine either way."""
    ray: RayConfig = field(default_factory=RayConfig)
    """The Ray cluster and actor pool when ``engine: ray``."""

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
