"""The library entry of the teacher caching job: ``run_cache_job(cfg)``.

One call does what ``workbench cache run`` does, so the command, the demo, the tests and
the benchmarks run the same code: load the template and the dataset, build the backend,
open the cache, plan (splits, shard, variants, limit), write the job's resolved config to
``<cache>/jobs/<job id>/``, load the backend only when some key has no ok answer yet,
send, close the backend, and return a :class:`JobSummary`. With ``cache.engine: ray`` the
backend runs as a pool of Ray actors (:mod:`teachers.ray_pool`); nothing else changes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prompts import load_template
from teachers import make_teacher
from teachers.base import Teacher
from teachers.job import CachingJob
from teachers.sending import JobReport
from workbench.cache.records import TeacherOutput
from workbench.cache.store import DB_FILE, CacheFull, CacheStore, check_cache_dir, is_disk_full
from workbench.config import CacheJobConfig, dump_config
from workbench.data import load_dataset

log = logging.getLogger(__name__)

JOBS_DIR = "jobs"
"""Folder of a cache holding one folder per job with its resolved config."""

OnAnswer = Callable[[JobReport, TeacherOutput], None]
ProgressFactory = Callable[[int, str], AbstractContextManager[OnAnswer]]
"""``progress(total, label)``: a context manager around the sending, yielding the callback
called after every answer (e.g. a progress bar); ``total`` is the number of keys to send."""


@dataclass
class JobSummary:
    """What one caching job did, and where the cache stands afterwards."""

    job_id: str
    template: str
    teacher: str
    """The teacher's model id, as it enters the cache keys."""
    cache_dir: Path
    config_path: Path
    """The job's resolved config (``<cache>/jobs/<job id>/config.yaml``)."""
    report: JobReport
    todo: int
    """Keys without an ok answer when the job started (what it had to send)."""
    status: dict[str, Any] = field(default_factory=dict)
    """:meth:`CacheStore.status` of the job after the run: keys, ok, errors, pending, ..."""
    keys: list[str] = field(default_factory=list)
    """Cache key of every planned request (after ``limit``), in plan order."""
    plan_s: float = 0.0
    """Seconds spent rendering, keying and registering the requests (data loading aside);
    the sending itself is ``report.wall_s``."""

    @property
    def no_calls(self) -> bool:
        """True when every key was already cached and the teacher was not asked."""
        return self.report.sent == 0


def make_backend(cfg: CacheJobConfig) -> Teacher:
    """The job's teacher: the backend itself (``cache.engine: local``), or a pool of Ray
    actors each holding one (``ray``; :mod:`teachers.ray_pool`). Ray's own console output
    shows only with debug logging (``workbench -v``)."""
    if cfg.cache.engine == "ray":
        from teachers.ray_pool import RayTeacher
        from workbench.ray_engine import import_ray

        import_ray()  # not installed: one clear error, before anything is planned
        return RayTeacher(cfg.teacher, cfg.cache.ray,
                          verbose=logging.getLogger().isEnabledFor(logging.DEBUG))
    return make_teacher(cfg.teacher)


def run_cache_job(cfg: CacheJobConfig, *, progress: ProgressFactory | None = None) -> JobSummary:
    """Run the caching job ``cfg`` describes (resumably) and return its summary.

    Raises :class:`teachers.sending.JobFailed` when errors pass ``cache.max_error_rate``
    (everything answered so far stays in the cache), and the stages' own
    :class:`~workbench.errors.WorkbenchError` subclasses for bad data, templates or
    backends.
    """
    template = load_template(cfg.cache.template)
    ds = load_dataset(cfg.data)
    if cfg.teacher.num_threads:
        import torch

        torch.set_num_threads(cfg.teacher.num_threads)
    backend = make_backend(cfg)
    try:
        cache_dir = Path(cfg.cache.dir)
        check_cache_dir(cache_dir, must_exist=False)
        # A new cache has every key to send: the backend loads (its API key set, its device
        # present) before the cache directory is created, so a failure leaves nothing behind.
        loaded = not (cache_dir / DB_FILE).is_file()
        if loaded:
            backend.load()
        with CacheStore(cache_dir) as store:
            job = CachingJob(cfg.teacher, cfg.cache, template, ds, store, backend.model_id(),
                             few_shot=cfg.data.few_shot, few_shot_seed=cfg.data.few_shot_seed,
                             context_turns=cfg.data.context_turns,
                             context_list=bool(cfg.data.context_column))
            t0 = time.perf_counter()
            planned = job.plan(cfg.splits or None, cfg.shard_tuple(), cfg.variants, cfg.limit)
            plan_s = time.perf_counter() - t0
            try:
                config_path = dump_config(cfg, Path(cfg.cache.dir) / JOBS_DIR / job.job_id)
            except OSError as e:
                if not is_disk_full(e):
                    raise
                raise CacheFull(f"cache {cfg.cache.dir}: no space left on the disk for the job's "
                                "config; free a few MB there and rerun") from e
            keys = [p.key for p in planned]
            unique = set(keys)
            todo = len(unique - store.ok_keys())
            for spec, n in job.unreused(planned):
                log.warning(
                    "job %s: %d answers of job %s (%s v%s, teacher %s) in %s are for other "
                    "prompts of the same samples and will not be reused; %d keys to ask",
                    job.job_id, n, spec["job"], spec["template"], spec.get("template_version"),
                    spec.get("teacher"), cache_dir, todo)
            if todo:
                log.info("job %s: %d of %d keys to ask %s", job.job_id, todo, len(unique),
                         backend.model_id())
                if not loaded:
                    backend.load()
            if todo and progress is not None:
                with progress(todo, f"{template.name} x {cfg.teacher.model}") as on_answer:
                    report = job.run(backend, planned, progress=on_answer)
            else:
                report = job.run(backend, planned)
            return JobSummary(job_id=job.job_id, template=template.name,
                              teacher=backend.model_id(), cache_dir=Path(cfg.cache.dir),
                              config_path=config_path, report=report, todo=todo,
                              status=store.status(job.job_id), keys=keys, plan_s=plan_s)
    finally:
        backend.close()
