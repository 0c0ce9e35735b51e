"""Export a cache for sharing: one Parquet file, or a Hugging Face dataset folder.

``hf`` writes a folder that ``datasets.load_dataset(FOLDER)`` reads, as on the Hub:
``data/<split>.parquet`` (one file per sample split: ``train``, ``valid``, ``test``), and
``README.md``, the dataset card (:mod:`workbench.cache.card`) whose front matter names those
files (``configs``). Every split's file has the same columns and types (one table, cut by
split).
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from workbench.cache.card import dataset_card
from workbench.cache.store import CacheError, CacheStore
from workbench.io import atomic_dir

CARD_FILE = "README.md"
DATA_DIR = "data"
SPLIT_NAME = re.compile(r"^\w+(\.\w+)*$")
"""Split names the Hub's data_files accept."""


def export(store: CacheStore, out: str | Path, fmt: str = "parquet", job: str | None = None) -> int:
    """Write one row per (job, sample) with its current output; returns the row count."""
    rows = store.export_rows(job)
    table = pa.Table.from_pylist(rows) if rows else pa.table({"job": pa.array([], pa.string())})
    out = Path(out)
    if fmt == "parquet":
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out)
    elif fmt == "hf":
        export_hf(store, table, out, job)
    else:
        raise ValueError(f"unknown export format {fmt!r}: use parquet or hf")
    return len(rows)


def _is_previous_export(out: Path) -> bool:
    """Whether ``out`` holds only what :func:`export_hf` writes (so it may be replaced)."""
    if not {p.name for p in out.iterdir()} <= {CARD_FILE, DATA_DIR}:
        return False
    data = out / DATA_DIR
    return not data.exists() or (data.is_dir() and all(p.suffix == ".parquet"
                                                       for p in data.iterdir()))


def export_hf(store: CacheStore, table: pa.Table, out: Path, job: str | None) -> None:
    """``out/data/<split>.parquet`` and ``out/README.md`` (written beside ``out`` and moved
    into place); ``out`` may be new, empty or an earlier export of this kind."""
    jobs = [j for j in store.jobs() if job is None or j["job"] == job]
    if job is not None and not jobs:
        raise CacheError(f"--job {job}: no such job in {store.dir} (it holds "
                         f"{[j['job'] for j in store.jobs()]}); `workbench cache status` "
                         "lists them")
    if table.num_rows == 0:
        raise CacheError(f"{store.dir}: no rows to export (no sample was asked for"
                         f"{' in job ' + job if job else ''}); run `workbench cache run` first")
    if out.exists() and (not out.is_dir() or not _is_previous_export(out)):
        raise CacheError(f"--out {out} exists and is not an earlier `--format hf` export; "
                         "choose a new or empty directory")
    order = ("train", "valid", "test")
    splits = sorted(dict.fromkeys(table.column("split").to_pylist()),
                    key=lambda s: (order.index(s) if s in order else len(order), str(s)))
    bad = [s for s in splits if not isinstance(s, str) or not SPLIT_NAME.match(s)]
    if bad:
        raise CacheError(f"{store.dir}: split names {bad} cannot name Hugging Face splits "
                         "(letters, digits, _ and . only); export --format parquet instead")
    files = {s: f"{DATA_DIR}/{s}.parquet" for s in splits}
    counts: dict[str, int] = {}
    status = {j["job"]: store.status(j["job"]) for j in jobs}
    with atomic_dir(out) as tmp:
        (tmp / DATA_DIR).mkdir()
        for s in splits:
            part = table.filter(pc.equal(table.column("split"), s))
            pq.write_table(part, tmp / files[s])
            counts[s] = part.num_rows
        columns = {f.name: str(f.type) for f in table.schema}
        (tmp / CARD_FILE).write_text(dataset_card(str(store.dir), jobs, status, counts, files,
                                                  columns), encoding="utf-8")
