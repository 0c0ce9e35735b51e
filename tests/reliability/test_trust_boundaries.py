"""What the cache and the teacher client trust: spill files only this cache's jobs wrote,
a redirect only within the configured server's origin, money never counted below what was
billed (issue 25's trust boundaries)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile

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
    else:  # priced at the answer that followed for the same prompt: tight, still not below
        assert all(not e["usage_missing"] and e["unseen_attempts"] == 1 for e in estimated)
        assert spent(tmp_path / "c") <= 1.02 * billed


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


# spill files ---------------------------------------------------------------------------

POISON = {"status": "ok", "error": "", "raw_text": "POISON", "description": "POISON",
          "soft_label": {"labels": ["negative", "neutral", "positive"], "values": [-1, 0, 1],
                         "probs": [0.0, 0.0, 1.0], "expected": 1.0, "variance": 0.0,
                         "entropy": 0.0, "off_label_mass": 0.0, "argmax": 2},
          "top_logprobs": None, "tokens_in": 1, "tokens_out": 1, "latency_s": 0.1,
          "cost_usd": -100.0, "retries": 0, "created_at": 1.0, "meta": {}}


def planted_lines(keys, **fields) -> str:
    return "".join(json.dumps({"attempt": f"a{i}", "teacher": "fake-model",
                               "output": {**POISON, "key": k, **fields}}) + "\n"
                   for i, k in enumerate(keys))


def test_planted_spill_files_are_never_imported(tmp_path, monkeypatch, caplog):
    """A neighbour plants answers (all probability on one label, cost -$100) where a
    cache's spills go: the shared temp folder the cache once used, the per-user fallback,
    the cache's own folder (old format, and signed with a guessed secret). None is stored,
    the spend and the budget hold, the job sends no more than it may, and the refused
    file is kept as .refused with a warning (was: stored as ok, spend -$299.99, 32 more
    paid requests, the file deleted)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    data = tiny_data(tmp_path, n=40)
    cache = tmp_path / "c"
    with FakeOpenAI() as server:
        first = run_job(priced(server, budget_usd=300.0, max_concurrency=1), data, cache)
        assert first.report.stopped == "budget"
        with CacheStore(cache) as store:
            answered = store.ok_keys()
            open_keys = sorted({r[0] for r in store.conn.execute("SELECT key FROM requests")}
                               - answered)
            before = store.spent("fake-model")
        digest = hashlib.sha256(str(cache.resolve()).encode()).hexdigest()[:16]
        shared = tmp_path / "tmp" / "workbench-spill" / digest  # where spills once went
        shared.mkdir(parents=True)
        (shared / "spill-planted.jsonl").write_text(planted_lines(open_keys[:3]))
        (cache / "spill-plain.jsonl").write_text(planted_lines(open_keys[3:6]))
        body = json.dumps({"attempt": "forged", "teacher": "fake-model",
                           "output": {**POISON, "key": open_keys[6]}})
        mac = hashlib.sha256(body.encode()).hexdigest()
        (cache / "spill-forged.jsonl").write_text(json.dumps({"body": body, "mac": mac}) + "\n")
        sent = sum(server.attempts.values())
        caplog.set_level(logging.INFO)
        again = run_job(priced(server, budget_usd=300.0, max_concurrency=1), data, cache)
        assert again.report.imported == 0
        assert sum(server.attempts.values()) == sent  # the budget still holds: nothing sent
    with CacheStore(cache) as store:
        assert store.spent("fake-model") == before
        assert store.ok_keys() == answered
        texts = {o.raw_text for o in store.current().values()}
    assert "POISON" not in texts
    assert (shared / "spill-planted.jsonl").exists()  # not ours: neither read nor deleted
    assert sorted(p.name for p in cache.glob("spill-*")) == [
        "spill-forged.jsonl.refused", "spill-plain.jsonl.refused"]
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert "not signed by this cache" in warned and "not a spill line" in warned


def test_a_spill_folder_others_can_write_is_not_read(tmp_path, monkeypatch, caplog):
    from workbench.cache.spill import fallback_dir, owned_dir

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    cache = tmp_path / "c"
    with CacheStore(cache) as store:
        store.add_requests("j", [("s1", "train", "k1", {"prompt": "x"})])
        fb = fallback_dir(cache)
        fb.mkdir(parents=True)
        os.chmod(fb, 0o777)
        (fb / "spill-x.jsonl").write_text("{}\n")
        with pytest.raises(PermissionError, match="writable by others"):  # nor written to
            owned_dir(fb)
        caplog.set_level(logging.WARNING)
        assert store.import_spills() == 0
    assert "writable by others" in caplog.text and (fb / "spill-x.jsonl").exists()


def test_a_signed_spill_is_imported_only_where_each_answer_is_valid(tmp_path, caplog):
    """Its own spill is imported and logged; a line with a negative cost, probabilities
    that are no distribution, or a key the cache never asked for is refused."""
    from workbench.cache.records import SoftLabel, TeacherOutput

    def label(probs):
        return SoftLabel(labels=["0", "1"], values=[0, 1], probs=probs, expected=0.5,
                         variance=0.25, entropy=0.69, off_label_mass=0.0, argmax=0)

    cache = tmp_path / "c"
    with CacheStore(cache) as store:
        store.add_requests("j", [(f"s{i}", "train", f"k{i}", {"prompt": str(i)}) for i in range(4)])
        store.spill([TeacherOutput(key="k0", status="ok", soft_label=label([0.3, 0.7]),
                                   cost_usd=0.25)], "fake-model")
        store.spill([TeacherOutput(key="k1", status="ok", cost_usd=-5.0),
                     TeacherOutput(key="k2", status="ok", soft_label=label([0.9, 0.9])),
                     TeacherOutput(key="k9", status="ok", cost_usd=0.1),
                     TeacherOutput(key="k3", status="timeout", cost_usd=0.5)], "fake-model")
        caplog.set_level(logging.INFO)
        assert store.import_spills() == 2
        assert store.ok_keys() == {"k0"} and store.spent("fake-model") == 0.75
    assert "imported 1 answers ($0.2500)" in caplog.text
    assert "cost_usd -5.0" in caplog.text and "not a distribution" in caplog.text
    assert "never requested" in caplog.text
    assert len(list(cache.glob("spill-*.refused"))) == 1 and not list(cache.glob("*.jsonl"))
