"""``teacher.budget_usd`` is the cache's total for that teacher (across runs, jobs and
in-flight requests); every paid answer is counted; two jobs on one cache never send the
same key at once, and a killed job's leases lapse."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from teachers.run import run_cache_job
from teachers.sending import worst_price
from tests.support.fake_openai import FakeOpenAI
from tests.support.teacher_env import api_teacher, run_job, tiny_data
from workbench.cache.ledger import DONE, LEASED, OVER_BUDGET, TAKEN, new_owner, take_lease
from workbench.cache.store import CacheStore
from workbench.config import CacheConfig, CacheJobConfig

PRICE = 1e6  # $1 per input token


def priced(server, **kw):
    tcfg = api_teacher(server.base_url, **kw)
    tcfg.price.input_per_mtok = PRICE
    return tcfg


def test_budget_is_the_caches_total_and_a_rerun_does_not_spend_it_again(tmp_path):
    data = tiny_data(tmp_path, n=40)
    with FakeOpenAI(lambda p: ["slow"]) as server:
        tcfg = priced(server, budget_usd=300.0, max_concurrency=1)
        first = run_job(tcfg, data, tmp_path / "c").report
        sent = sum(server.attempts.values())
        again = run_job(tcfg, data, tmp_path / "c").report
        assert sum(server.attempts.values()) == sent  # the same budget buys nothing more
        tcfg.budget_usd = 600.0
        more = run_job(tcfg, data, tmp_path / "c").report
    assert first.stopped == again.stopped == more.stopped == "budget" and again.sent == 0
    with CacheStore(tmp_path / "c") as store:
        spent = store.spent("fake-model")
    assert spent == pytest.approx(server.billed_tokens_in)
    assert 600 <= spent < 600 + 100  # one request costs ~50 here


def test_concurrency_cannot_overshoot_by_more_than_one_request(tmp_path):
    data = tiny_data(tmp_path, n=60)
    with FakeOpenAI(lambda p: ["slow"], slow_s=0.2) as server:
        tcfg = priced(server, budget_usd=500.0, max_concurrency=8)
        job = run_job(tcfg, data, tmp_path / "c")
    assert job.report.stopped == "budget"
    with CacheStore(tmp_path / "c") as store:
        worst = max(store.request(k)["prompt"].__len__() for k in job.keys) // 2 + 16
        spent = store.spent("fake-model")
    assert spent == pytest.approx(server.billed_tokens_in)
    assert spent <= 500.0 + worst, (spent, worst)
    assert spent >= 0.8 * 500.0, spent  # reservations track the real price once answers come in


def _job_cfg(server, data, cache_dir):
    return CacheJobConfig(data=data, teacher=priced(server, max_concurrency=4),
                          cache=CacheConfig(dir=str(cache_dir), template="sentiment_polarity",
                                            max_error_rate=1.0))


def test_two_jobs_on_one_cache_never_send_a_key_twice(tmp_path):
    data = tiny_data(tmp_path, n=60)
    with FakeOpenAI(lambda p: ["slow"], slow_s=0.03) as server:
        cfg = _job_cfg(server, data, tmp_path / "c")
        results, errors = [], []

        def one():
            try:
                results.append(run_cache_job(cfg))
            except Exception as e:  # noqa: BLE001 - reported by the assert below
                errors.append(e)
        threads = [threading.Thread(target=one) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert max(server.attempts.values()) == 1, "a key was sent by both jobs"
        rerun = run_cache_job(cfg)  # whatever one job skipped as leased is done by now
    assert rerun.report.sent == 0
    with CacheStore(tmp_path / "c") as store:
        st = store.status()
        spent = store.spent("fake-model")
    assert st["ok"] == st["keys"] and sum(r.report.sent for r in results) == st["keys"]
    assert spent == pytest.approx(server.billed_tokens_in) == pytest.approx(st["cost_usd"])


def test_leases_block_others_until_they_lapse(tmp_path):
    with CacheStore(tmp_path / "c") as store:
        mine = new_owner()
        live_elsewhere = "another-host:123:abcd"
        with store.transaction() as c:
            assert take_lease(c, "k1", live_elsewhere, teacher="t", reserve_usd=0, ttl_s=60,
                              budget_usd=0) == TAKEN
            assert take_lease(c, "k1", mine, teacher="t", reserve_usd=0, ttl_s=60,
                              budget_usd=0) == LEASED
            c.execute("UPDATE leases SET expires_at = ? WHERE key='k1'", (time.time() - 1,))
            assert take_lease(c, "k1", mine, teacher="t", reserve_usd=0, ttl_s=60,
                              budget_usd=0) == TAKEN  # the lease lapsed
        # a job killed on this host: its process is gone, so its leases are void at once
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout.strip()
        import socket
        with store.transaction() as c:
            c.execute("INSERT INTO leases VALUES ('k2', ?, 't', 5.0, ?)",
                      (f"{socket.gethostname()}:{dead}:dead", time.time() + 3600))
            assert take_lease(c, "k2", mine, teacher="t", reserve_usd=1.0, ttl_s=60,
                              budget_usd=0) == TAKEN
            # reservations count against the budget: spent 0 + reserved 1 >= 1
            assert take_lease(c, "k3", mine, teacher="t", reserve_usd=1.0, ttl_s=60,
                              budget_usd=1.0) == OVER_BUDGET
            c.execute("INSERT INTO outputs (attempt, key, status) VALUES ('a', 'k4', 'ok')")
            assert take_lease(c, "k4", mine, teacher="t", reserve_usd=0, ttl_s=60,
                              budget_usd=0) == DONE


def test_worst_price_bounds_what_the_server_bills(tmp_path):
    data = tiny_data(tmp_path, n=12)
    with FakeOpenAI() as server:
        tcfg = priced(server)
        job = run_job(tcfg, data, tmp_path / "c")
        from prompts import Rendered
        from teachers.sending import PlannedRequest
        with CacheStore(tmp_path / "c") as store:
            for out in store.current().values():
                p = PlannedRequest("s", "train", out.key, Rendered.from_json(store.request(out.key)))
                assert out.cost_usd <= worst_price(tcfg, p, 8)
    assert job.report.ok == job.report.unique_keys


def test_a_job_takes_over_the_keys_of_a_job_killed_beside_it(tmp_path):
    """Another job on this host holds 16 keys' leases (in flight) and is killed after this
    job came to them: this job waits for them, sees their owner gone, and sends them
    itself (was: exit 0 with the 16 keys pending and no word)."""
    import signal
    import socket

    from prompts import load_template
    from teachers.job import CachingJob
    from workbench.data import load_dataset

    data = tiny_data(tmp_path, n=60)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        with FakeOpenAI(lambda p: ["slow"], slow_s=0.02) as server:
            cfg = _job_cfg(server, data, tmp_path / "c")
            with CacheStore(tmp_path / "c") as store:
                keys = sorted({p.key for p in CachingJob(
                    cfg.teacher, cfg.cache, load_template(cfg.cache.template),
                    load_dataset(cfg.data), store, cfg.teacher.model).plan()})
                held = keys[:16]
                with store.transaction() as c:
                    c.executemany("INSERT INTO leases VALUES (?, ?, 'fake-model', 0.0, ?)",
                                  [(k, f"{socket.gethostname()}:{other.pid}:gone",
                                    time.time() + 3600) for k in held])

            def kill_once_the_rest_is_sent():
                while sum(server.attempts.values()) < len(keys) - len(held):
                    time.sleep(0.02)
                time.sleep(0.3)  # this job is past the held keys, the queue empty
                other.send_signal(signal.SIGKILL)
                other.wait()
            killer = threading.Thread(target=kill_once_the_rest_is_sent)
            killer.start()
            summary = run_cache_job(cfg)
            killer.join()
    finally:
        other.kill()
    assert summary.report.leased_elsewhere == len(held)
    assert summary.report.sent == len(keys) and max(server.attempts.values()) == 1
    with CacheStore(tmp_path / "c") as store:
        assert store.ok_keys() == set(keys) and store.in_flight()["leases"] == []
