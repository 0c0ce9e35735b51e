"""The reliability suite: losing, hanging, storing garbage, leaking secrets, overspending.

Real components throughout: a real SQLite file (on a real small filesystem where the test
may mount one), the real ``openai_compat`` backend, and the fault-injecting HTTP server on
loopback (``tests/support/fake_openai.py``).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/reliability/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.reliability)


def mount_tmpfs(where: Path, size_kb: int) -> None:
    """Mount a ``size_kb`` tmpfs at ``where``, or skip the test saying why not."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; the injected disk-full tests cover the logic")
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(where)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}); the "
                    "injected disk-full tests cover the logic")


@pytest.fixture
def small_fs(tmp_path):
    """A real 4 MB filesystem (tmpfs) at ``tmp_path / 'fs'``, unmounted afterwards."""
    where = tmp_path / "fs"
    mount_tmpfs(where, 4096)
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def fill_disk(where: Path, leave_bytes: int) -> Path:
    """Write a ballast file so that about ``leave_bytes`` stay free on ``where``'s disk."""
    import shutil

    ballast = where / "ballast.bin"
    free = shutil.disk_usage(where).free
    with open(ballast, "wb") as f:
        f.write(b"\0" * max(0, free - leave_bytes))
    return ballast
