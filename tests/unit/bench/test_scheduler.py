"""The table scripts' scheduler (bench/scheduler.py, used by sched and small_data):
needs come first, at most ``jobs`` at once, done tasks are skipped, and a failure stops
the rest with the log named."""

import sys
from pathlib import Path

import pytest

from tests.support.paths import load_bench


@pytest.fixture(scope="module")
def sched():
    return load_bench("scheduler")


def task(mod, tmp: Path, name: str, needs=(), code: str = "pass"):
    """A real process that appends its start and end to ``order.txt``."""
    marker = tmp / f"{name}.done"
    order = tmp / "order.txt"
    body = (f"import time; open({str(order)!r}, 'a').write('{name}+\\n'); time.sleep(0.2); "
            f"{code}; open({str(order)!r}, 'a').write('{name}-\\n'); "
            f"open({str(marker)!r}, 'w').write('')")
    return mod.Task(name, [sys.executable, "-c", body], tmp / "logs" / f"{name}.log",
                    marker.is_file, tuple(needs))


def test_needs_come_first_and_done_tasks_are_skipped(sched, tmp_path, monkeypatch):
    monkeypatch.setattr(sched.time, "sleep", lambda s: None)  # scheduler's poll only
    tasks = [task(sched, tmp_path, "cache"), task(sched, tmp_path, "gold"),
             task(sched, tmp_path, "soft", needs=["cache"])]
    (tmp_path / "gold.done").write_text("")  # finished earlier: not run again
    sched.schedule(tasks, jobs=2)
    lines = (tmp_path / "order.txt").read_text().split()
    assert lines == ["cache+", "cache-", "soft+", "soft-"]


def test_one_job_runs_one_task_at_a_time(sched, tmp_path, monkeypatch):
    monkeypatch.setattr(sched.time, "sleep", lambda s: None)
    sched.schedule([task(sched, tmp_path, n) for n in ("a", "b")], jobs=1)
    assert (tmp_path / "order.txt").read_text().split() == ["a+", "a-", "b+", "b-"]


def test_a_failure_stops_the_run_and_names_the_log(sched, tmp_path):
    tasks = [task(sched, tmp_path, "bad", code="raise SystemExit(3)"),
             task(sched, tmp_path, "after", needs=["bad"])]
    with pytest.raises(SystemExit, match=r"bad failed \(exit 3\); see .*bad.log"):
        sched.schedule(tasks, jobs=2)
    assert not (tmp_path / "after.done").exists()


def test_cell_gives_mean_and_sample_std(sched):
    assert sched.cell([0.60, 0.62]) == "61.0 ± 1.4"
    assert sched.cell([0.631]) == "63.1"
    assert sched.cell([]) == "-"
