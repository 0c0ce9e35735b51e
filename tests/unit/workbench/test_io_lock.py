"""One process at a time inside ``file_lock``; the once-only model conversion runs once
when two jobs ask for it at the same moment."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from pathlib import Path

from workbench import models
from workbench.io import file_lock


def _hold(lock: str, log: str, tag: str) -> None:
    with file_lock(lock):
        with open(log, "a") as f:
            f.write(f"{tag} in\n")
        time.sleep(0.3)
        with open(log, "a") as f:
            f.write(f"{tag} out\n")


def test_two_processes_take_turns(tmp_path: Path) -> None:
    lock, log = tmp_path / "sub" / ".x.lock", tmp_path / "log.txt"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_hold, args=(str(lock), str(log), tag)) for tag in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(10)
        assert p.exitcode == 0
    lines = log.read_text().split()
    # each "in" is followed by its own "out": the blocks never overlap
    pairs = [(lines[i], lines[i + 2]) for i in range(0, len(lines), 4)]
    assert sorted(pairs) == [("a", "a"), ("b", "b")], lines


def test_gemma_conversion_runs_once_for_two_callers(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(models, "cache_home", lambda: tmp_path)
    calls = []

    def convert(target: Path) -> None:
        calls.append(target)
        time.sleep(0.3)  # the other caller arrives meanwhile and must wait, then reuse
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")
        (target / "tokenizer_config.json").write_text("{}")

    monkeypatch.setattr(models, "_convert_gemma", convert)
    got = []
    threads = [threading.Thread(target=lambda: got.append(models.gemma_hf_dir())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(calls) == 1
    assert got == [tmp_path / "models" / "gemma3-270m-hf"] * 2
