"""Answers that could not be stored: kept in a side file, imported by the next run.

When the cache's disk fills up, the answers already paid for and still in memory are
written as JSON lines to ``<cache>/spill-<id>.jsonl`` — or, when even that fails, to
``<tmp>/workbench-spill/<hash of the cache path>/`` — each with its attempt id and
teacher. :func:`import_spills` (called when a job starts sending) stores them, counts
their cost, and deletes the file; importing twice adds nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import uuid
from dataclasses import asdict
from pathlib import Path

from workbench.cache.records import SoftLabel, TeacherOutput
from workbench.cache.scrub import scrub

log = logging.getLogger(__name__)

PATTERN = "spill-*.jsonl"


def fallback_dir(cache_dir: Path) -> Path:
    """Where spills go when the cache's own filesystem has no room left."""
    digest = hashlib.sha256(str(Path(cache_dir).resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "workbench-spill" / digest


def _line(out: TeacherOutput, teacher: str) -> str:
    d = asdict(out)
    for f in ("error", "raw_text", "description"):
        d[f] = scrub(d[f])
    return json.dumps({"attempt": uuid.uuid4().hex, "teacher": teacher, "output": d}) + "\n"


def write_spill(cache_dir: Path, outputs: list[TeacherOutput], teacher: str) -> Path:
    """Write ``outputs`` to a spill file; returns its path. Raises OSError if no place
    (the cache folder, then the fallback) has room."""
    text = "".join(_line(o, teacher) for o in outputs)
    name = f"spill-{uuid.uuid4().hex[:12]}.jsonl"
    last: OSError | None = None
    for folder in (Path(cache_dir), fallback_dir(cache_dir)):
        path = folder / name
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
            return path
        except OSError as e:
            last = e
            path.unlink(missing_ok=True)
    assert last is not None
    raise last


def spill_files(cache_dir: Path) -> list[Path]:
    return sorted(Path(cache_dir).glob(PATTERN)) + sorted(fallback_dir(cache_dir).glob(PATTERN))


def read_spill(path: Path) -> list[tuple[str, str, TeacherOutput]]:
    """(attempt id, teacher, output) of every complete line of a spill file."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s: skipping a torn line", path)
            continue
        o = d["output"]
        if o.get("soft_label"):
            o["soft_label"] = SoftLabel.from_json(o["soft_label"])
        rows.append((d["attempt"], d["teacher"], TeacherOutput(**o)))
    return rows
