"""What the teacher client trusts: a redirect is followed only within the configured
server's origin (issue 25's trust boundaries)."""

from __future__ import annotations

import pytest

from teachers.sending import JobFailed
from tests.support.fake_openai import FakeOpenAI
from tests.support.teacher_env import api_teacher, run_job, tiny_data
from workbench.cache.store import CacheStore


def rows(cache):
    with CacheStore(cache) as store:
        return list(store.current().values())


def test_a_redirect_to_another_origin_is_refused_and_nothing_is_sent_there(tmp_path):
    data = tiny_data(tmp_path, n=8)
    with FakeOpenAI() as elsewhere:
        origin = elsewhere.base_url.removesuffix("/v1")
        with FakeOpenAI(lambda p: ["redirect"], redirect_to=origin) as server:
            with pytest.raises(JobFailed, match="no answer was ok"):
                run_job(api_teacher(server.base_url, max_retries=0), data, tmp_path / "c")
        assert elsewhere.bodies == []  # not one request reached the other server
    got = rows(tmp_path / "c")
    assert got and all(o.status == "bad_request" for o in got)
    assert all("another origin" in o.error and origin.split("//")[1] in o.error for o in got)


def test_a_redirect_within_the_origin_is_followed(tmp_path):
    data = tiny_data(tmp_path, n=8)
    with FakeOpenAI(lambda p: ["redirect", "ok"]) as server:
        run_job(api_teacher(server.base_url, max_retries=0), data, tmp_path / "c")
        assert server.behaviours["redirect"] == 8
    assert [o.status for o in rows(tmp_path / "c")] == ["ok"] * 8


# money ------------------------------------------------------------------------------

PRICE = 1e6  # $1 per input token (output is free): dollars = prompt tokens billed


def priced(server, **kw):
    tcfg = api_teacher(server.base_url, **kw)
    tcfg.price.input_per_mtok = PRICE
    return tcfg


def spent(cache) -> float:
    with CacheStore(cache) as store:
        return store.spent("fake-model")


@pytest.mark.parametrize("behaviour", ["nousage", "cutbill"])
def test_money_counted_is_never_below_money_billed(tmp_path, behaviour):
    """A server that bills but says no usage, or bills an answer whose body is cut short
    (retried, then answered): each such attempt is counted at the request's worst case
    (were $0: the cache counted less than was paid)."""
    data = tiny_data(tmp_path, n=20)
    with FakeOpenAI(lambda p: [behaviour, "ok"]) as server:
        run_job(priced(server, max_retries=2), data, tmp_path / "c")
    billed = server.billed_tokens_in * PRICE / 1e6
    assert billed > 0 and spent(tmp_path / "c") >= billed
    estimated = [o.meta["cost_estimated"] for o in rows(tmp_path / "c")]
    assert len(estimated) >= 15  # one row per distinct prompt
    if behaviour == "nousage":
        assert all(e["usage_missing"] and e["unseen_attempts"] == 0 for e in estimated)
    else:
        assert all(not e["usage_missing"] and e["unseen_attempts"] == 1 for e in estimated)


def test_answers_without_usage_are_held_to_the_budget(tmp_path):
    """budget_usd holds for a server that says no usage: each answer counts its worst
    case, so the job stops no later than with a server that does (was: all 40 sent)."""
    data = tiny_data(tmp_path, n=40)
    got = {}
    for b in ("slow", "nousage"):
        with FakeOpenAI(lambda p, b=b: [b]) as server:
            job = run_job(priced(server, budget_usd=300.0, max_concurrency=1), data, tmp_path / b)
        got[b] = (job.report.stopped, sum(server.billed_answers.values()),
                  server.billed_tokens_in * PRICE / 1e6)
    assert got["slow"][0] == got["nousage"][0] == "budget"
    assert 0 < got["nousage"][1] <= got["slow"][1] < 40
    assert got["nousage"][2] <= 300.0 and spent(tmp_path / "nousage") >= got["nousage"][2]


def test_negative_usage_is_a_bad_response_and_never_lowers_the_spend(tmp_path):
    data = tiny_data(tmp_path, n=10)
    with FakeOpenAI(lambda p: ["negusage"]) as server:
        with pytest.raises(JobFailed, match="no answer was ok"):
            run_job(priced(server, max_retries=0), data, tmp_path / "c")
    got = rows(tmp_path / "c")
    assert got and all(o.status == "bad_response" for o in got)
    assert all("usage.prompt_tokens=-40" in o.error for o in got)
    assert spent(tmp_path / "c") >= server.billed_tokens_in * PRICE / 1e6 > 0
