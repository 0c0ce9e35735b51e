"""Spend and leases: what a cache's teachers have cost, and who is sending which key now.

``spend`` holds, per teacher, the dollars of every paid answer this cache received (stored
rows, duplicates, imported spills). ``leases`` holds one row per key a job is sending: its
owner (``host:pid:run``), the budget it reserves (the request's worst-case price) and an
expiry. A job takes a key's lease before sending it and drops it in the transaction that
stores the answer; two jobs on one cache therefore never send the same key at the same
time, and the budget check (stored spend + live reservations) holds across jobs and
concurrency. A killed job's leases lapse at their expiry, or at once when its process is
gone on this host.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
import uuid

LEDGER_SCHEMA = """;
CREATE TABLE IF NOT EXISTS spend (teacher TEXT PRIMARY KEY, usd REAL NOT NULL);
CREATE TABLE IF NOT EXISTS leases (
    key TEXT PRIMARY KEY, owner TEXT NOT NULL, teacher TEXT, reserve_usd REAL,
    expires_at REAL NOT NULL);
"""

LEASED, DONE, TAKEN, OVER_BUDGET = "leased", "done", "taken", "budget"
_HOST = socket.gethostname()
_running: set[str] = set()
"""Owners of this process whose sending run has not ended."""


def new_owner() -> str:
    """A lease owner id for one sending run of this process (end it with :func:`end_owner`)."""
    owner = f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    _running.add(owner)
    return owner


def end_owner(owner: str) -> None:
    """The run is over: whatever it still leases is free for others."""
    _running.discard(owner)


def _owner_alive(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != _HOST or not pid.isdigit():
        return True  # another machine: trust the expiry
    if int(pid) == os.getpid():
        return owner in _running
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _teacher_spend(c: sqlite3.Connection, teacher: str) -> float:
    row = c.execute("SELECT usd FROM spend WHERE teacher=?", (teacher,)).fetchone()
    if row is not None:
        return float(row[0])
    usd = _spend_from_outputs(c).get(teacher, 0.0)  # no spend row yet: its stored costs
    c.execute("INSERT INTO spend VALUES (?, ?)", (teacher, usd))
    return usd


def _spend_from_outputs(c: sqlite3.Connection) -> dict[str, float]:
    rows = c.execute("""
        SELECT t.teacher, COALESCE(SUM(o.cost_usd), 0) FROM outputs o JOIN (
            SELECT DISTINCT sk.key AS key, json_extract(j.spec, '$.teacher') AS teacher
            FROM sample_keys sk JOIN jobs j ON j.job = sk.job) t ON t.key = o.key
        GROUP BY t.teacher""")
    return {r[0]: float(r[1]) for r in rows}


def add_spend(c: sqlite3.Connection, teacher: str, usd: float) -> None:
    """Add ``usd`` to ``teacher``'s spend (inside the caller's transaction)."""
    _teacher_spend(c, teacher)
    if usd:
        c.execute("UPDATE spend SET usd = usd + ? WHERE teacher=?", (usd, teacher))


def rebuild_spend(c: sqlite3.Connection) -> None:
    """Recompute every teacher's spend from the stored attempts (after a merge)."""
    c.execute("DELETE FROM spend")
    c.executemany("INSERT INTO spend VALUES (?, ?)", list(_spend_from_outputs(c).items()))


def release_lease(c: sqlite3.Connection, key: str, owner: str) -> None:
    c.execute("DELETE FROM leases WHERE key=? AND owner=?", (key, owner))


def _drop_lapsed(c: sqlite3.Connection, now: float) -> None:
    c.execute("DELETE FROM leases WHERE expires_at <= ?", (now,))
    dead = [o for (o,) in c.execute("SELECT DISTINCT owner FROM leases") if not _owner_alive(o)]
    c.executemany("DELETE FROM leases WHERE owner=?", [(o,) for o in dead])


def take_lease(c: sqlite3.Connection, key: str, owner: str, *, teacher: str, reserve_usd: float,
               ttl_s: float, budget_usd: float) -> str:
    """Lease ``key`` for ``owner`` (inside the caller's write transaction).

    Returns :data:`TAKEN`; :data:`DONE` when the key already has an ok answer;
    :data:`LEASED` when another live job is sending it; :data:`OVER_BUDGET` when the
    teacher's spend on this cache plus every live reservation has reached ``budget_usd``
    (0: no cap).
    """
    now = time.time()
    _drop_lapsed(c, now)
    if c.execute("SELECT 1 FROM outputs WHERE key=? AND status='ok'", (key,)).fetchone():
        return DONE
    held = c.execute("SELECT owner FROM leases WHERE key=?", (key,)).fetchone()
    if held is not None and held[0] != owner:
        return LEASED
    if budget_usd:
        reserved = c.execute("SELECT COALESCE(SUM(reserve_usd), 0) FROM leases WHERE teacher=?",
                             (teacher,)).fetchone()[0]
        if _teacher_spend(c, teacher) + reserved >= budget_usd:
            return OVER_BUDGET
    c.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?, ?)",
              (key, owner, teacher, reserve_usd, now + ttl_s))
    return TAKEN


def release_all(c: sqlite3.Connection, owner: str) -> None:
    c.execute("DELETE FROM leases WHERE owner=?", (owner,))


def spent(c: sqlite3.Connection, teacher: str) -> float:
    """Dollars ``teacher`` has cost this cache (every paid answer received)."""
    row = c.execute("SELECT usd FROM spend WHERE teacher=?", (teacher,)).fetchone()
    return float(row[0]) if row is not None else _spend_from_outputs(c).get(teacher, 0.0)


def lease_summary(c: sqlite3.Connection) -> list[dict]:
    """Per lease owner (one sending run): keys held, dollars reserved, the last expiry, and
    whether it is still live (a lapsed owner's leases are freed by the next job that
    leases a key). Read-only."""
    now = time.time()
    rows = c.execute("SELECT owner, COUNT(*), COALESCE(SUM(reserve_usd), 0), MAX(expires_at) "
                     "FROM leases GROUP BY owner ORDER BY owner").fetchall()
    return [{"owner": o, "keys": int(n), "reserve_usd": float(r), "expires_at": float(e),
             "live": e > now and _owner_alive(o)} for o, n, r, e in rows]


def spend_by_teacher(c: sqlite3.Connection) -> dict[str, float]:
    """Dollars per teacher this cache has paid (stored, duplicate and imported answers)."""
    rows = dict(c.execute("SELECT teacher, usd FROM spend").fetchall())
    return {t: float(v) for t, v in (rows or _spend_from_outputs(c)).items()}
