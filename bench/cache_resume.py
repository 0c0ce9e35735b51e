"""Resume cost: rerunning a finished 10,000-sample caching job makes zero teacher calls.

Fills a cache for 10,000 synthetic samples from a loopback OpenAI-compatible server, then
reruns the job (in-process, and as the `workbench cache run` command) and reports the
wall time and the number of requests the server saw (goal: 0 calls, under 2 s).

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
from teachers import make_teacher
from teachers.job import CachingJob
from tests.support.fake_openai import FakeOpenAI
from workbench.cache.store import CacheStore
from workbench.config import CacheConfig, DataConfig, TeacherConfig
from workbench.data import load_dataset
from workbench.data.synth import SynthSpec, write


def run_once(tcfg, data_cfg, cache: Path):
    ds = load_dataset(data_cfg)
    teacher = make_teacher(tcfg)
    with CacheStore(cache) as store:
        job = CachingJob(tcfg, CacheConfig(dir=str(cache)), load_template("sentiment_polarity"), ds,
                         store, teacher.model_id())
        planned = job.plan()
        teacher.load()
        return job.run(teacher, planned)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    tmp = Path(tempfile.mkdtemp())
    manifest = write(tmp / "synth", SynthSpec(n=n, seed=5))
    dcfg = DataConfig(path=str(manifest), features=str(tmp / "synth/features.npz"))
    with FakeOpenAI() as server:
        tcfg = TeacherConfig(backend="openai_compat", model="fake", base_url=server.base_url,
                             api="completions", max_concurrency=32)
        with Timer() as fill:
            first = run_once(tcfg, dcfg, tmp / "cache")
        calls_before = sum(server.attempts.values())
        with Timer() as again:
            second = run_once(tcfg, dcfg, tmp / "cache")
        (tmp / "t.yaml").write_text(yaml.safe_dump({"backend": "openai_compat", "model": "fake",
                                                    "base_url": server.base_url, "api": "completions"}))
        (tmp / "d.yaml").write_text(yaml.safe_dump({"path": str(manifest),
                                                    "features": str(tmp / "synth/features.npz")}))
        cmd = [sys.executable, "-m", "workbench.cli", "cache", "run", "--teacher", str(tmp / "t.yaml"),
               "--data", str(tmp / "d.yaml"), "--template", "sentiment_polarity", "--cache", str(tmp / "cache")]
        with Timer() as cli:
            r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
        assert r.returncode == 0, r.stderr
        calls_after = sum(server.attempts.values())
    print(f"fill: {n} samples ({first.unique_keys} distinct keys) in {fill.s:.1f}s, {calls_before} calls")
    print(f"resume in-process (load data, render, key, skip): {again.s:.2f}s, "
          f"{second.sent} sent, server calls during resumes: {calls_after - calls_before}")
    print(f"resume as `workbench cache run` (incl. interpreter start-up and imports): {cli.s:.2f}s")
    print(f"goal: 0 calls and < 2 s -> {'met' if calls_after == calls_before and again.s < 2 else 'NOT met'} "
          f"({loadavg()})")


if __name__ == "__main__":
    main()
