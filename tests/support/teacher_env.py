"""Helpers for teacher/caching tests: tiny datasets, and jobs run through the library entry
(:func:`teachers.run.run_cache_job`), as `workbench cache run` runs them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from teachers.run import JobSummary, run_cache_job
from workbench.config import CacheConfig, CacheJobConfig, DataConfig, TeacherConfig
from workbench.data.synth import SynthSpec, write


def tiny_data(tmp: Path, n: int = 30, seed: int = 0) -> DataConfig:
    """The synthetic dataset with ``n`` utterances, written under ``tmp``."""
    manifest = write(tmp / "synth", SynthSpec(n=n, seed=seed))
    return DataConfig(path=str(manifest), features=str(tmp / "synth" / "features.npz"))


def api_teacher(base_url: str, **kw) -> TeacherConfig:
    base = dict(backend="openai_compat", model="fake-model", base_url=base_url, api="completions",
                max_concurrency=4, timeout_s=2.0, max_retries=3)
    base.update(kw)
    return TeacherConfig(**base)


def run_job(tcfg: TeacherConfig, data: DataConfig, cache_dir: Path,
            template: str = "sentiment_polarity", ccfg: CacheConfig | None = None,
            splits=None, shard: str = "0/1") -> JobSummary:
    """One caching job; errors are tolerated (``max_error_rate=1``) unless ``ccfg`` says."""
    ccfg = ccfg or CacheConfig(dir=str(cache_dir), template=template, max_error_rate=1.0)
    cfg = CacheJobConfig(data=data, teacher=tcfg, cache=ccfg, splits=list(splits or []),
                         shard=shard)
    return run_cache_job(cfg)


def count_ok(cache: Path) -> int:
    """Ok rows committed so far (0 before the job has created the database)."""
    db = cache / "cache.sqlite"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as c:
            return c.execute("SELECT COUNT(*) FROM outputs WHERE status='ok'").fetchone()[0]
    except sqlite3.OperationalError:  # schema not created yet
        return 0
