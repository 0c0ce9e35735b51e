"""Resumable table runs: commands with logs, run after what they need, at most ``jobs``
at once, each skipped when its ``done()`` says it has finished; and the ``mean ± std``
cell of a table. Used by the scripts that produce the tables of docs/results.md."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Task:
    """One command with a log, done when ``done()`` says so, after the tasks it needs."""

    def __init__(self, name: str, cmd: list[str], log: Path, done, needs: tuple[str, ...] = ()):
        self.name, self.cmd, self.log, self.done, self.needs = name, cmd, log, done, needs
        self.proc: subprocess.Popen | None = None
        self.t0 = 0.0

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        print(f"== start {self.name}: {' '.join(self.cmd[1:])}", flush=True)
        self.t0 = time.perf_counter()
        with open(self.log, "a") as logf:
            self.proc = subprocess.Popen(self.cmd, cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT)


def schedule(tasks: list[Task], jobs: int) -> None:
    """Run ``tasks`` (skipping done ones), at most ``jobs`` at once, each after its needs."""
    pending = [t for t in tasks if not t.done()]
    finished = {t.name for t in tasks} - {t.name for t in pending}
    running: list[Task] = []
    while pending or running:
        for t in list(pending):
            if len(running) < jobs and all(n in finished for n in t.needs):
                t.start()
                pending.remove(t)
                running.append(t)
        time.sleep(2)
        for t in list(running):
            rc = t.proc.poll()
            if rc is None:
                continue
            running.remove(t)
            if rc != 0:
                for other in running:
                    other.proc.terminate()
                raise SystemExit(f"{t.name} failed (exit {rc}); see {t.log}")
            print(f"== done {t.name} in {time.perf_counter() - t.t0:.0f} s", flush=True)
            finished.add(t.name)


def workbench() -> str:
    """The ``workbench`` command of the running interpreter's environment."""
    return str(Path(sys.executable).parent / "workbench")


def cell(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    """``mean ± sample std`` of ``values`` times ``scale`` (one value: itself; none: -)."""
    if not values:
        return "-"
    mean = scale * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {scale * statistics.stdev(values):.{digits}f}"
