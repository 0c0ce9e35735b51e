"""``teacher.timeout_s`` is a total deadline per attempt; the error-rate stop applies at any
size, and a job whose every answer failed never ends as a success."""

from __future__ import annotations

import time

import pytest

from teachers.sending import JobFailed, wilson_lower
from tests.support.fake_openai import FakeOpenAI
from tests.support.teacher_env import api_teacher, run_job, tiny_data
from workbench.cache.store import CacheStore
from workbench.config import CacheConfig


@pytest.mark.timeout(120)
def test_a_slow_drip_body_is_cut_at_the_deadline_then_retried(tmp_path):
    data = tiny_data(tmp_path, n=6)
    # one byte every 0.1 s: a ~500-byte body would take ~50 s; the deadline is 1 s
    with FakeOpenAI(lambda p: ["drip", "ok"], drip_s=0.1) as server:
        tcfg = api_teacher(server.base_url, timeout_s=1.0, max_retries=1, max_concurrency=8)
        t0 = time.perf_counter()
        report = run_job(tcfg, data, tmp_path / "c").report
        elapsed = time.perf_counter() - t0
    assert report.ok == report.unique_keys and report.retries == report.unique_keys
    assert elapsed < 1.0 + 0.75 + 6.0, elapsed  # deadline + the longest backoff + slack


@pytest.mark.timeout(120)
def test_a_body_that_never_completes_becomes_a_timeout_row(tmp_path):
    data = tiny_data(tmp_path, n=6)
    drip = {}

    def schedule(prompt):  # the first prompt seen drips forever; the others answer
        drip.setdefault("p", prompt)
        return ["drip"] if prompt == drip["p"] else ["ok"]

    with FakeOpenAI(schedule, drip_s=0.1) as server:
        tcfg = api_teacher(server.base_url, timeout_s=0.5, max_retries=1, max_concurrency=1)
        t0 = time.perf_counter()
        job = run_job(tcfg, data, tmp_path / "c")
        elapsed = time.perf_counter() - t0
    with CacheStore(tmp_path / "c") as store:
        st = store.status(job.job_id)
    assert st["errors"] == {"timeout": 1} and st["ok"] == st["keys"] - 1
    assert elapsed < 2 * 0.5 + 0.75 + 6.0, elapsed
    (row,) = [o for o in store_current(tmp_path / "c") if not o.ok]
    assert "timeout_s=0.5" in row.error


def store_current(cache_dir):
    with CacheStore(cache_dir) as store:
        return list(store.current().values())


def test_wilson_bound_matches_its_definition():
    # reference values of the 95 % Wilson interval's lower end
    assert wilson_lower(10, 10) == pytest.approx(10 / (10 + 1.96**2))
    assert wilson_lower(0, 10) == 0.0
    assert wilson_lower(5, 100) == pytest.approx(0.02154, abs=1e-4)


@pytest.mark.parametrize("max_error_rate", [0.05, 1.0])
def test_a_small_job_whose_every_answer_failed_fails(tmp_path, max_error_rate):
    data = tiny_data(tmp_path, n=10)
    with FakeOpenAI(lambda p: ["echo401"]) as server:  # 401: bad_request, not retried
        ccfg = CacheConfig(dir=str(tmp_path / "c"), template="sentiment_polarity",
                           max_error_rate=max_error_rate)
        with pytest.raises(JobFailed, match="bad_request=") as exc:
            run_job(api_teacher(server.base_url, max_concurrency=1), data, tmp_path / "c", ccfg=ccfg)
    assert exc.value.exit_code != 0
    if max_error_rate < 1:  # stopped early: the Wilson bound passed 5 % after 5 errors
        assert sum(server.attempts.values()) == 5


def test_the_cli_exits_nonzero_when_every_answer_failed(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from workbench.cli import app
    from workbench.config import CacheJobConfig, to_dict

    data = tiny_data(tmp_path, n=10)
    with FakeOpenAI(lambda p: ["echo401"]) as server:
        cfg = CacheJobConfig(data=data, teacher=api_teacher(server.base_url),
                             cache=CacheConfig(dir=str(tmp_path / "c"), template="sentiment_polarity"))
        recipe = tmp_path / "job.yaml"
        recipe.write_text(yaml.safe_dump(to_dict(cfg)))
        r = CliRunner().invoke(app, ["cache", "run", "--config", str(recipe)])
    assert r.exit_code == 1 and "error:" in r.output and "Traceback" not in r.output


def test_a_few_errors_in_a_large_job_do_not_stop_it(tmp_path):
    data = tiny_data(tmp_path, n=120)
    bad = set()

    def schedule(prompt):  # every 25th distinct prompt fails for good (4 %)
        if prompt not in bad and len(bad) * 25 < len(schedule.seen) + 1:
            bad.add(prompt)
        schedule.seen.add(prompt)
        return ["500"] if prompt in bad else ["ok"]
    schedule.seen = set()

    with FakeOpenAI(schedule) as server:
        ccfg = CacheConfig(dir=str(tmp_path / "c"), template="sentiment_polarity", max_error_rate=0.1)
        report = run_job(api_teacher(server.base_url, max_retries=0, max_concurrency=1), data,
                         tmp_path / "c", ccfg=ccfg).report
    assert report.stopped == "" and 0 < report.errors < 0.1 * report.unique_keys
