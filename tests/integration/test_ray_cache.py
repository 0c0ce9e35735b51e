"""The caching job's Ray engine (``cache.engine: ray``) on a real local Ray instance: the
same job through both engines gives the same cache; an actor killed mid-batch, a driver
killed mid-job and a budget shared by two actors lose nothing and pay nothing twice."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from teachers.run import run_cache_job
from teachers.sending import worst_price
from tests.support.fake_openai import FakeOpenAI
from tests.support.teacher_env import api_teacher, count_ok, tiny_data
from workbench.cache.store import CacheStore
from workbench.config import CacheConfig, CacheJobConfig, RayConfig, TeacherConfig

pytestmark = pytest.mark.integration


def faulty(prompt: str) -> list[str]:
    """Per prompt, fixed: most answered; some after a 429 or a broken body; some never
    (500s past the retries: a server_error row); some with no label (a no_label row)."""
    h = sum(prompt.encode()) % 10
    return {0: ["429", "ok"], 1: ["500"], 2: ["malformed", "ok"], 3: ["nolabel"]}.get(h, ["slow"])


def job(tcfg: TeacherConfig, data, cache: Path, engine: str, **ray) -> CacheJobConfig:
    return CacheJobConfig(data=data, teacher=tcfg, cache=CacheConfig(
        dir=str(cache), template="sentiment_polarity", max_error_rate=1.0, engine=engine,
        ray=RayConfig(**{"actors": 2, **ray})))


def rows(cache: Path) -> dict[str, tuple]:
    """key -> (status, soft label probabilities or None, cost) of each current answer."""
    with CacheStore(cache) as store:
        return {k: (o.status, o.soft_label.probs if o.soft_label else None, o.cost_usd)
                for k, o in store.current().items()}


def ok_duplicates(cache: Path) -> int:
    with sqlite3.connect(cache / "cache.sqlite") as c:
        return c.execute("SELECT COUNT(*) - COUNT(DISTINCT key) FROM outputs "
                         "WHERE status='ok'").fetchone()[0]


def assert_same_cache(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        (sa, pa, ca), (sb, pb, cb) = a[k], b[k]
        assert sa == sb, k
        assert (pa is None) == (pb is None), k
        if pa is not None:
            assert pa == pytest.approx(pb, abs=1e-5), k
        assert ca == pytest.approx(cb, rel=1e-9, abs=1e-12), k


def assert_engines_agree(tcfg: TeacherConfig, data, tmp: Path, **ray) -> None:
    """The job through both engines: every answer ok, and the same cache."""
    out = {}
    for engine in ("local", "ray"):
        run_cache_job(job(tcfg, data, tmp / engine, engine, **ray))
        out[engine] = rows(tmp / engine)
    assert all(s == "ok" for s, _, _ in out["local"].values())
    assert_same_cache(out["local"], out["ray"])


def test_both_engines_fill_the_same_cache_against_the_fault_server(tmp_path, ray_local):
    data = tiny_data(tmp_path, n=60)
    summaries, caches = {}, {}
    for engine in ("local", "ray"):
        with FakeOpenAI(faulty, slow_s=0.01) as server:
            tcfg = api_teacher(server.base_url, max_retries=1, requests_per_minute=6000,
                               tokens_per_minute=600_000)
            tcfg.price.input_per_mtok, tcfg.price.output_per_mtok = 2.0, 8.0
            summaries[engine] = run_cache_job(job(tcfg, data, tmp_path / engine, engine))
            caches[engine] = rows(tmp_path / engine)
    local, ray = caches["local"], caches["ray"]
    assert_same_cache(local, ray)
    kinds = {s for s, _, _ in local.values()}
    assert {"ok", "server_error", "no_label"} <= kinds  # the faults were met
    assert summaries["ray"].report.cost_usd == pytest.approx(summaries["local"].report.cost_usd)
    assert summaries["ray"].report.finished == summaries["local"].report.finished


def test_both_engines_agree_on_gemma_hf_local(tmp_path, ray_local):
    from workbench.models import gemma_hf_dir

    try:
        gemma_hf_dir()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    data = tiny_data(tmp_path, n=8)
    tcfg = TeacherConfig(backend="hf_local", model="gemma3-270m", api="completions",
                         device="cpu", batch_size=4, num_threads=1)
    assert_engines_agree(tcfg, data, tmp_path, num_cpus=1)


def test_an_actor_killed_mid_job_is_restarted_and_its_batch_sent_again(tmp_path, ray_local):
    import threading

    import ray

    data = tiny_data(tmp_path, n=60)
    calls, killed = [0], []

    def kill_actor_0() -> None:
        name = next(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                    if a["name"].startswith("workbench-teacher-") and a["name"].endswith("-0"))
        ray.kill(ray.get_actor(name, namespace="workbench-tests"), no_restart=False)
        killed.append(name)

    def schedule(prompt: str) -> list[str]:
        calls[0] += 1
        if calls[0] == 13:  # both actors have a batch at the server (answers take 0.3 s)
            threading.Thread(target=kill_actor_0).start()
        return ["slow"]

    with FakeOpenAI(schedule, slow_s=0.3) as server:
        tcfg = api_teacher(server.base_url, max_concurrency=4)
        tcfg.price.input_per_mtok = tcfg.price.output_per_mtok = 1.0
        summary = run_cache_job(job(tcfg, data, tmp_path / "c", "ray", batch_size=4))
    assert killed
    got = rows(tmp_path / "c")
    assert set(got) == set(summary.keys)  # every key answered: ok or an error row
    assert all(s == "ok" for s, _, _ in got.values())
    assert ok_duplicates(tmp_path / "c") == 0
    assert summary.report.answered == len(set(summary.keys))  # each answer counted once
    # the batches the kill took (the one at the server, the one queued behind it) were sent
    # again: the first one's prompts were asked twice, no others more than once; every
    # request of both counts the attempt that died as possibly billed (Ray cannot say how
    # far a dead actor got: the count is on the safe side, never below what was billed)
    twice = {p for p, n in server.attempts.items() if n > 1}
    assert 0 < len(twice) <= 4
    with CacheStore(tmp_path / "c") as store:
        estimated = {store.request(k)["prompt"] for k, o in store.current().items()
                     if o.meta.get("cost_estimated")}
    assert twice <= estimated and len(estimated) <= 2 * 4


def test_a_budget_shared_by_two_actors_stops_within_one_requests_price(tmp_path, ray_local):
    data = tiny_data(tmp_path, n=60)
    with FakeOpenAI(lambda p: ["slow"], slow_s=0.1) as server:
        tcfg = api_teacher(server.base_url, max_concurrency=8, budget_usd=500.0)
        tcfg.price.input_per_mtok = 1e6  # $1 per input token
        summary = run_cache_job(job(tcfg, data, tmp_path / "c", "ray"))
    assert summary.report.stopped == "budget"
    with CacheStore(tmp_path / "c") as store:
        one = max(worst_price(tcfg, p, 1) for p in _planned(store, summary.keys))
        spent = store.spent("fake-model")
    assert spent == pytest.approx(server.billed_tokens_in)
    assert 0.8 * 500 <= spent <= 500 + one, (spent, one)


def _planned(store, keys):
    from teachers.job import stored_requests

    job_id = store.jobs()[0]["job"]
    return stored_requests(store, job_id, list(dict.fromkeys(keys)))


def test_a_driver_killed_mid_job_resends_only_what_was_in_flight(tmp_path, ray_local):
    manifest_data = tiny_data(tmp_path, n=80)
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump({"path": manifest_data.path, "features": manifest_data.features}))
    with FakeOpenAI(lambda p: ["slow"], slow_s=0.1) as server:
        teacher = tmp_path / "teacher.yaml"
        teacher.write_text(yaml.safe_dump({"backend": "openai_compat", "model": "fake",
                                           "base_url": server.base_url, "api": "completions",
                                           "max_concurrency": 4}))
        cmd = [sys.executable, "-m", "workbench.cli", "cache", "run", "--teacher", str(teacher),
               "--data", str(data), "--template", "sentiment_polarity", "--cache",
               str(tmp_path / "c"), "--engine", "ray", "--ray-address", ray_local,
               "--ray-actors", "2"]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while count_ok(tmp_path / "c") < 20 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        time.sleep(1.0)  # the answers in flight at the kill reach the server
        before = dict(server.attempts)
        rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        twice = [p for p, n in server.attempts.items() if n > 1]
        unbroken = api_teacher(server.base_url, model="fake", max_concurrency=4)
        run_cache_job(job(unbroken, manifest_data, tmp_path / "u", "local"))
    got = rows(tmp_path / "c")
    assert all(s == "ok" for s, _, _ in got.values())
    assert_same_cache(got, rows(tmp_path / "u"))  # the same keys and soft labels
    assert ok_duplicates(tmp_path / "c") == 0
    from teachers.ray_pool import IN_FLIGHT, plan_pool

    plan = plan_pool(api_teacher("http://x/v1", max_concurrency=4), RayConfig(actors=2))
    in_flight = len(plan.configs) * IN_FLIGHT * plan.batch_size  # what the pool held at the kill
    assert all(before.get(p, 0) >= 1 for p in twice)  # only prompts the killed run had sent
    assert len(twice) <= in_flight, (len(twice), in_flight)


def test_ray_missing_is_one_clear_error_naming_the_extra(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from workbench.cli import app

    data = tiny_data(tmp_path, n=4)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if not installed
    res = CliRunner().invoke(app, ["cache", "run", "--data", data.path, "--cache",
                                   str(tmp_path / "c"), "--teacher", _teacher_yaml(tmp_path),
                                   "--engine", "ray"])
    assert res.exit_code == 2, res.output
    assert "msa-workbench[ray]" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "c").exists()  # nothing planned before the error


def _teacher_yaml(tmp: Path) -> str:
    p = tmp / "t.yaml"
    p.write_text(yaml.safe_dump({"backend": "openai_compat", "model": "fake",
                                 "base_url": "http://127.0.0.1:9/v1", "api": "completions"}))
    return str(p)


def test_the_pool_shares_an_api_teachers_limits_out_never_multiplies_them():
    from teachers.ray_pool import plan_pool

    tcfg = TeacherConfig(backend="openai_compat", model="m", base_url="http://x/v1",
                         max_concurrency=9, requests_per_minute=100, tokens_per_minute=10_001)
    plan = plan_pool(tcfg, RayConfig(actors=4))
    assert sum(c.max_concurrency for c in plan.configs) == 9
    assert sum(c.requests_per_minute for c in plan.configs) == 100
    assert sum(c.tokens_per_minute for c in plan.configs) == 10_001
    assert plan.num_cpus == 0.25 and plan.num_gpus == 0
    small = plan_pool(replace(tcfg, max_concurrency=3), RayConfig(actors=4))
    assert len(small.configs) == 3 and all(c.max_concurrency == 1 for c in small.configs)
    unlimited = plan_pool(replace(tcfg, requests_per_minute=0, tokens_per_minute=0),
                          RayConfig(actors=2))
    assert [c.requests_per_minute for c in unlimited.configs] == [0, 0]
    local = plan_pool(TeacherConfig(backend="hf_local", batch_size=6), RayConfig(actors=2))
    assert len(local.configs) == 2 and local.batch_size == 4 * 6 and local.num_cpus == 1.0
    assert [c.num_threads for c in local.configs] == [1, 1]  # not every core per actor
    wide = plan_pool(TeacherConfig(backend="hf_local"), RayConfig(actors=1, num_cpus=4))
    assert wide.configs[0].num_threads == 4


def test_an_api_teachers_rate_limits_hold_across_its_generate_calls(tmp_path):
    """An actor answers batch after batch, each one ``generate`` call: the window the
    limits count must carry over, or each batch would start with a fresh minute."""
    from teachers.base import TeacherRequest
    from teachers.openai_compat import OpenAICompatTeacher, RateLimiter

    with FakeOpenAI(lambda p: ["ok"]) as server:
        teacher = OpenAICompatTeacher(api_teacher(server.base_url, requests_per_minute=3))
        teacher.load()
        got = []
        for batch in (["a", "b"], ["c"]):
            teacher.generate([TeacherRequest(key=k, messages=[], prompt=f"say {k}",
                                             max_tokens=1) for k in batch],
                             lambda req, raw: got.append(raw.error_kind) or True)
    assert got == ["", "", ""]
    # the third request of the minute was counted by the second call's limiter; a fourth,
    # in a third call, has to wait for the window
    nxt = RateLimiter(3, 0, events=teacher._rate_events)
    assert len(nxt.events) == 3 and nxt._delay(1) > 50


def test_an_unreachable_cluster_is_one_clear_error_and_nothing_is_planned(tmp_path):
    from typer.testing import CliRunner

    from workbench.cli import app

    data = tiny_data(tmp_path, n=4)
    res = CliRunner().invoke(app, ["cache", "run", "--data", data.path, "--cache",
                                   str(tmp_path / "c"), "--teacher", _teacher_yaml(tmp_path),
                                   "--engine", "ray", "--ray-address", "127.0.0.1:1"])
    assert res.exit_code == 2, res.output
    assert "127.0.0.1:1" in res.output and "ray start --head" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "c").exists()


def test_the_error_rate_stop_works_the_same_through_ray(tmp_path, ray_local):
    from teachers.sending import JobFailed

    data = tiny_data(tmp_path, n=60)
    with FakeOpenAI(lambda p: ["500"]) as server:
        tcfg = api_teacher(server.base_url, max_retries=0)
        cfg = job(tcfg, data, tmp_path / "c", "ray")
        cfg.cache.max_error_rate = 0.2
        with pytest.raises(JobFailed, match="server_error"):
            run_cache_job(cfg)
    got = rows(tmp_path / "c")
    assert got and all(s == "server_error" for s, _, _ in got.values())  # stored, retryable
    assert sum(server.attempts.values()) == len(got) < 50  # stopped early, each sent once


def test_vllm_engine_actors_where_vllm_and_a_gpu_are_present(tmp_path, ray_local):
    pytest.importorskip("vllm", reason="vLLM is not installed here (it needs CUDA); the "
                        "vllm_engine actors run where it is")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: vllm_engine actors need a GPU each")
    from workbench.models import gemma_hf_dir

    data = tiny_data(tmp_path, n=8)
    tcfg = TeacherConfig(backend="vllm_engine", model=str(gemma_hf_dir()), api="completions",
                         gpu_memory_utilization=0.3, max_model_len=1024)
    assert_engines_agree(tcfg, data, tmp_path, actors=1)
