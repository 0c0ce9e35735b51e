"""data.subset: a seeded random subset per split (a count or a fraction), independent of
row order, nested, the same wherever the data config is loaded."""

from __future__ import annotations

import csv
import random

import pytest

from workbench.config import DataConfig, load_config
from workbench.config.fields import ConfigError
from workbench.data import load_dataset, subset_ids


def _manifest(path, n=60, seed=0):
    rows = [{"id": f"u{i:03d}", "text": f"line {i}", "label": 0.0,
             "split": ["train", "valid", "test"][i % 3]} for i in range(n)]
    random.Random(seed).shuffle(rows)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def test_subset_by_count_and_fraction_is_seeded_and_order_free(tmp_path):
    a = _manifest(tmp_path / "a.csv", seed=0)
    b = _manifest(tmp_path / "b.csv", seed=1)  # same rows, other order
    full = load_dataset(DataConfig(path=str(a)))
    cut = load_dataset(DataConfig(path=str(a), subset={"train": 5, "test": 0.5}))
    assert cut.num_rows("train") == 5 and cut.num_rows("test") == 10
    assert cut.num_rows("valid") == full.num_rows("valid") == 20
    other_order = load_dataset(DataConfig(path=str(b), subset={"train": 5, "test": 0.5}))
    ids = {s.id for s in cut.iter_samples()}
    assert ids == {s.id for s in other_order.iter_samples()}
    assert cut.fingerprint == other_order.fingerprint != full.fingerprint
    reseeded = load_dataset(DataConfig(path=str(a), subset={"train": 5}, subset_seed=3))
    assert {s.id for s in reseeded.samples("train")} != {s.id for s in cut.samples("train")}
    # nested: a larger count keeps every smaller one's samples
    train = [s.id for s in full.samples("train")]
    assert subset_ids(train, 5, 0) < subset_ids(train, 9, 0)
    assert subset_ids(train, 500, 0) == set(train)
    # from a YAML, as every stage loads it
    (tmp_path / "d.yaml").write_text("path: a.csv\nsubset: {train: 5, test: 0.5}\n")
    again = load_dataset(load_config(DataConfig, tmp_path / "d.yaml"))
    assert again.fingerprint == cut.fingerprint


@pytest.mark.parametrize("subset, msg", [({"dev": 3}, "name a split"),
                                         ({"train": 2.5}, "whole count"),
                                         ({"train": 0}, "fraction in")])
def test_subset_values_are_checked(subset, msg):
    with pytest.raises(ConfigError, match=msg):
        DataConfig(subset=subset)


def test_a_cache_of_the_whole_dataset_serves_a_subset(tmp_path):
    """Teacher answers cached on the whole data serve a run on its data.subset (keys are per
    sample); other data is still refused."""
    from tests.support.distill import make_cache
    from workbench.cache.join import teacher_view
    from workbench.cache.store import CacheError

    path = _manifest(tmp_path / "m.csv")
    make_cache(tmp_path / "cache", {"path": str(path)}, "sentiment_score")
    whole = load_dataset(DataConfig(path=str(path)))
    part = load_dataset(DataConfig(path=str(path), subset={"train": 5}))
    assert part.fingerprint != whole.fingerprint and part.info.whole_fingerprint == whole.fingerprint
    splits = {s.id: "train" for s in part.samples("train")}
    view = teacher_view(tmp_path / "cache", splits, part.fingerprint, template="sentiment_score",
                        whole_fingerprint=part.info.whole_fingerprint, min_ok_fraction=1.0)
    assert set(view.outputs) == set(splits) and len(splits) == 5
    with pytest.raises(CacheError, match="made from other data"):
        teacher_view(tmp_path / "cache", splits, part.fingerprint, template="sentiment_score")
    other = load_dataset(DataConfig(path=str(_manifest(tmp_path / "o.csv", n=30)), subset={"train": 5}))
    with pytest.raises(CacheError, match="made from other data"):
        teacher_view(tmp_path / "cache", splits, other.fingerprint, template="sentiment_score",
                     whole_fingerprint=other.info.whole_fingerprint)
