"""Resume cost: rerunning a finished 10,000-sample caching job makes zero teacher calls.

Fills a cache for 10,000 synthetic samples, then reruns the job through its library entry
(``run_cache_job``, in-process) and as the `workbench cache run` command, and reports the
wall time and the number of requests the reruns sent (goal: 0 calls, under 2 s).

The fill needs 10,000 answers fast, so it uses an in-process teacher that answers every
request with a fixed soft label (no model, no server) through the job's lower-level
handle (``CachingJob``). The reruns use an ``openai_compat`` teacher of the same model
name (same keys) whose server does not exist: a rerun that sent anything would count it.

    python bench/cache_resume.py [N]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from common import Timer, loadavg

from prompts import load_template
from teachers.base import RawOutput
from teachers.job import CachingJob
from teachers.run import run_cache_job
from workbench.cache.store import CacheStore
from workbench.config import CacheConfig, CacheJobConfig, DataConfig, TeacherConfig, to_dict
from workbench.data import load_dataset
from workbench.data.synth import SynthSpec, write

TEMPLATE = "sentiment_polarity"
NOWHERE = "http://127.0.0.1:9/v1"  # the discard port: nothing answers there


class AnsweringTeacher:
    """Answers " positive" (log-prob -0.3, alternatives below) to every request; counts them."""

    name = "answering"

    def __init__(self, model: str) -> None:
        self.model, self.calls = model, 0

    def model_id(self) -> str:
        return self.model

    def load(self) -> None:
        pass

    def close(self) -> None:
        pass

    def generate(self, requests, on_result) -> None:
        top = [[" positive", -0.3], [" neutral", -2.0], [" negative", -3.0]]
        for req in requests:
            self.calls += 1
            raw = RawOutput(text=" positive", tokens_in=len(req.prompt.split()), tokens_out=1,
                            positions=[{"token": " positive", "logprob": -0.3, "top": top}])
            if not on_result(req, raw):
                return


def fill(tcfg: TeacherConfig, data: DataConfig, cache: Path) -> tuple[int, AnsweringTeacher]:
    teacher = AnsweringTeacher(tcfg.model)
    with CacheStore(cache) as store:
        job = CachingJob(tcfg, CacheConfig(dir=str(cache), template=TEMPLATE),
                         load_template(TEMPLATE), load_dataset(data), store, teacher.model_id())
        report = job.run(teacher, job.plan())
    return report.unique_keys, teacher


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    tmp = Path(tempfile.mkdtemp())
    manifest = write(tmp / "synth", SynthSpec(n=n, seed=5))
    data = DataConfig(path=str(manifest), features=str(tmp / "synth/features.npz"))
    tcfg = TeacherConfig(backend="openai_compat", model="fake", base_url=NOWHERE,
                         api="completions", max_concurrency=32, max_retries=0, timeout_s=1)
    with Timer() as filled:
        keys, teacher = fill(tcfg, data, tmp / "cache")
    cfg = CacheJobConfig(data=data, teacher=tcfg,
                         cache=CacheConfig(dir=str(tmp / "cache"), template=TEMPLATE))
    with Timer() as again:
        second = run_cache_job(cfg)
    (tmp / "t.yaml").write_text(yaml.safe_dump(to_dict(tcfg)))
    (tmp / "d.yaml").write_text(yaml.safe_dump(to_dict(data)))
    cmd = [sys.executable, "-m", "workbench.cli", "cache", "run", "--teacher", str(tmp / "t.yaml"),
           "--data", str(tmp / "d.yaml"), "--template", TEMPLATE, "--cache", str(tmp / "cache")]
    with Timer() as cli:
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    cli_calls = 0 if "(no teacher calls)" in r.stdout else "some"
    print(f"fill: {n} samples ({keys} distinct keys) in {filled.s:.1f}s, {teacher.calls} answers "
          "from an in-process teacher")
    print(f"resume in-process (load data, render, key, skip): {again.s:.2f}s, "
          f"{second.report.sent} sent")
    print(f"resume as `workbench cache run` (incl. interpreter start-up and imports): {cli.s:.2f}s, "
          f"{cli_calls} sent")
    calls = second.report.sent + (0 if cli_calls == 0 else 1)
    print(f"goal: 0 calls and < 2 s -> {'met' if calls == 0 and again.s < 2 else 'NOT met'} "
          f"({loadavg()})")


if __name__ == "__main__":
    main()
