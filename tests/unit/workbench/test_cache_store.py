import threading
import time

import pyarrow.parquet as pq
import pytest

from workbench.cache import CacheError, CacheStore, JobSpec, SoftLabel, TeacherOutput
from workbench.cache.export import export
from workbench.cache.join import teacher_view


def spec(template="sentiment_polarity", fp="fp1", gold=False, teacher="m@1"):
    return JobSpec(template=template, template_version=1, template_hash="h", uses_gold_label=gold,
                   output="soft_label", teacher=teacher, backend="hf_local", decoding={"t": 0},
                   data_name="d", data_fingerprint=fp)


def sl(p):
    return SoftLabel(labels=["n", "p"], values=[-1, 1], probs=[1 - p, p], expected=2 * p - 1,
                     variance=0.0, entropy=0.0, off_label_mass=0.0, argmax=int(p > 0.5))


def fill(store, sp, samples, statuses):
    job = store.register_job(sp)
    prefix = "k" if sp.template == "sentiment_polarity" else sp.template
    store.add_requests(job, [(sid, split, f"{prefix}_{sid}", {"prompt": sid, "messages": [], "media": {}})
                             for sid, split in samples])
    for (sid, _), st in zip(samples, statuses, strict=True):
        store.put(TeacherOutput(key=f"{prefix}_{sid}", status=st, soft_label=sl(0.8) if st == "ok" else None,
                                error="" if st == "ok" else "boom", tokens_in=10, tokens_out=1,
                                cost_usd=0.01, created_at=time.time()))
    return job


SAMPLES = [("a", "train"), ("b", "train"), ("c", "valid"), ("d", "test")]


def test_ok_once_current_and_status(tmp_path):
    with CacheStore(tmp_path) as store:
        job = fill(store, spec(), SAMPLES, ["ok", "timeout", "ok", "no_label"])
        assert store.put(TeacherOutput(key="k_a", status="ok", soft_label=sl(0.1))) is False
        store.put(TeacherOutput(key="k_b", status="server_error", error="x", created_at=time.time() + 1))
        cur = store.current(job)
        assert cur["k_a"].soft_label.probs == pytest.approx([0.2, 0.8])  # the first ok stays
        assert cur["k_b"].status == "server_error"  # latest error is current
        st = store.status(job)
        # the second ok answer for k_a was paid for: it stays as a duplicate attempt
        assert [o.status for o in store.attempts("k_a")] == ["ok", "duplicate"]
        assert st == {**st, "keys": 4, "ok": 2, "errors": {"no_label": 1, "server_error": 1},
                      "pending": 0, "attempts": 6}
        assert st["cost_usd"] == pytest.approx(0.04)
        assert store.error_keys(["no_label"], job) == ["k_d"]
        store.put(TeacherOutput(key="k_b", status="ok", soft_label=sl(0.6)))
        assert store.current(job)["k_b"].ok and store.status(job)["ok"] == 3
        assert len(store.attempts("k_b")) == 3
    assert (tmp_path / "manifest.json").is_file()


def test_merge_is_idempotent(tmp_path):
    with CacheStore(tmp_path / "a") as a:
        fill(a, spec(), SAMPLES[:2], ["ok", "timeout"])
    with CacheStore(tmp_path / "b") as b:
        fill(b, spec(), SAMPLES[2:], ["ok", "ok"])
    with CacheStore(tmp_path / "m") as m:
        m.merge_from(tmp_path / "a")
        m.merge_from(tmp_path / "b")
        n = m.count_rows()
        assert m.merge_from(tmp_path / "a") == {"attempts_added": 0, "conflicts": 0,
                                                 "conflict_keys": [], "same_answers": 0}
        assert m.count_rows() == n == 4
        assert m.status()["ok"] == 3 and len(m.jobs()) == 1
    with pytest.raises(CacheError, match="no cache"):
        CacheStore(tmp_path / "m").merge_from(tmp_path / "nope")


def test_export_parquet_and_hf(tmp_path):
    with CacheStore(tmp_path / "c") as store:
        fill(store, spec(), SAMPLES, ["ok", "timeout", "ok", "ok"])
        assert export(store, tmp_path / "out.parquet") == 4
        export(store, tmp_path / "hf", "hf")
    t = pq.read_table(tmp_path / "out.parquet").to_pylist()
    by = {r["sample_id"]: r for r in t}
    assert by["a"]["status"] == "ok" and by["a"]["soft_probs"] == pytest.approx([0.2, 0.8])
    assert by["b"]["status"] == "timeout" and by["b"]["soft_probs"] is None
    from datasets import load_dataset

    hf = load_dataset(str(tmp_path / "hf"), cache_dir=str(tmp_path / "hf_cache"))
    assert {s: hf[s].num_rows for s in hf} == {"train": 2, "valid": 1, "test": 1}
    assert (tmp_path / "hf" / "README.md").is_file()


def test_join_guards(tmp_path):
    with CacheStore(tmp_path) as store:
        fill(store, spec(), SAMPLES, ["ok", "ok", "ok", "timeout"])
        fill(store, spec(template="context_aware_gold", gold=True), SAMPLES, ["ok"] * 4)
    splits = dict(SAMPLES)
    view = teacher_view(tmp_path, splits, "fp1", template="sentiment_polarity")
    assert sorted(view.outputs) == ["a", "b", "c"] and view.ok_fraction == 0.75
    with pytest.raises(CacheError, match=r"3 of 4 samples \(75.0%\) < min_ok_fraction=90%"):
        teacher_view(tmp_path, splits, "fp1", template="sentiment_polarity", min_ok_fraction=0.9)
    with pytest.raises(CacheError, match="made from other data.*fp2.*fp1"):
        teacher_view(tmp_path, splits, "fp2", template="sentiment_polarity")
    with pytest.raises(CacheError, match="no job for template='sentiment_score'.*it holds"):
        teacher_view(tmp_path, splits, "fp1", template="sentiment_score")
    with pytest.raises(CacheError, match=r"showed the gold label.*\['test', 'valid'\]"):
        teacher_view(tmp_path, splits, "fp1", template="context_aware_gold")
    train_only = {k: v for k, v in splits.items() if v == "train"}
    assert len(teacher_view(tmp_path, train_only, "fp1", template="context_aware_gold").outputs) == 2
    with pytest.raises(CacheError, match="no cache"):
        teacher_view(tmp_path / "absent", splits, "fp1", template="x")


def test_connections_opening_one_new_cache_at_once_all_succeed(tmp_path):
    """Switching a new database to WAL makes SQLite answer *locked* at once (no busy
    wait) to the others opening it at that moment; the store waits its turn instead."""
    for round_ in range(150):
        cache, errors = tmp_path / f"c{round_}", []
        start = threading.Barrier(3)

        def one(cache=cache, start=start, errors=errors):
            start.wait()
            try:
                CacheStore(cache).close()
            except Exception as e:  # noqa: BLE001 - reported by the assert below
                errors.append(e)
        threads = [threading.Thread(target=one) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, (round_, errors)


def test_retry_busy_gives_up_after_its_timeout_and_passes_other_errors():
    import sqlite3

    from workbench.cache.db import retry_busy
    calls = []

    def locked():
        calls.append(1)
        raise sqlite3.OperationalError("database is locked")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        retry_busy(locked, timeout_s=0.05)
    assert len(calls) > 1

    def broken():
        calls.append(2)
        raise sqlite3.OperationalError("no such table: x")
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        retry_busy(broken, timeout_s=5)
    assert calls.count(2) == 1
