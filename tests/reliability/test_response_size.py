"""How much of a teacher's answer the client reads and the cache keeps (issue 25, items 5
and 7): a response body is read only up to ``teacher.max_response_bytes`` once
decompressed, and an answer's text is stored only up to what ``max_tokens`` tokens can be.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from teachers.sending import JobFailed
from tests.support.fake_openai import FakeOpenAI, label_for
from tests.support.teacher_env import api_teacher, run_job, tiny_data
from workbench.cache.store import CacheStore

REPO = Path(__file__).resolve().parents[2]
HEADROOM_MB = 300
"""Address space the limited job gets above what an ordinary job of the same size needs."""

# The caching job in a child process: with a limit, its address space (RLIMIT_AS) is capped
# before anything is imported, so a client that held the expanded body would fail with
# MemoryError instead of swapping. Prints the job's status counts and its peak address space.
JOB = r"""
import json, resource, sys
limit = int(sys.argv[1])
if limit:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from tests.support.teacher_env import api_teacher, run_job
from workbench.config import DataConfig
from workbench.config.teacher import PriceConfig

url, manifest, features, cache = sys.argv[2:6]
tcfg = api_teacher(url, max_retries=1, timeout_s=20.0, max_concurrency=4,
                   price=PriceConfig(input_per_mtok=1e6))  # $1 a prompt token
job = run_job(tcfg, DataConfig(path=manifest, features=features), cache)
peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status")
            if line.startswith("VmPeak:"))
print(json.dumps({"finished": dict(job.report.finished), "vm_peak": peak}))
"""


def run_limited(url: str, data, cache: Path, limit: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}
    return subprocess.run([sys.executable, "-c", JOB, str(limit), url, data.path, data.features,
                           str(cache)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def rows(cache):
    with CacheStore(cache) as store:
        return list(store.current().values())


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmPeak from /proc")
def test_a_decompression_bomb_is_cut_at_max_response_bytes_under_a_memory_limit(tmp_path):
    """Half the prompts get a 200 KB gzip body that expands to 200 MB (was read whole: the
    client reached 977 MB). With the address space capped a few hundred MB above what an
    ordinary job needs, the job ends cleanly: a bad_response row naming the cap for each
    bomb, counted as maybe billed, ok rows for the others."""
    data = tiny_data(tmp_path, n=12)
    with FakeOpenAI() as plain:
        base = run_limited(plain.base_url, data, tmp_path / "base", 0)
    assert base.returncode == 0, base.stderr[-2000:]
    baseline = json.loads(base.stdout.splitlines()[-1])["vm_peak"]

    def schedule(prompt):
        return ["gzipbomb"] if label_for(prompt) != "neutral" else ["ok"]

    with FakeOpenAI(schedule) as server:
        server.gzip_bomb()  # made before the job starts: the job's deadline is not spent on it
        done = run_limited(server.base_url, data, tmp_path / "c", baseline + HEADROOM_MB * 2**20)
        assert server.behaviours["gzipbomb"] > 0 and server.behaviours["ok"] > 0
        billed = server.billed_answers
        billed_usd = server.billed_tokens_in * 1.0
    assert done.returncode == 0, done.stderr[-3000:]
    assert "MemoryError" not in done.stderr
    got = rows(tmp_path / "c")
    bombs = [o for o in got if o.status != "ok"]
    assert len(bombs) == server.behaviours["gzipbomb"]  # one attempt each: not retried
    assert len(got) - len(bombs) == server.behaviours["ok"]
    for o in bombs:
        assert o.status == "bad_response"
        assert "teacher.max_response_bytes=8388608" in o.error and "decompressed" in o.error
        assert o.meta["cost_estimated"]["unseen_attempts"] == 1
    assert sum(billed.values()) == len(got)
    with CacheStore(tmp_path / "c") as store:
        assert store.spent("fake-model") >= billed_usd > 0


def test_the_cap_counts_decompressed_bytes_and_max_response_bytes_raises_it(tmp_path):
    """A 9 MiB body sent as about 9 KB of gzip is refused at the 8 MiB default, and read
    whole with teacher.max_response_bytes at 16 MiB (then found to hold no answer)."""
    data = tiny_data(tmp_path, n=3)
    with FakeOpenAI(lambda p: ["gzipbomb"], bomb_bytes=9 * 2**20) as server:
        assert len(server.gzip_bomb()) < 20_000
        for cache, kw in (("default", {}), ("raised", {"max_response_bytes": 16 * 2**20})):
            with pytest.raises(JobFailed, match="no answer was ok"):
                run_job(api_teacher(server.base_url, max_retries=0, **kw), data, tmp_path / cache)
    refused = rows(tmp_path / "default")
    assert len(refused) == 3 and all("teacher.max_response_bytes=8388608" in o.error
                                     for o in refused)
    read = rows(tmp_path / "raised")
    assert len(read) == 3 and all("max_response_bytes" not in o.error and "no choices" in o.error
                                  for o in read)


def test_a_huge_answer_to_one_token_is_stored_cut_and_still_scored(tmp_path, caplog):
    """A score-only request (max_tokens=1) answered with 6.5 MB of text: each row keeps at
    most 256 characters and says how long the answer was; the soft label is read from the
    answer's log-probabilities as usual (was: 3 keys, 19 MB of cache)."""
    data = tiny_data(tmp_path, n=3)
    with FakeOpenAI(lambda p: ["hugetext"]) as server:
        run_job(api_teacher(server.base_url), data, tmp_path / "c")
        assert all(b["max_tokens"] == 1 for b in server.bodies)
    got = rows(tmp_path / "c")
    assert len(got) == 3
    for o in got:
        assert o.status == "ok" and o.soft_label is not None
        assert len(o.raw_text) == 256 and o.meta["text_cut"] == 6_500_000
    size = sum(p.stat().st_size for p in (tmp_path / "c").iterdir() if p.is_file())
    assert size < 1_000_000, size
    assert sum("stored cut to 256 characters" in r.getMessage() for r in caplog.records) == 3
