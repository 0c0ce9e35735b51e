"""Helpers for teacher/caching tests: tiny datasets and job wiring."""

from __future__ import annotations

from pathlib import Path

from prompts import load_template
from teachers import make_teacher
from teachers.job import CachingJob, JobReport
from workbench.cache.store import CacheStore
from workbench.config import CacheConfig, DataConfig, TeacherConfig
from workbench.data import MSADataset, load_dataset
from workbench.data.synth import SynthSpec, write


def tiny_dataset(tmp: Path, n: int = 30, seed: int = 0) -> MSADataset:
    manifest = write(tmp / "synth", SynthSpec(n=n, seed=seed))
    return load_dataset(DataConfig(path=str(manifest), features=str(tmp / "synth" / "features.npz")))


def api_teacher(base_url: str, **kw) -> TeacherConfig:
    base = dict(backend="openai_compat", model="fake-model", base_url=base_url, api="completions",
                max_concurrency=4, timeout_s=2.0, max_retries=3)
    base.update(kw)
    return TeacherConfig(**base)


def run_job(tcfg: TeacherConfig, ds: MSADataset, cache_dir: Path, template: str = "sentiment_polarity",
            ccfg: CacheConfig | None = None, splits=None, shard=(0, 1)) -> tuple[JobReport, CachingJob]:
    ccfg = ccfg or CacheConfig(dir=str(cache_dir), template=template, max_error_rate=1.0)
    teacher = make_teacher(tcfg)
    with CacheStore(cache_dir) as store:
        job = CachingJob(tcfg, ccfg, load_template(template), ds, store, teacher.model_id())
        planned = job.plan(splits, shard)
        teacher.load()
        try:
            return job.run(teacher, planned), job
        finally:
            teacher.close()
