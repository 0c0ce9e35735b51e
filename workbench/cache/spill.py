"""Answers that could not be stored: kept in a side file, imported by the next run.

When the cache's disk fills up, the answers already paid for and still in memory are
written as JSON lines to ``<cache>/spill-<id>.jsonl`` — or, when even that fails, to
``<tmp>/workbench-spill-<uid>/<hash of the cache path>/``, a folder only this user may
enter — each with its attempt id and teacher.

A spill is imported only if this cache's own jobs wrote it: every line carries an HMAC of
its body under a secret kept in the cache's database (``meta.spill_secret``), and the
fallback folder is used only while it is a real folder owned by this user that nobody
else can write. Lines that fail the check, or whose answer is not a valid output for a
key the cache asked for, are refused: logged, never stored, and the file is kept beside
its name with ``.refused`` appended for a person to look at.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import stat
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from workbench.cache.records import ERROR_KINDS, OK, SoftLabel, TeacherOutput
from workbench.cache.scrub import scrub

log = logging.getLogger(__name__)

PATTERN = "spill-*.jsonl"


def fallback_dir(cache_dir: Path) -> Path:
    """Where spills go when the cache's own filesystem has no room left."""
    digest = hashlib.sha256(str(Path(cache_dir).resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"workbench-spill-{os.getuid()}" / digest


def untrusted_reason(folder: Path) -> str:
    """Why ``folder`` is not a place only this user controls ("" when it is)."""
    try:
        st = os.lstat(folder)
    except FileNotFoundError:
        return "missing"
    if not stat.S_ISDIR(st.st_mode):
        return "not a folder (a link or a file)"
    if st.st_uid != os.getuid():
        return f"owned by uid {st.st_uid}, not this user ({os.getuid()})"
    if st.st_mode & 0o022:
        return f"writable by others (mode {stat.S_IMODE(st.st_mode):o})"
    return ""


def owned_dir(folder: Path) -> Path:
    """Create ``folder`` (and its parent) owner-only; raise OSError if either is not ours."""
    for d in (folder.parent, folder):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            pass
        why = untrusted_reason(d)
        if why:
            raise PermissionError(f"{d}: {why}; not writing spills there")
    return folder


def sign(secret: str, body: str) -> str:
    return hmac.new(secret.encode(), body.encode(), hashlib.sha256).hexdigest()


def _line(secret: str, out: TeacherOutput, teacher: str) -> str:
    d = asdict(out)
    for f in ("error", "raw_text", "description"):
        d[f] = scrub(d[f])
    body = json.dumps({"attempt": uuid.uuid4().hex, "teacher": teacher, "output": d})
    return json.dumps({"body": body, "mac": sign(secret, body)}) + "\n"


def write_spill(cache_dir: Path, secret: str, outputs: list[TeacherOutput], teacher: str) -> Path:
    """Write ``outputs`` to a spill file signed with the cache's ``secret``; returns its
    path. Raises OSError if no place (the cache folder, then the fallback) has room."""
    text = "".join(_line(secret, o, teacher) for o in outputs)
    name = f"spill-{uuid.uuid4().hex[:12]}.jsonl"
    last: OSError | None = None
    for folder in (Path(cache_dir), fallback_dir(cache_dir)):
        path = folder / name
        try:
            if folder == Path(cache_dir):
                folder.mkdir(parents=True, exist_ok=True)
            else:
                owned_dir(folder)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with open(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
            return path
        except OSError as e:
            last = e
            if not isinstance(e, (PermissionError, FileExistsError)):
                path.unlink(missing_ok=True)
    assert last is not None
    raise last


def spill_files(cache_dir: Path) -> list[Path]:
    """Spill files this cache may import: its own folder's, and the fallback folder's
    while that folder is trusted (see :func:`untrusted_reason`); a distrusted fallback is
    named in a warning and left alone."""
    files = sorted(Path(cache_dir).glob(PATTERN))
    fb = fallback_dir(cache_dir)
    why = untrusted_reason(fb) or untrusted_reason(fb.parent)
    if why == "missing":
        return files
    if why:
        log.warning("spill folder %s is %s: its files are not read (move it away to silence "
                    "this)", fb, why)
        return files
    return files + sorted(fb.glob(PATTERN))


@dataclass
class SpillRead:
    """What one spill file holds: the answers that passed the checks, and why the others
    did not (one line each, with the line number)."""

    path: Path
    answers: list[tuple[str, str, TeacherOutput]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


def _finite(x: Any, *, nonneg: bool = True) -> bool:
    return (isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
            and (x >= 0 or not nonneg))


def output_problem(o: dict[str, Any], known_keys: set[str] | None) -> str:
    """Why ``o`` (an output as JSON) is not a valid teacher output ("" when it is)."""
    if not isinstance(o, dict) or not isinstance(o.get("key"), str):
        return "no key"
    if known_keys is not None and o["key"] not in known_keys:
        return f"key {o['key'][:16]} was never requested by this cache"
    if o.get("status") != OK and o.get("status") not in ERROR_KINDS:
        return f"status {str(o.get('status'))[:40]!r} is not ok or an error kind"
    if not _finite(o.get("cost_usd", 0.0)):
        return f"cost_usd {str(o.get('cost_usd'))[:40]} is not a finite amount >= 0"
    for f in ("tokens_in", "tokens_out", "retries"):
        v = o.get(f, 0)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            return f"{f} {str(v)[:40]} is not a count >= 0"
    for f in ("error", "raw_text"):
        if not isinstance(o.get(f, ""), str):
            return f"{f} is not text"
    sl = o.get("soft_label")
    if sl is not None:
        try:
            label = SoftLabel.from_json(sl)
        except TypeError as e:
            return f"soft_label is malformed ({e})"
        probs = label.probs
        if (not isinstance(probs, list) or not probs or len(probs) != len(label.labels)
                or len(probs) != len(label.values)):
            return "soft_label's probs, labels and values differ in length"
        if (not all(_finite(p) and p <= 1 for p in probs)
                or not all(_finite(x, nonneg=False) for x in (label.expected, label.entropy))
                or not label.is_distribution()):
            return "soft_label's probs are not a distribution (finite, in [0, 1], sum 1)"
        if not isinstance(label.argmax, int) or not 0 <= label.argmax < len(probs):
            return "soft_label's argmax is out of range"
    return ""


def read_spill(path: Path, secret: str, known_keys: set[str] | None = None) -> SpillRead:
    """The answers of ``path`` signed with ``secret`` and valid for ``known_keys`` (any key
    when None), and a reason for each line refused. A torn last line (the writer died) is
    refused like any other."""
    read = SpillRead(Path(path))
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        read.refused.append(f"unreadable ({e.strerror or e})")
        return read
    for i, line in enumerate(lines, 1):
        try:
            outer = json.loads(line)
            body, mac = outer["body"], outer["mac"]
            if not (isinstance(body, str) and isinstance(mac, str)):
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError):
            read.refused.append(f"line {i}: not a spill line (torn or foreign)")
            continue
        if not hmac.compare_digest(sign(secret, body), mac):
            read.refused.append(f"line {i}: not signed by this cache")
            continue
        d = json.loads(body)
        o = d.get("output")
        why = output_problem(o, known_keys)
        if why:
            read.refused.append(f"line {i}: {why}")
            continue
        if o.get("soft_label"):
            o["soft_label"] = SoftLabel.from_json(o["soft_label"])
        try:
            out = TeacherOutput(**o)
        except TypeError as e:
            read.refused.append(f"line {i}: not a teacher output ({e})")
            continue
        read.answers.append((str(d.get("attempt", "")), str(d.get("teacher", "")), out))
    return read


def set_aside(path: Path) -> Path:
    """Rename a spill that held refused lines to ``<name>.refused``, kept for a person and
    never read again."""
    dest = Path(str(path) + ".refused")
    os.replace(path, dest)
    return dest
