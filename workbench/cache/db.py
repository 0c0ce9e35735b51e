"""The cache's SQLite connection, and the one place a damaged database file becomes a
:class:`CacheError`.

A ``cache.sqlite`` that is not a database (``SQLITE_NOTADB``) or whose pages are damaged
(``SQLITE_CORRUPT``: a truncated copy, a disk fault) can surface on any statement or on
any row fetched, long after the file was opened. :func:`connect` returns a connection
whose statements and cursors turn exactly those two errors into one :class:`CacheError`
naming the file and what to do; every other SQLite error (locked, disk full, a broken
constraint) passes through unchanged for the code that handles it.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from workbench.errors import WorkbenchError

DAMAGE = ("SQLITE_CORRUPT", "SQLITE_NOTADB")
"""SQLite result codes of a file that is damaged or is not a database."""

_DAMAGE_TEXT = ("file is not a database", "database disk image is malformed",
                "malformed database schema")
"""The same, as SQLite words them (``sqlite_errorname`` is Python 3.11+)."""


class CacheError(WorkbenchError, RuntimeError):
    """The cache directory is missing, unreadable, or does not match what was asked."""


def is_damage(e: BaseException) -> bool:
    """Whether ``e`` says the database file is damaged or is not a database."""
    if not isinstance(e, sqlite3.DatabaseError):
        return False
    name = getattr(e, "sqlite_errorname", None)
    if name is not None:  # extended codes too: SQLITE_CORRUPT_INDEX, ...
        return name.startswith(DAMAGE)
    return any(t in str(e) for t in _DAMAGE_TEXT)


def damaged(db: Path | str, e: BaseException) -> CacheError:
    """The :class:`CacheError` for a damaged ``db`` (``e`` is SQLite's own words)."""
    return CacheError(
        f"{db}: {e}: the cache file is damaged or is not a workbench cache. Restore it from a "
        f"copy (or merge the shards it was made from again); `sqlite3 {db} .recover` may "
        "salvage its rows; or move it aside and rerun the job, which asks the teacher again")


def _reraise(db: Path | str, e: sqlite3.DatabaseError) -> NoReturn:
    if is_damage(e):
        raise damaged(db, e) from None
    raise e


class _Cursor(sqlite3.Cursor):
    def execute(self, *args: Any) -> _Cursor:
        try:
            return super().execute(*args)
        except sqlite3.DatabaseError as e:
            _reraise(self.connection.db_path, e)

    def executemany(self, *args: Any) -> _Cursor:
        try:
            return super().executemany(*args)
        except sqlite3.DatabaseError as e:
            _reraise(self.connection.db_path, e)

    def fetchone(self) -> Any:
        try:
            return super().fetchone()
        except sqlite3.DatabaseError as e:
            _reraise(self.connection.db_path, e)

    def fetchmany(self, *args: Any) -> list[Any]:
        try:
            return super().fetchmany(*args)
        except sqlite3.DatabaseError as e:
            _reraise(self.connection.db_path, e)

    def fetchall(self) -> list[Any]:
        try:
            return super().fetchall()
        except sqlite3.DatabaseError as e:
            _reraise(self.connection.db_path, e)

    def __next__(self) -> Any:
        try:
            return super().__next__()
        except sqlite3.DatabaseError as e:
            _reraise(self.connection.db_path, e)


class _Connection(sqlite3.Connection):
    db_path: Path

    def cursor(self, factory: Any = _Cursor) -> Any:
        return super().cursor(factory)

    def execute(self, sql: str, parameters: Any = ()) -> _Cursor:
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Any) -> _Cursor:
        return self.cursor().executemany(sql, parameters)


def connect(db: Path, timeout_s: float) -> sqlite3.Connection:
    """An autocommit connection to ``db`` whose damage errors are :class:`CacheError`."""
    conn = sqlite3.connect(str(db), timeout=timeout_s, isolation_level=None, factory=_Connection)
    conn.db_path = db
    return conn


T = TypeVar("T")


def is_busy(e: BaseException) -> bool:
    """Whether ``e`` is SQLite saying another connection holds the lock it needs."""
    return isinstance(e, sqlite3.OperationalError) and (
        "locked" in str(e) or "busy" in str(e))


def retry_busy(step: Callable[[], T], timeout_s: float, *, pause_s: float = 0.01) -> T:
    """``step()``, again while SQLite answers *busy* and ``timeout_s`` has not passed.

    SQLite gives up at once, without waiting out ``busy_timeout``, where waiting could
    deadlock: switching a database to WAL while another connection opens it, or upgrading
    a read to a write. Two jobs that open one new cache at the same moment meet exactly
    that; the one that loses waits here for the other to finish, as a writer would."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return step()
        except sqlite3.OperationalError as e:
            if not is_busy(e) or time.monotonic() >= deadline:
                raise
        time.sleep(pause_s)
        pause_s = min(pause_s * 2, 0.25)


def check_database(db: Path) -> None:
    """Raise :class:`CacheError` unless ``db`` is a SQLite database whose pages check out
    (``PRAGMA quick_check``: every page read, no index compared; about the cost of reading
    the file once). For a file about to be read whole, e.g. a cache merged into another."""
    conn = connect(db, timeout_s=60.0)
    try:
        problems = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
    finally:
        conn.close()
    if problems != ["ok"]:
        raise damaged(db, f"integrity check: {'; '.join(problems[:3])}")


def check_columns(conn: sqlite3.Connection, db: Path | str, schema: str) -> None:
    """Raise :class:`CacheError` (:func:`damaged`) unless ``conn``'s database has every
    column of every table ``schema`` (SQL) creates."""
    want = sqlite3.connect(":memory:")
    try:
        want.executescript(schema)
        tables = [r[0] for r in want.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        have = {t: {r[1] for r in conn.execute(f"PRAGMA table_info({t})")} for t in tables}
        lacking = {t: cols for t in tables
                   if (cols := [r[1] for r in want.execute(f"PRAGMA table_info({t})")
                                if r[1] not in have[t]])}
    finally:
        want.close()
    if lacking:
        raise damaged(db, "table " + "; table ".join(
            f"{t} lacks column(s) {', '.join(c)}" for t, c in lacking.items()))
