"""A cache whose rows were changed outside the workbench — a stored JSON value that no
longer reads, a column dropped — is named by every command that reads it: the file, the
row (its attempt id) or the table, and what to do; never a traceback."""

from __future__ import annotations

import shutil
import sqlite3

import pytest

from tests.reliability.test_clean_errors import fails, good_cache  # noqa: F401 (fixture)
from workbench.cache.store import CacheStore


def altered(src, dst, how: str):
    shutil.copytree(src, dst)
    with sqlite3.connect(dst / "cache.sqlite") as c:
        attempt = c.execute("SELECT attempt FROM outputs WHERE status='ok' LIMIT 1").fetchone()[0]
        if how == "soft_label":
            c.execute("UPDATE outputs SET soft_label='{not json' WHERE attempt=?", (attempt,))
        elif how == "meta":
            c.execute("UPDATE outputs SET meta='[1, 2]' WHERE attempt=?", (attempt,))
        else:
            c.execute("ALTER TABLE outputs DROP COLUMN meta")
    c.close()
    return dst, attempt


@pytest.mark.parametrize("how", ["soft_label", "meta", "dropped_column"])
def test_an_altered_cache_row_is_named_by_status_export_and_merge(good_cache, tmp_path,  # noqa: F811
                                                                   how):
    """Merging it into another cache is refused before anything is copied (a bad row
    would spread)."""
    bad, attempt = altered(good_cache["dir"], tmp_path / "bad", how)
    db = bad / "cache.sqlite"
    for args in (("cache", "status", bad),
                 ("cache", "export", bad, "--out", tmp_path / "out.parquet"),
                 ("cache", "merge", tmp_path / "merged", bad)):
        out = fails(*args)
        assert f"error: {db}:" in out
        if how == "dropped_column":
            assert "table outputs lacks column(s) meta" in out
        else:
            assert f"outputs row attempt='{attempt}': column {how}" in out
            assert f"DELETE FROM outputs WHERE attempt='{attempt}'" in out
            assert "rerun `workbench cache run`" in out
    assert not (tmp_path / "out.parquet").exists()
    if (tmp_path / "merged").exists():  # the merge may have created the empty destination
        with CacheStore(tmp_path / "merged") as merged:
            assert merged.count_rows() == 0
