"""Export a cache for sharing: Parquet, or a Hugging Face dataset on disk."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from workbench.cache.store import CacheStore


def export(store: CacheStore, out: str | Path, fmt: str = "parquet", job: str | None = None) -> int:
    """Write one row per (job, sample) with its current output; returns the row count."""
    rows = store.export_rows(job)
    table = pa.Table.from_pylist(rows) if rows else pa.table({"job": pa.array([], pa.string())})
    out = Path(out)
    if fmt == "parquet":
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out)
    elif fmt == "hf":
        from datasets import Dataset

        Dataset(table).save_to_disk(str(out))
    else:
        raise ValueError(f"unknown export format {fmt!r}: use parquet or hf")
    return len(rows)
