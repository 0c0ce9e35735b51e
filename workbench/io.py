"""Atomic writes: one helper for files and one for directories.

A reader (or a process that starts after a crash) sees either the old content or the new,
never a half-written file or directory. Temporaries live beside the target (same
filesystem, so the final rename is atomic) under one scheme: ``.<name>.tmp-<pid>-<thread>`` for a
file (several processes may write the same file), ``.<name>.tmp`` for a directory (all
ranks of a distributed run write into the same one), ``.<name>.old`` for the directory
being replaced. A leftover is hidden and never mistaken for a result.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path


def temp_path(target: Path) -> Path:
    """The temporary sibling of the file ``target`` this thread writes before renaming (two
    jobs in one process may write the same file at once)."""
    return target.with_name(f".{target.name}.tmp-{os.getpid()}-{threading.get_ident()}")


def temp_dir(target: str | Path) -> Path:
    """The temporary sibling of the directory ``target`` (the same name in every process)."""
    target = Path(target)
    return target.with_name(f".{target.name}.tmp")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (parents created); returns ``path``."""
    with atomic_file(path) as tmp, tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (parents created); returns ``path``."""
    return atomic_write_bytes(path, text.encode(encoding))


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write (by any library); on success it replaces ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(target)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory; on success it replaces the directory ``path``.

    The old directory (if any) is renamed aside first and removed after the swap, so
    ``path`` is at every moment either the complete old or the complete new directory (or,
    for the instant between the two renames, absent; :func:`recover_dir` restores the old
    one after a crash in that instant). On an exception the temporary directory is
    removed and ``path`` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = fresh_temp_dir(target)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    swap_dir(tmp, target)


def fresh_temp_dir(target: str | Path) -> Path:
    """An empty :func:`temp_dir` of ``target`` (a leftover removed, a crashed swap undone)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(target)
    tmp = temp_dir(target)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def swap_dir(tmp: str | Path, target: str | Path) -> None:
    """Put the finished directory ``tmp`` in place of ``target`` (the old one removed)."""
    tmp, target = Path(tmp), Path(target)
    old = old_path(target)
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    if old.exists():
        shutil.rmtree(old)


def old_path(target: Path) -> Path:
    """Where :func:`atomic_dir` keeps the previous directory during the swap."""
    return target.with_name(f".{target.name}.old")


def recover_dir(target: str | Path) -> None:
    """After a crash between :func:`atomic_dir`'s two renames: put the old one back."""
    target = Path(target)
    old = old_path(target)
    if old.exists():
        if target.exists():
            shutil.rmtree(old)
        else:
            os.replace(old, target)


def remove_dir(target: str | Path) -> None:
    """Remove ``target`` and any temporary or previous copy :func:`atomic_dir` left."""
    target = Path(target)
    for p in (target, old_path(target), temp_dir(target)):
        if p.exists():
            shutil.rmtree(p)


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[Path]:
    """Hold an exclusive advisory lock on the file ``path`` (created) for the block: one
    process at a time does what is inside (e.g. a once-only conversion that two jobs started
    at the same moment would both write into the same temporary directory). Released when
    the block ends or the process dies."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield path
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
