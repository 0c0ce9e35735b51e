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
