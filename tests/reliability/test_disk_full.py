"""Disk full on the API path: the first failed write stops new requests, answers still in
flight are kept (stored when possible, else spilled to a side file the next run imports),
the job ends with one message naming the cache and the space to free (exit 2), and the
rerun after freeing space completes without sending anything already answered."""

from __future__ import annotations

import contextlib
import sqlite3

import pytest
import yaml

from prompts import load_template
from teachers.job import CachingJob
from teachers.run import run_cache_job
from tests.reliability.conftest import fill_disk
from tests.support.fake_openai import FakeOpenAI
from tests.support.teacher_env import api_teacher, tiny_data
from workbench.cache.store import CacheFull, CacheStore
from workbench.config import CacheConfig, CacheJobConfig, to_dict
from workbench.data import load_dataset

PRICE = 1e6  # $1 per input token: the money is the server's billed prompt tokens


def job_config(server, data, cache_dir, **teacher) -> CacheJobConfig:
    tcfg = api_teacher(server.base_url, max_concurrency=8, **teacher)
    tcfg.price.input_per_mtok = PRICE
    return CacheJobConfig(data=data, teacher=tcfg,
                          cache=CacheConfig(dir=str(cache_dir), template="sentiment_polarity",
                                            max_error_rate=1.0))


def assert_complete_and_unduplicated(server, cache_dir, job_id):
    """Every key ok, no prompt answered twice, and the cache counted what was billed."""
    assert max(server.billed_answers.values()) == 1, "an answered request was sent again"
    with CacheStore(cache_dir) as store:
        st = store.status(job_id)
        spent = store.spent(store.jobs()[0]["teacher"])
        assert store.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert st["ok"] == st["keys"] and st["pending"] == 0
    assert spent == pytest.approx(server.billed_tokens_in)
    assert st["cost_usd"] == pytest.approx(server.billed_tokens_in)


def test_full_tmpfs_stops_keeps_answers_and_resumes(tmp_path, small_fs):
    data = tiny_data(tmp_path, n=150)
    cache_dir = small_fs / "cache"
    ballast = None

    @contextlib.contextmanager
    def fill_after_planning(total, label):  # entered after planning, before sending
        nonlocal ballast
        ballast = fill_disk(small_fs, leave_bytes=48 * 1024)
        yield lambda report, out: None

    with FakeOpenAI(lambda p: ["slow"], slow_s=0.02) as server:
        cfg = job_config(server, data, cache_dir)
        with pytest.raises(CacheFull) as exc:
            run_cache_job(cfg, progress=fill_after_planning)
        msg = str(exc.value)
        assert exc.value.exit_code == 2
        assert str(cache_dir) in msg and "disk is full" in msg and "Free at least" in msg
        sent_first = sum(server.attempts.values())
        with CacheStore(cache_dir) as store:
            job_id = store.jobs()[0]["job"]
            stored_first = store.status(job_id)["ok"]
        # the first failed write stopped sending: at most the requests in flight went after it
        assert stored_first < sent_first <= stored_first + 8 + 8 + 1
        ballast.unlink()  # free the space
        summary = run_cache_job(cfg)
    assert summary.report.imported + stored_first == sent_first  # every paid answer kept
    assert_complete_and_unduplicated(server, cache_dir, job_id)


def cap_pages(monkeypatch, extra_pages: int) -> None:
    """Every store opened from now on gets SQLite's own "database or disk is full" after
    ``extra_pages`` more pages (``PRAGMA max_page_count``): the real error, without a mount."""
    real_init = CacheStore.__init__

    def init(self, *a, **kw):
        real_init(self, *a, **kw)
        pages = self.conn.execute("PRAGMA page_count").fetchone()[0]
        self.conn.execute(f"PRAGMA max_page_count={pages + extra_pages}")

    monkeypatch.setattr(CacheStore, "__init__", init)


def test_injected_sqlite_full_spills_and_the_rerun_imports(tmp_path, monkeypatch):
    data = tiny_data(tmp_path, n=120)
    cache_dir = tmp_path / "cache"
    with FakeOpenAI(lambda p: ["slow"], slow_s=0.02) as server:
        cfg = job_config(server, data, cache_dir)
        with CacheStore(cache_dir) as store:  # plan with room, then cap the file
            job = CachingJob(cfg.teacher, cfg.cache, load_template(cfg.cache.template),
                             load_dataset(cfg.data), store, cfg.teacher.model)
            job.plan()
        cap_pages(monkeypatch, extra_pages=12)
        with pytest.raises(CacheFull, match="disk is full.*Free at least [0-9.]+ MB"):
            run_cache_job(cfg)
        spills = list(cache_dir.glob("spill-*.jsonl"))
        assert spills, "the answers the full database refused were not spilled"
        sent_first = sum(server.attempts.values())
        monkeypatch.undo()
        summary = run_cache_job(cfg)
        assert summary.report.imported > 0 and not list(cache_dir.glob("spill-*.jsonl"))
        assert summary.report.sent == summary.todo - summary.report.imported
        assert sum(server.attempts.values()) == sent_first + summary.report.sent
    assert_complete_and_unduplicated(server, cache_dir, job.job_id)


def test_cli_on_a_full_disk_exits_2_with_one_message(tmp_path, small_fs):
    from typer.testing import CliRunner

    from workbench.cli import app

    data = tiny_data(tmp_path, n=80)
    cache_dir = small_fs / "cache"
    with FakeOpenAI() as server:
        cfg = job_config(server, data, cache_dir)
        with CacheStore(cache_dir) as store:
            CachingJob(cfg.teacher, cfg.cache, load_template(cfg.cache.template),
                       load_dataset(cfg.data), store, cfg.teacher.model).plan()
        recipe = tmp_path / "job.yaml"
        recipe.write_text(yaml.safe_dump(to_dict(cfg)))
        fill_disk(small_fs, leave_bytes=48 * 1024)
        r = CliRunner().invoke(app, ["cache", "run", "--config", str(recipe)])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and "Task exception" not in r.output
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(cache_dir) in r.output.replace("\n", "") and "MB" in errors[0]


def test_wal_stays_bounded_and_the_disk_needed_is_known(tmp_path):
    """The rule in docs/reliability.md (Disk): a job needs its final database plus about
    1.5 MiB."""
    data = tiny_data(tmp_path, n=250)
    cache_dir = tmp_path / "cache"
    peak = {"wal": 0, "total": 0}

    @contextlib.contextmanager
    def watch(total, label):
        wal = cache_dir / "cache.sqlite-wal"
        db = cache_dir / "cache.sqlite"

        def on_answer(report, out):
            w = wal.stat().st_size if wal.exists() else 0
            peak["wal"] = max(peak["wal"], w)
            peak["total"] = max(peak["total"], w + db.stat().st_size)
        yield on_answer

    with FakeOpenAI() as server:
        run_cache_job(job_config(server, data, cache_dir), progress=watch)
    final_db = (cache_dir / "cache.sqlite").stat().st_size
    assert peak["wal"] <= 1.5 * 2**20, peak
    assert peak["total"] <= final_db + 1.5 * 2**20, (peak, final_db)
    with sqlite3.connect(cache_dir / "cache.sqlite") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
