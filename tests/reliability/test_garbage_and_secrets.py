"""Garbage is never stored as ok (NaN or non-normalisable log-probabilities), the join
refuses ok rows that are not distributions, and no secret reaches the cache, the export
or the log."""

from __future__ import annotations

import logging
import math

import pytest

from teachers.openai_compat import ERROR_CHARS, error_text
from teachers.sending import JobFailed
from teachers.softlabel import BadLogprobs, soft_label
from tests.support.fake_openai import FakeOpenAI
from tests.support.teacher_env import api_teacher, run_job, tiny_data
from workbench.cache.export import export
from workbench.cache.join import teacher_view
from workbench.cache.records import SoftLabel, TeacherOutput
from workbench.cache.scrub import register_secret, scrub
from workbench.cache.store import CacheError, CacheStore

LABELS, VALUES = ["negative", "neutral", "positive"], [-1.0, 0.0, 1.0]


def every_other(behaviour):
    seen = []

    def schedule(prompt):
        if prompt not in seen:
            seen.append(prompt)
        return [behaviour] if seen.index(prompt) % 2 == 0 else ["ok"]
    return schedule


def test_nan_logprobs_are_a_bad_response_row(tmp_path):
    data = tiny_data(tmp_path, n=16)
    with FakeOpenAI(every_other("nan")) as server:
        job = run_job(api_teacher(server.base_url, max_retries=0), data, tmp_path / "c")
        nan_sent = server.behaviours["nan"]
    with CacheStore(tmp_path / "c") as store:
        st = store.status(job.job_id)
        outs = store.current(job.job_id).values()
    assert nan_sent > 0 and st["errors"] == {"bad_response": nan_sent}
    assert all(math.isfinite(p) for o in outs if o.ok for p in o.soft_label.probs)
    assert all("not valid" in o.error for o in outs if not o.ok)


@pytest.mark.parametrize("top", [
    [[" positive", float("nan")], [" negative", -1.0]],      # NaN
    [[" positive", 0.5], [" negative", -1.0]],               # a probability above 1
    [[" positive", -0.1], [" negative", -0.2], [" neutral", -0.3]],  # sums to 2.4
])
def test_logprobs_that_are_no_distribution_are_refused(top):
    with pytest.raises(BadLogprobs):
        soft_label([{"token": top[0][0], "logprob": top[0][1], "top": top}], LABELS, VALUES)


def test_the_join_refuses_an_ok_row_that_is_not_a_distribution(tmp_path):
    data = tiny_data(tmp_path, n=8)
    with FakeOpenAI() as server:
        job = run_job(api_teacher(server.base_url), data, tmp_path / "c")
    with CacheStore(tmp_path / "c") as store:  # written directly: the job stores it as bad_response
        spec = store.jobs()[0]
        sids = {sid: split for sid, (split, _) in store.sample_keys(job.job_id).items()}
        key = store.sample_keys(job.job_id)[next(iter(sids))][1]
        store.conn.execute("DELETE FROM outputs WHERE key=?", (key,))
        nan = float("nan")
        store.put(TeacherOutput(key=key, status="ok", soft_label=SoftLabel(
            LABELS, VALUES, [nan, nan, nan], nan, nan, nan, 0.0, 0)))
    with pytest.raises(CacheError) as exc:
        teacher_view(tmp_path / "c", sids, spec["data_fingerprint"], template=spec["template"])
    msg = str(exc.value)
    assert str(tmp_path / "c") in msg and job.job_id in msg and key in msg


SECRET = "wbtest-0a1b2c3d4e5f-DO-NOT-STORE"  # no token shape: only the registered value finds it


def test_secrets_echoed_by_the_server_are_never_stored_exported_or_logged(tmp_path, monkeypatch,
                                                                         caplog):
    monkeypatch.setenv("WB_RELIABILITY_KEY", SECRET)
    data = tiny_data(tmp_path, n=20)
    caplog.set_level(logging.DEBUG)
    with FakeOpenAI(every_other("echo401")) as server:  # 401 bodies and ok texts echo the key
        run_job(api_teacher(server.base_url, api_key_env="WB_RELIABILITY_KEY", max_retries=0),
                data, tmp_path / "c")
        assert server.behaviours["echo401"] > 0
    with FakeOpenAI(lambda p: ["echo"]) as server:
        run_job(api_teacher(server.base_url, api_key_env="WB_RELIABILITY_KEY", model="m2"),
                data, tmp_path / "c")
    with CacheStore(tmp_path / "c") as store:
        texts = [o.error + o.raw_text for o in store.current().values()]
        export(store, tmp_path / "out.parquet")
    assert any("[REDACTED]" in t for t in texts)  # the echoes were there, and were scrubbed
    for f in [*(tmp_path / "c").rglob("*"), tmp_path / "out.parquet"]:
        if f.is_file():
            blob = f.read_bytes()
            assert SECRET.encode() not in blob and b"Bearer " + SECRET.encode() not in blob, f
    assert SECRET not in caplog.text


def test_a_secret_across_the_error_texts_cut_is_scrubbed_whole(tmp_path, monkeypatch):
    """The server's 401 echoes the key at 70 offsets around where the stored error text is
    cut (ERROR_CHARS): no row keeps any 8 characters of it (the text was cut, then
    scrubbed: a key across the cut lost its tail, was no longer the registered value, and
    34 of its 35 characters were stored)."""
    monkeypatch.setenv("WB_RELIABILITY_KEY", SECRET)
    data = tiny_data(tmp_path, n=70)
    with FakeOpenAI(lambda p: ["echo401"], echo_pads=list(range(170, 240))) as server:
        with pytest.raises(JobFailed, match="no answer was ok"):  # every answer is a 401
            run_job(api_teacher(server.base_url, api_key_env="WB_RELIABILITY_KEY",
                                max_retries=0, max_concurrency=1), data, tmp_path / "c")
    with CacheStore(tmp_path / "c") as store:
        errors = [o.error for o in store.current().values()]
    assert len(errors) >= 60 and all(len(e) <= ERROR_CHARS + 3 for e in errors)
    assert any(e.endswith("...") for e in errors)  # the texts were long enough to be cut
    pieces = {SECRET[i:i + 8] for i in range(len(SECRET) - 7)}
    leaked = [e for e in errors if any(p in e for p in pieces)]
    assert not leaked, leaked[:2]


@pytest.mark.parametrize("offset", range(ERROR_CHARS - 45, ERROR_CHARS + 5))
def test_error_text_scrubs_before_it_cuts(offset):
    register_secret(SECRET)
    e = ValueError("x" * offset + SECRET + " tail")
    text = error_text(e, timeout_s=1.0)
    assert SECRET[:8] not in text and SECRET[-8:] not in text
    assert len(text) <= ERROR_CHARS + 3


def test_token_shaped_strings_are_scrubbed():
    text = ("Incorrect API key provided: sk-proj-AbC123dEf456GhI789. "
            "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig; sk_live_51Hxyzabcdef")
    out = scrub(text)
    assert "AbC123" not in out and "eyJhbG" not in out and "51Hxyz" not in out
    assert out.count("[REDACTED]") == 3 and out.startswith("Incorrect API key provided: ")
    assert scrub("a sketch of sk-8 and task-force") == "a sketch of sk-8 and task-force"
