"""openai_compat against a loopback server that fails on a schedule: every sample ends
ok or as an explicit error row, retries are counted, nothing is lost."""

import hashlib
import json
import math

import pytest

from tests.support.fake_openai import FakeOpenAI, label_for
from tests.support.teacher_env import api_teacher, run_job, tiny_data
from workbench.cache.store import CacheStore

FAULTS = ["429", "500", "hang", "malformed", "truncated", "nolabel"]


def schedule_by_prompt(prompt: str) -> list[str]:
    """Deterministic per prompt: some recover after faults, some never do."""
    digest = hashlib.sha256(prompt.encode()).digest()
    fault = FAULTS[digest[0] % len(FAULTS)]
    fate = digest[1] % 4
    if fate == 0:
        return ["ok"]
    if fate == 1:
        return [fault, "ok"]          # recovers on the first retry
    if fate == 2:
        return [fault, fault, "ok"]   # recovers on the second retry
    return [fault]                    # never recovers


def test_every_sample_ends_ok_or_as_an_explicit_error(tmp_path):
    data = tiny_data(tmp_path, n=120)
    with FakeOpenAI(schedule_by_prompt, hang_s=1.5) as server:
        tcfg = api_teacher(server.base_url, timeout_s=0.5, max_retries=2, max_concurrency=16)
        job = run_job(tcfg, data, tmp_path / "cache")
        report = job.report
        behaviours = dict(server.behaviours)
    with CacheStore(tmp_path / "cache") as store:
        st = store.status(job.job_id)
        current = store.current(job.job_id)
        keys = {k for _, k in store.sample_keys(job.job_id).values()}
    assert st["pending"] == 0 and st["keys"] == len(keys) == report.unique_keys
    assert st["ok"] + sum(st["errors"].values()) == st["keys"]
    # each fault that never recovers shows up as its own error kind
    expected_kinds = {"rate_limited", "server_error", "timeout", "bad_response", "no_label"}
    assert set(st["errors"]) <= expected_kinds | {"connection"}
    assert {"rate_limited", "server_error", "timeout", "no_label"} <= set(st["errors"])
    assert report.retries > 0 and st["retries"] == report.retries
    for out in current.values():
        if out.ok:
            assert out.soft_label is not None and abs(sum(out.soft_label.probs) - 1) < 1e-9
        else:
            assert out.error  # every error row says what happened
    assert all(b in behaviours for b in ("429", "500", "hang", "malformed", "truncated"))


def test_soft_labels_follow_the_served_distribution(tmp_path):
    data = tiny_data(tmp_path, n=12)
    with FakeOpenAI() as server:
        job = run_job(api_teacher(server.base_url), data, tmp_path / "c")
        report = job.report
    assert report.ok == report.unique_keys
    with CacheStore(tmp_path / "c") as store:
        req = {k: store.request(k)["prompt"] for _, k in store.sample_keys(job.job_id).values()}
        for key, out in store.current(job.job_id).items():
            sl = out.soft_label
            assert sl.labels[sl.argmax] == label_for(req[key])
            # " Positive"/" Negative" are variants of a label and merge into it; "\n" is off-label
            assert sl.off_label_mass == pytest.approx(
                1 - sum(math.exp(v) for v in (-0.3, -2.0, -3.0, -4.0)), abs=1e-9)


def test_retry_after_is_honoured_and_counted(tmp_path):
    data = tiny_data(tmp_path, n=6)
    with FakeOpenAI(lambda p: ["429", "429", "ok"], retry_after="0.2") as server:
        import time

        t0 = time.perf_counter()
        report = run_job(api_teacher(server.base_url, max_concurrency=1), data, tmp_path / "c",
                         splits=["train"]).report
        elapsed = time.perf_counter() - t0
    assert report.ok == report.unique_keys and report.retries == 2 * report.unique_keys
    assert elapsed >= 0.4 * report.unique_keys * 0.9  # two 0.2 s waits per request, serially


def test_budget_cap_stops_cleanly_and_resumes(tmp_path):
    data = tiny_data(tmp_path, n=40)
    with FakeOpenAI(lambda p: ["slow"]) as server:
        price = {"input_per_mtok": 1e6, "output_per_mtok": 0.0}  # $1 per input token
        tcfg = api_teacher(server.base_url, budget_usd=50.0, max_concurrency=1)
        tcfg.price.input_per_mtok = price["input_per_mtok"]
        job = run_job(tcfg, data, tmp_path / "c")
        report = job.report
        assert report.stopped == "budget"
        assert 0 < report.ok < report.unique_keys and report.cost_usd >= 50
        tcfg.budget_usd = 0.0
        report2 = run_job(tcfg, data, tmp_path / "c").report
    assert report2.already_ok == report.ok and report2.ok == report.unique_keys - report.ok


def test_api_key_from_env_never_stored(tmp_path, monkeypatch):
    secret = "sk-test-VERY-SECRET-123"
    monkeypatch.setenv("WB_TEST_KEY", secret)
    data = tiny_data(tmp_path, n=6)
    with FakeOpenAI() as server:
        run_job(api_teacher(server.base_url, api_key_env="WB_TEST_KEY"), data, tmp_path / "c")
    for f in (tmp_path / "c").rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f
    monkeypatch.delenv("WB_TEST_KEY")
    with pytest.raises(RuntimeError, match="WB_TEST_KEY.*not set"):
        run_job(api_teacher("http://127.0.0.1:9/v1", api_key_env="WB_TEST_KEY"), data, tmp_path / "d")


def test_chat_api_with_logprobs(tmp_path):
    data = tiny_data(tmp_path, n=8)
    with FakeOpenAI() as server:
        report = run_job(api_teacher(server.base_url, api="chat"), data, tmp_path / "c").report
    assert report.ok == report.unique_keys


def test_error_rate_threshold_fails_loudly_keeping_results(tmp_path):
    from teachers.sending import JobFailed
    from workbench.config import CacheConfig

    data = tiny_data(tmp_path, n=60)
    with FakeOpenAI(lambda p: ["500"]) as server:
        tcfg = api_teacher(server.base_url, max_retries=0)
        ccfg = CacheConfig(dir=str(tmp_path / "c"), template="sentiment_polarity", max_error_rate=0.2)
        with pytest.raises(JobFailed, match=r"max_error_rate=0.2\): server_error=\d+"):
            run_job(tcfg, data, tmp_path / "c", ccfg=ccfg)
    with CacheStore(tmp_path / "c") as store:
        st = store.status()
    # stopped early (the Wilson bound, not a fixed 20 answers), keeping what it had
    assert 5 <= st["errors"]["server_error"] < 20 and st["pending"] > 0
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["jobs"]
