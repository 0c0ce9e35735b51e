"""Kill -9 a caching job mid-run several times, resume, and compare with an unbroken run;
two jobs writing one cache at once corrupt nothing and duplicate nothing."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.support.fake_openai import FakeOpenAI
from tests.support.teacher_env import count_ok
from workbench.cache.store import CacheStore
from workbench.data.synth import SynthSpec, write

N = 150


def setup(tmp: Path, base_url: str) -> tuple[Path, Path]:
    manifest = write(tmp / "synth", SynthSpec(n=N, seed=1))
    data = tmp / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(manifest), "features": str(tmp / "synth/features.npz")}))
    teacher = tmp / "teacher.yaml"
    teacher.write_text(yaml.safe_dump({"backend": "openai_compat", "model": "fake", "base_url": base_url,
                                       "api": "completions", "max_concurrency": 4}))
    return data, teacher


def job_cmd(data: Path, teacher: Path, cache: Path) -> list[str]:
    return [sys.executable, "-m", "workbench.cli", "cache", "run", "--teacher", str(teacher),
            "--data", str(data), "--template", "sentiment_polarity", "--cache", str(cache)]


def all_keys(cache: Path) -> set[str]:
    """Distinct keys the job asked for (identical transcripts share one key)."""
    with CacheStore(cache) as store:
        return {k for job in store.jobs() for _, k in store.sample_keys(job["job"]).values()}


def ok_rows(cache: Path) -> tuple[set[str], int, int]:
    with CacheStore(cache) as store:
        keys = {k for k, o in store.current().items() if o.ok}
        n_ok = store.conn.execute("SELECT COUNT(*) FROM outputs WHERE status='ok'").fetchone()[0]
        n_all = store.count_rows()
    return keys, n_ok, n_all


def test_kill9_mid_run_then_resume_equals_unbroken_run(tmp_path):
    with FakeOpenAI(lambda p: ["slow"], slow_s=0.05) as server:
        data, teacher = setup(tmp_path, server.base_url)
        env = {**os.environ, "COLUMNS": "120"}
        unbroken = tmp_path / "unbroken"
        subprocess.run(job_cmd(data, teacher, unbroken), check=True, env=env, capture_output=True)
        crashed = tmp_path / "crashed"
        total = len(all_keys(unbroken))
        at_kill = []
        for _ in range(3):  # kill -9 each run once it has committed 25 more answers
            start = count_ok(crashed)
            p = subprocess.Popen(job_cmd(data, teacher, crashed), env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.time() + 120
            while p.poll() is None and count_ok(crashed) < start + 25 and time.time() < deadline:
                time.sleep(0.02)
            assert p.poll() is None, "the job finished before it could be killed; make it slower"
            p.send_signal(signal.SIGKILL)
            p.wait()
            at_kill.append(count_ok(crashed))
        assert at_kill[-1] < total  # the kills really interrupted it
        r = subprocess.run(job_cmd(data, teacher, crashed), env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    want, n_ok_u, _ = ok_rows(unbroken)
    got, n_ok, n_all = ok_rows(crashed)
    assert want == all_keys(unbroken) and len(want) > N * 0.8
    assert got == want
    assert n_ok == len(got) == n_all  # no duplicate rows, no stray rows
    with sqlite3.connect(crashed / "cache.sqlite") as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_two_concurrent_writers_duplicate_nothing(tmp_path):
    with FakeOpenAI(lambda p: ["slow"], slow_s=0.01) as server:
        data, teacher = setup(tmp_path, server.base_url)
        cache = tmp_path / "shared"
        env = {**os.environ, "COLUMNS": "120"}
        procs = [subprocess.Popen(job_cmd(data, teacher, cache), env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE) for _ in range(2)]
        for p in procs:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err.decode()[-2000:]
    keys, n_ok, n_all = ok_rows(cache)
    wanted = all_keys(cache)
    assert keys == wanted and n_ok == len(wanted)  # both may have asked; one answer was kept
    with sqlite3.connect(cache / "cache.sqlite") as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert n_all == len(wanted)
