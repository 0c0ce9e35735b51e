"""`workbench cache merge` of caches that answered the same keys differently: the conflicts
are reported (how many, which keys), the first merged answer is kept, and every dollar
each source paid stays counted in the destination's spend.

Two real caching jobs against the fake OpenAI server fill two caches for the same data and
teacher (so the same keys); for the second, the server answers a different label for about
half the prompts. Both bill like a paid API.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from typer.testing import CliRunner

from tests.support import fake_openai
from tests.support.fake_openai import LABELS, FakeOpenAI, label_for
from tests.support.teacher_env import api_teacher, run_job, tiny_data
from workbench.cache.store import CacheStore
from workbench.cli import app

runner = CliRunner()
PRICE = 1e4  # $0.01 per input token
TEACHER = "fake-model"


def _flipped(prompt: str) -> bool:
    return int(hashlib.sha1(prompt.encode()).hexdigest(), 16) % 2 == 0


def _other_label(prompt: str) -> str:
    """Another answer than the first server's, for about half the prompts."""
    label = label_for(prompt)
    return LABELS[(LABELS.index(label) + 1) % 3] if _flipped(prompt) else label


def _fill(cache, data) -> float:
    """One caching job into ``cache``; the dollars the server billed it."""
    with FakeOpenAI() as server:
        tcfg = api_teacher(server.base_url)
        tcfg.price.input_per_mtok = PRICE
        job = run_job(tcfg, data, cache)
    assert job.report.ok == job.report.unique_keys > 0
    return server.billed_tokens_in * PRICE / 1e6


@pytest.fixture
def two_caches(tmp_path, monkeypatch):
    data = tiny_data(tmp_path, n=16)
    paid_a = _fill(tmp_path / "a", data)
    monkeypatch.setattr(fake_openai, "label_for", _other_label)
    paid_b = _fill(tmp_path / "b", data)
    monkeypatch.undo()
    with CacheStore(tmp_path / "a") as a, CacheStore(tmp_path / "b") as b:
        ans_a = {k: o.raw_text for k, o in a.current().items()}
        ans_b = {k: o.raw_text for k, o in b.current().items()}
        assert a.spent(TEACHER) == pytest.approx(paid_a) and b.spent(TEACHER) == pytest.approx(paid_b)
    assert set(ans_a) == set(ans_b)  # the same keys, answered twice
    differ = sorted(k for k in ans_a if ans_a[k] != ans_b[k])
    assert 0 < len(differ) < len(ans_a)  # some answers differ, some agree
    return tmp_path, ans_a, differ, paid_a + paid_b


def test_merge_reports_conflicts_and_counts_every_sources_spend(two_caches):
    tmp_path, ans_a, differ, paid = two_caches
    dest = tmp_path / "merged"
    r = runner.invoke(app, ["cache", "merge", str(dest), str(tmp_path / "a"), str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    # per source, and in the closing summary: how many, and which (a few) keys
    assert f"{len(differ)} key(s) with a different ok answer" in out, out  # the log
    assert f"{len(differ)} key(s) answered differently" in out  # the source's line
    assert differ[0] in out
    summary = out.split(str(dest))[-1]
    assert f"{len(differ)} conflicting" in summary and f"${paid:.4f}" in summary, out
    with CacheStore(dest) as m:
        assert m.spent(TEACHER) == pytest.approx(paid)  # both sources paid; both count
        assert m.status()["cost_usd"] == pytest.approx(paid, abs=1e-6)
        assert {k: o.raw_text for k, o in m.current().items()} == ans_a  # the first stays
        rows = m.count_rows()
    # cache status shows what was paid over all sources
    st = runner.invoke(app, ["cache", "status", str(dest), "--json"])
    assert st.exit_code == 0, st.output
    status = json.loads(st.output)
    assert status["in_flight"]["spend_usd"][TEACHER] == pytest.approx(paid)
    assert status["total"]["cost_usd"] == pytest.approx(paid, abs=1e-6)
    # merging again adds nothing, reports no new conflict, and pays nothing twice
    again = runner.invoke(app, ["cache", "merge", str(dest), str(tmp_path / "b")])
    assert again.exit_code == 0, again.output
    again_out = " ".join(again.output.split())
    assert "0 attempts added" in again_out and "different ok answer" not in again_out
    with CacheStore(dest) as m:
        assert m.count_rows() == rows and m.spent(TEACHER) == pytest.approx(paid)


def test_merge_from_returns_the_conflicts(two_caches):
    tmp_path, ans_a, differ, paid = two_caches
    with CacheStore(tmp_path / "m") as m:
        first = m.merge_from(tmp_path / "a")
        second = m.merge_from(tmp_path / "b")
        assert first["conflicts"] == 0 and first["same_answers"] == 0
        assert second["conflicts"] == len(differ)
        assert second["same_answers"] == len(ans_a) - len(differ)
        assert second["conflict_keys"] == differ[: len(second["conflict_keys"])]
        assert m.spent(TEACHER) == pytest.approx(paid)
