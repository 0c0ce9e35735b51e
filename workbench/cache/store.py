"""The teacher-output cache: one SQLite file (WAL) per cache directory.

Tables
  jobs         one row per job spec (template, teacher, decoding, data fingerprint)
  requests     key -> the request a teacher was sent (messages with media by hash, params)
  sample_keys  (job, sample id) -> key: which key answers which sample in which job
  outputs      append-only attempts; at most one ``ok`` row per key (a partial unique
               index), so two writers can never duplicate an answer (a second paid ok
               answer is kept as a ``duplicate`` row, for its cost)
  spend        teacher -> dollars spent on this cache (every paid answer, stored or not)
  leases       key -> the job sending it now, its budget reservation and expiry
               (:mod:`workbench.cache.ledger`)

A key's current state is its ok row if it has one, else its latest error. Every attempt
is committed as soon as it finishes, so killing a job loses at most the in-flight
requests. A write that finds the disk full raises :class:`CacheFull`. The WAL is
checkpointed often and truncated to :data:`WAL_LIMIT_BYTES`, so a job needs about its
final database size plus that much free space. ``manifest.json`` beside the database describes the jobs for humans and for
consumers that check what a cache was made from.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.cache.db import (
    CacheError,
    check_columns,
    check_database,
    connect,
    retry_busy,
)
from workbench.cache.ledger import (
    LEDGER_SCHEMA,
    add_spend,
    lease_summary,
    rebuild_spend,
    release_all,
    release_lease,
    spend_by_teacher,
    take_lease,
)
from workbench.cache.ledger import spent as _spent
from workbench.cache.records import DUPLICATE, OK, SoftLabel, TeacherOutput, stable_hash
from workbench.cache.scrub import scrub
from workbench.cache.spill import read_spill, set_aside, spill_files, write_spill
from workbench.io import atomic_write_text

log = logging.getLogger(__name__)

DB_FILE = "cache.sqlite"
MANIFEST_FILE = "manifest.json"
SCHEMA_VERSION = 1
WAL_LIMIT_BYTES = 4 * 1024 * 1024
"""The WAL is checkpointed every 256 pages (1 MiB) and truncated back to this size."""
CONFLICT_EXAMPLES = 5
"""Keys a merge names as examples of conflicting answers."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS jobs (job TEXT PRIMARY KEY, spec TEXT NOT NULL, created_at REAL);
CREATE TABLE IF NOT EXISTS requests (
    key TEXT PRIMARY KEY, request TEXT NOT NULL, created_at REAL);
CREATE TABLE IF NOT EXISTS sample_keys (
    job TEXT NOT NULL, sample_id TEXT NOT NULL, split TEXT, key TEXT NOT NULL,
    PRIMARY KEY (job, sample_id));
CREATE INDEX IF NOT EXISTS sample_keys_key ON sample_keys(key);
CREATE TABLE IF NOT EXISTS outputs (
    attempt TEXT PRIMARY KEY, key TEXT NOT NULL, status TEXT NOT NULL, error TEXT,
    raw_text TEXT, description TEXT, soft_label TEXT, top_logprobs TEXT,
    tokens_in INTEGER, tokens_out INTEGER, latency_s REAL, cost_usd REAL,
    retries INTEGER, created_at REAL, meta TEXT);
CREATE UNIQUE INDEX IF NOT EXISTS outputs_ok_once ON outputs(key) WHERE status = 'ok';
CREATE INDEX IF NOT EXISTS outputs_key ON outputs(key, created_at);
""" + LEDGER_SCHEMA

_OUT_COLS = ("attempt", "key", "status", "error", "raw_text", "description", "soft_label",
             "top_logprobs", "tokens_in", "tokens_out", "latency_s", "cost_usd", "retries",
             "created_at", "meta")


class CacheFull(CacheError):
    """A write found the cache's disk full (SQLite ``SQLITE_FULL`` or ``ENOSPC``)."""


def is_disk_full(exc: BaseException) -> bool:
    """True for SQLite's "database or disk is full" and for OS "no space left" errors."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return code == sqlite3.SQLITE_FULL or "database or disk is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno == 28  # ENOSPC


def free_bytes(path: str | Path) -> int:
    """Free bytes on the filesystem holding ``path``."""
    return shutil.disk_usage(path).free


@dataclass
class JobSpec:
    """What determines a job's answers; its hash is the job id."""

    template: str
    template_version: int
    template_hash: str
    uses_gold_label: bool
    output: str
    """``soft_label``, ``description`` or ``text``."""
    teacher: str
    """Model id (name and revision) as it enters the keys."""
    backend: str
    decoding: dict[str, Any]
    data_name: str
    data_fingerprint: str
    prompting: dict[str, Any] = field(default_factory=dict)
    """What else shapes the prompts beyond the template (few-shot draw, cue fields, audio
    parts); left out of the hash when empty, so jobs without such options keep their ids."""

    @property
    def job_id(self) -> str:
        spec = {k: v for k, v in self.__dict__.items() if k != "prompting" or v}
        return stable_hash(spec, 16)

    def to_json(self) -> dict[str, Any]:
        return {"job": self.job_id, **self.__dict__}


def check_cache_dir(cache_dir: Path, *, must_exist: bool) -> None:
    """Raise :class:`CacheError` when ``cache_dir`` is a file, or (``must_exist``) holds no
    cache; creates nothing."""
    if cache_dir.exists() and not cache_dir.is_dir():
        raise CacheError(f"{cache_dir} is a file, not a cache directory: name a directory "
                         "(`cache run --cache DIR` / cache.dir makes a new one), or move the "
                         "file aside")
    if must_exist and not (cache_dir / DB_FILE).is_file():
        raise CacheError(f"no cache at {cache_dir} (missing {DB_FILE}); run `workbench cache "
                         "run` first")


def bad_row(db: Path, table: str, where: str, column: str, why: str) -> CacheError:
    """The :class:`CacheError` for a row whose stored JSON no longer reads."""
    return CacheError(
        f"{db}: {table} row {where}: column {column} {why}; the row was changed outside the "
        "workbench. Restore the cache from a copy, or delete the row (sqlite3 "
        f"{db} \"DELETE FROM {table} WHERE {where}\") and rerun `workbench cache run`, "
        "which asks the teacher again for what is missing")


def _row_json(db: Path, row: sqlite3.Row, column: str, table: str = "outputs",
              where: str = "") -> Any:
    """``row[column]`` read as JSON (None when empty); ``where`` names the row in the
    error (an outputs row by its attempt)."""
    text = row[column]
    if not text:
        return None
    try:
        return json.loads(text)
    except (ValueError, TypeError) as e:
        where = where or f"attempt='{row['attempt']}'"
        raise bad_row(db, table, where, column, f"holds no valid JSON ({e})") from None


def _row_to_output(row: sqlite3.Row, db: Path) -> TeacherOutput:
    sl = _row_json(db, row, "soft_label")
    try:
        soft_label = SoftLabel.from_json(sl) if sl else None
    except TypeError as e:
        raise bad_row(db, "outputs", f"attempt='{row['attempt']}'", "soft_label",
                      f"is not a soft label ({e})") from None
    meta = _row_json(db, row, "meta") or {}
    if not isinstance(meta, dict):
        raise bad_row(db, "outputs", f"attempt='{row['attempt']}'", "meta", "is not a mapping")
    return TeacherOutput(
        key=row["key"], status=row["status"], error=row["error"] or "",
        raw_text=row["raw_text"] or "", description=row["description"],
        soft_label=soft_label, top_logprobs=_row_json(db, row, "top_logprobs"),
        tokens_in=row["tokens_in"] or 0, tokens_out=row["tokens_out"] or 0,
        latency_s=row["latency_s"] or 0.0, cost_usd=row["cost_usd"] or 0.0,
        retries=row["retries"] or 0, created_at=row["created_at"] or 0.0, meta=meta,
    )


def check_rows(db: Path) -> None:
    """Raise :class:`CacheError` unless ``db`` has every column of the schema and each row's
    JSON reads (for a cache about to be copied into another, which would spread a bad row)."""
    conn = connect(db, timeout_s=60.0)
    conn.row_factory = sqlite3.Row
    try:
        check_columns(conn, db, _SCHEMA)
        for r in conn.execute("SELECT * FROM outputs"):
            _row_to_output(r, db)
        for r in conn.execute("SELECT job, spec FROM jobs"):
            _row_json(db, r, "spec", "jobs", f"job='{r['job']}'")
        for r in conn.execute("SELECT key, request FROM requests"):
            _row_json(db, r, "request", "requests", f"key='{r['key']}'")
    finally:
        conn.close()


class CacheStore:
    """Read and append teacher outputs in ``cache_dir``."""

    def __init__(self, cache_dir: str | Path, *, create: bool = True, timeout_s: float = 60.0):
        self.dir = Path(cache_dir)
        self.db = db = self.dir / DB_FILE
        check_cache_dir(self.dir, must_exist=not create)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conn = connect(db, timeout_s)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
        retry_busy(self._set_up, timeout_s)
        version = int(self.conn.execute("SELECT value FROM meta WHERE name='schema_version'").fetchone()[0])
        if version != SCHEMA_VERSION:
            raise CacheError(f"{db}: cache schema v{version}, this workbench reads v{SCHEMA_VERSION}")
        try:
            check_columns(self.conn, db, _SCHEMA)
        except CacheError:
            self.conn.close()
            raise

    def _set_up(self) -> None:
        """WAL mode and the schema; :func:`retry_busy` repeats it while another process
        opening the same new cache holds the lock (SQLite does not wait for that one)."""
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA wal_autocheckpoint=256")
        self.conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
        with self.transaction():
            for statement in _SCHEMA.split(";"):  # executescript would commit mid-way
                if statement.strip():
                    self.conn.execute(statement)
            self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                              (str(SCHEMA_VERSION),))
            self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('spill_secret', ?)",
                              (secrets.token_hex(32),))

    # plumbing ---------------------------------------------------------------
    class _Tx:
        def __init__(self, conn: sqlite3.Connection, where: Path) -> None:
            self.conn, self.where = conn, where

        def __enter__(self) -> sqlite3.Connection:
            self._run("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type, exc, tb) -> None:
            if exc_type is None:
                try:
                    self._run("COMMIT")
                    return
                except CacheFull:
                    self._rollback()
                    raise
            self._rollback()
            if exc is not None and is_disk_full(exc):
                raise CacheFull(f"{self.where}: database or disk is full") from exc

        def _run(self, sql: str) -> None:
            try:
                self.conn.execute(sql)
            except sqlite3.Error as e:
                if is_disk_full(e):
                    raise CacheFull(f"{self.where}: database or disk is full") from e
                raise

        def _rollback(self) -> None:
            if self.conn.in_transaction:  # SQLite may have rolled back already (SQLITE_FULL)
                self.conn.execute("ROLLBACK")

    def transaction(self) -> _Tx:
        """A write transaction (taken immediately, so concurrent writers queue, not fail).
        A full disk raises :class:`CacheFull`, with the transaction rolled back."""
        return self._Tx(self.conn, self.dir / DB_FILE)

    def checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it (bounds the disk a job needs)."""
        try:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as e:
            if is_disk_full(e):
                raise CacheFull(f"{self.dir / DB_FILE}: database or disk is full") from e
            raise

    def size_bytes(self) -> tuple[int, int]:
        """(database bytes, WAL bytes) on disk."""
        db = self.dir / DB_FILE
        wal = db.with_name(DB_FILE + "-wal")
        return db.stat().st_size, (wal.stat().st_size if wal.exists() else 0)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> CacheStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # jobs and requests ------------------------------------------------------
    def register_job(self, spec: JobSpec) -> str:
        with self.transaction() as c:
            c.execute("INSERT OR IGNORE INTO jobs VALUES (?, ?, ?)",
                      (spec.job_id, json.dumps(spec.to_json(), sort_keys=True), time.time()))
        self.write_manifest()
        return spec.job_id

    def jobs(self) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT job, spec FROM jobs ORDER BY created_at").fetchall()
        return [_row_json(self.db, r, "spec", "jobs", f"job='{r['job']}'") for r in rows]

    def add_requests(self, job: str, items: Iterable[tuple[str, str, str, dict[str, Any]]]) -> None:
        """Record (sample id, split, key, request) for ``job``; idempotent."""
        now = time.time()
        items = list(items)
        with self.transaction() as c:
            c.executemany("INSERT OR IGNORE INTO requests VALUES (?, ?, ?)",
                          [(k, json.dumps(req, sort_keys=True), now) for _, _, k, req in items])
            c.executemany("INSERT OR REPLACE INTO sample_keys VALUES (?, ?, ?, ?)",
                          [(job, sid, split, k) for sid, split, k, _ in items])

    def request(self, key: str) -> dict[str, Any]:
        row = self.conn.execute("SELECT request FROM requests WHERE key=?", (key,)).fetchone()
        if row is None:
            raise CacheError(f"{self.dir}: no stored request for key {key}")
        return _row_json(self.db, row, "request", "requests", f"key='{key}'")

    def sample_keys(self, job: str) -> dict[str, tuple[str, str]]:
        """sample id -> (split, key) for ``job``."""
        rows = self.conn.execute("SELECT sample_id, split, key FROM sample_keys WHERE job=?", (job,))
        return {r["sample_id"]: (r["split"], r["key"]) for r in rows}

    # outputs ----------------------------------------------------------------
    def put(self, out: TeacherOutput, *, teacher: str = "", owner: str = "",
            attempt: str = "") -> bool:
        """Append one attempt; False if ``out`` is ok and the key already had an ok row
        (then it is kept as a ``duplicate`` row, so its cost still counts).

        ``teacher``: add the attempt's cost to that teacher's spend on this cache.
        ``owner``: release the key's lease held by that job, in the same transaction.
        ``attempt``: the attempt's id (a spilled answer keeps its id, so importing it
        twice adds nothing).
        """
        row = self._row(out, attempt or uuid.uuid4().hex)
        insert = (f"INSERT OR IGNORE INTO outputs ({', '.join(_OUT_COLS)}) "
                  f"VALUES ({', '.join('?' * len(_OUT_COLS))})")
        with self.transaction() as c:
            if attempt and c.execute("SELECT 1 FROM outputs WHERE attempt=?", (attempt,)).fetchone():
                return False  # already imported
            if teacher:  # before the insert: a first spend row is summed from the stored rows
                add_spend(c, teacher, out.cost_usd)
            stored = c.execute(insert, row).rowcount == 1
            if not stored:  # a second ok answer for the key: paid for, so kept as a duplicate
                c.execute(insert, (row[0], row[1], DUPLICATE, "the key already had an ok answer",
                                   *row[4:]))
            if owner:
                release_lease(c, out.key, owner)
        return stored

    @staticmethod
    def _row(out: TeacherOutput, attempt: str) -> tuple[Any, ...]:
        lp = json.dumps(out.top_logprobs) if out.top_logprobs is not None else None
        return (
            attempt, out.key, out.status, scrub(out.error), scrub(out.raw_text),
            scrub(out.description),
            json.dumps(out.soft_label.to_json()) if out.soft_label else None, scrub(lp),
            out.tokens_in, out.tokens_out, out.latency_s, out.cost_usd, out.retries,
            out.created_at or time.time(), scrub(json.dumps(out.meta)) if out.meta else None,
        )

    # leases, spend, spills ---------------------------------------------------
    def lease(self, key: str, owner: str, *, teacher: str, reserve_usd: float, ttl_s: float,
              budget_usd: float = 0.0) -> str:
        """Lease ``key`` for sending (see :func:`workbench.cache.ledger.take_lease`)."""
        with self.transaction() as c:
            return take_lease(c, key, owner, teacher=teacher, reserve_usd=reserve_usd,
                              ttl_s=ttl_s, budget_usd=budget_usd)

    def release_leases(self, owner: str) -> None:
        with self.transaction() as c:
            release_all(c, owner)

    def spent(self, teacher: str) -> float:
        """Dollars ``teacher`` has cost this cache, over every job and run."""
        return _spent(self.conn, teacher)

    def in_flight(self) -> dict[str, Any]:
        """What is not (yet) a stored row: the leases of sending runs (live or lapsed), the
        spill files a disk-full run left (answers paid for, stored by the next run), and
        the spend per teacher."""
        spills = []
        for p in spill_files(self.dir):
            read = read_spill(p, self._spill_secret())
            spills.append({"path": str(p), "answers": len(read.answers),
                           "refused": len(read.refused)})
        return {"leases": lease_summary(self.conn), "spills": spills,
                "spend_usd": spend_by_teacher(self.conn)}

    def _spill_secret(self) -> str:
        return self.conn.execute("SELECT value FROM meta WHERE name='spill_secret'").fetchone()[0]

    def spill(self, outputs: list[TeacherOutput], teacher: str) -> Path:
        """Write answers the database could not take to a spill file signed for this cache
        (see :mod:`workbench.cache.spill`); raises OSError when no place has room."""
        return write_spill(self.dir, self._spill_secret(), outputs, teacher)

    def import_spills(self) -> int:
        """Store the answers a disk-full run of this cache left in spill files; returns how
        many. Lines not signed by this cache, or not a valid answer for a key it requested,
        are refused and logged, and their file is kept as ``<name>.refused``."""
        files = spill_files(self.dir)
        if not files:  # the usual start of a job: no key set read
            return 0
        n, secret = 0, self._spill_secret()
        known = {r[0] for r in self.conn.execute("SELECT key FROM requests")}
        for path in files:
            read = read_spill(path, secret, known)
            usd = 0.0
            for attempt, teacher, out in read.answers:
                self.put(out, teacher=teacher, attempt=attempt)
                usd += out.cost_usd
            n += len(read.answers)
            if read.answers:
                log.info("imported %d answers ($%.4f) from %s", len(read.answers), usd, path)
            if read.refused:
                kept = set_aside(path)
                log.warning("%s: refused %d line(s), stored nothing of them (%s%s); the file "
                            "is kept as %s", path, len(read.refused), "; ".join(read.refused[:3]),
                            "; ..." if len(read.refused) > 3 else "", kept)
            else:
                path.unlink()
        return n

    def ok_keys(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT key FROM outputs WHERE status='ok'")}

    def _current_rows(self, job: str | None) -> Iterator[sqlite3.Row]:
        """The current row of every key (of ``job``): its ok row, else its latest error."""
        scope = "WHERE key IN (SELECT key FROM sample_keys WHERE job = :job)" if job else ""
        sql = f"""
            SELECT * FROM (
                SELECT o.*, ROW_NUMBER() OVER (
                    PARTITION BY key ORDER BY (status = 'ok') DESC, created_at DESC) AS rn
                FROM outputs o {scope}) WHERE rn = 1"""
        return iter(self.conn.execute(sql, {"job": job}))

    def current(self, job: str | None = None) -> dict[str, TeacherOutput]:
        """key -> current output, for every key that has at least one attempt."""
        return {r["key"]: _row_to_output(r, self.db) for r in self._current_rows(job)}

    def error_keys(self, kinds: Iterable[str] | None = None, job: str | None = None) -> list[str]:
        kinds = set(kinds or [])
        return sorted(k for k, o in self.current(job).items()
                      if not o.ok and (not kinds or o.status in kinds))

    def attempts(self, key: str) -> list[TeacherOutput]:
        rows = self.conn.execute("SELECT * FROM outputs WHERE key=? ORDER BY created_at", (key,))
        return [_row_to_output(r, self.db) for r in rows]

    def count_rows(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM outputs").fetchone()[0]

    # reporting --------------------------------------------------------------
    def status(self, job: str | None = None) -> dict[str, Any]:
        """Counts by status and error kind, tokens, cost, retries (for ``job`` or all)."""
        cur = self.current(job)
        if job:
            wanted = {k for _, k in self.sample_keys(job).values()}
        else:
            wanted = {r[0] for r in self.conn.execute("SELECT key FROM requests")}
        counts = Counter(o.status for k, o in cur.items() if k in wanted)
        scope = "WHERE key IN (SELECT key FROM sample_keys WHERE job = ?)" if job else ""
        agg = self.conn.execute(
            f"SELECT COUNT(*), COALESCE(SUM(tokens_in),0), COALESCE(SUM(tokens_out),0), "
            f"COALESCE(SUM(cost_usd),0), COALESCE(SUM(retries),0), COALESCE(AVG(latency_s),0) "
            f"FROM outputs {scope}", (job,) if job else ()).fetchone()
        ok_lat = [o.latency_s for k, o in cur.items() if o.ok and k in wanted]
        return {
            "keys": len(wanted),
            "ok": counts.get(OK, 0),
            "errors": {k: v for k, v in sorted(counts.items()) if k != OK},
            "pending": len(wanted) - sum(counts.values()),
            "attempts": agg[0], "tokens_in": agg[1], "tokens_out": agg[2],
            "cost_usd": round(agg[3], 6), "retries": agg[4],
            "mean_latency_s": (sum(ok_lat) / len(ok_lat)) if ok_lat else 0.0,
        }

    def write_manifest(self) -> Path:
        """``manifest.json``: the jobs this cache holds (atomic replace)."""
        text = json.dumps({"schema_version": SCHEMA_VERSION, "jobs": self.jobs()}, indent=2,
                          sort_keys=True) + "\n"
        try:
            return atomic_write_text(self.dir / MANIFEST_FILE, text)
        except OSError as e:
            if is_disk_full(e):
                raise CacheFull(f"{self.dir / MANIFEST_FILE}: no space left on the disk; free some "
                                "space (the cache needs its database size plus a few MB) and rerun") from e
            raise

    # sharing ----------------------------------------------------------------
    def merge_from(self, other_dir: str | Path) -> dict[str, Any]:
        """Copy another cache's jobs, requests, mappings and attempts into this one.

        Idempotent: attempts are keyed by their id and ok rows by key, so merging twice,
        or merging caches that overlap, adds nothing twice. Where both caches hold an ok
        answer for a key (two separate paid answers), this cache's answer stays current and
        the other's is kept as a ``duplicate`` attempt, so its cost still counts: the spend
        afterwards is every dollar paid by this cache and the other. Returns
        ``attempts_added``; ``conflicts``: keys whose other ok answer differs (raw text,
        description or soft label), with up to :data:`CONFLICT_EXAMPLES` of them, sorted, in
        ``conflict_keys``; ``same_answers``: keys answered (and paid) twice alike.
        """
        other = Path(other_dir) / DB_FILE
        check_cache_dir(Path(other_dir), must_exist=True)
        check_database(other)
        check_rows(other)
        before = self.count_rows()
        self.conn.execute("ATTACH DATABASE ? AS other", (str(other),))
        try:
            with self.transaction() as c:
                c.execute("INSERT OR IGNORE INTO jobs SELECT * FROM other.jobs")
                c.execute("INSERT OR IGNORE INTO requests SELECT * FROM other.requests")
                c.execute("INSERT OR IGNORE INTO sample_keys SELECT * FROM other.sample_keys")
                # the other's new ok rows for keys answered here: compared, then kept as
                # duplicates (paid for) before the plain copy below would drop them
                second = """FROM other.outputs o WHERE o.status = 'ok'
                    AND NOT EXISTS (SELECT 1 FROM main.outputs a WHERE a.attempt = o.attempt)
                    AND EXISTS (SELECT 1 FROM main.outputs d WHERE d.key = o.key
                                AND d.status = 'ok')"""
                differ = dict(c.execute(f"""
                    SELECT o.key, NOT EXISTS (SELECT 1 FROM main.outputs d
                        WHERE d.key = o.key AND d.status = 'ok' AND d.raw_text IS o.raw_text
                        AND d.description IS o.description AND d.soft_label IS o.soft_label)
                    {second} ORDER BY o.key""").fetchall())
                cols = ", ".join(_OUT_COLS)
                picked = ", ".join("?" if col in ("status", "error") else f"o.{col}"
                                   for col in _OUT_COLS)
                c.execute(f"INSERT OR IGNORE INTO outputs ({cols}) SELECT {picked} {second}",
                          (DUPLICATE, f"the key already had an ok answer when {other_dir} "
                                      "was merged"))
                c.execute(f"INSERT OR IGNORE INTO outputs ({cols}) "
                          f"SELECT {cols} FROM other.outputs ORDER BY created_at")
        finally:
            self.conn.execute("DETACH DATABASE other")
        with self.transaction() as c:
            rebuild_spend(c)
        self.write_manifest()
        conflicts = [k for k, d in differ.items() if d]
        if conflicts:
            log.warning("%s: %d key(s) with a different ok answer in %s (e.g. %s); kept the "
                        "answer already in %s, counted the cost of both", self.dir,
                        len(conflicts), other_dir, ", ".join(conflicts[:CONFLICT_EXAMPLES]),
                        self.dir)
        return {"attempts_added": self.count_rows() - before, "conflicts": len(conflicts),
                "conflict_keys": conflicts[:CONFLICT_EXAMPLES],
                "same_answers": len(differ) - len(conflicts)}

    def export_rows(self, job: str | None = None) -> list[dict[str, Any]]:
        """One flat row per (job, sample): the sample's current output and the job spec."""
        specs = {j["job"]: j for j in self.jobs()}
        cur = self.current()
        rows = []
        q = "SELECT job, sample_id, split, key FROM sample_keys" + (" WHERE job=?" if job else "")
        for r in self.conn.execute(q, (job,) if job else ()):
            o = cur.get(r["key"])
            spec = specs.get(r["job"], {})
            sl = o.soft_label if o else None
            rows.append({
                "job": r["job"], "template": spec.get("template"), "teacher": spec.get("teacher"),
                "data_fingerprint": spec.get("data_fingerprint"),
                "sample_id": r["sample_id"], "split": r["split"], "key": r["key"],
                "status": o.status if o else "pending", "error": scrub(o.error) if o else "",
                "raw_text": scrub(o.raw_text) if o else None,
                "description": scrub(o.description) if o else None,
                "soft_probs": sl.probs if sl else None,
                "soft_values": sl.values if sl else None,
                "soft_expected": sl.expected if sl else None,
                "soft_entropy": sl.entropy if sl else None,
                "soft_off_label_mass": sl.off_label_mass if sl else None,
                "tokens_in": o.tokens_in if o else 0, "tokens_out": o.tokens_out if o else 0,
                "latency_s": o.latency_s if o else 0.0, "cost_usd": o.cost_usd if o else 0.0,
            })
        return rows
