"""The tests' fake teacher (tests/support/distill.py) through the real caching job: soft
labels and descriptions stored, and joined to the samples they peak near the gold score."""

from __future__ import annotations

import numpy as np

from tests.support.distill import make_cache, tiny_data, yaml_items
from workbench.cache.join import teacher_view
from workbench.cache.store import CacheStore
from workbench.config import DataConfig, load_config
from workbench.data import load_dataset


def test_fake_teacher_cache_has_soft_labels_and_descriptions(tmp_path):
    data = tiny_data(tmp_path / "data", n=24)
    make_cache(tmp_path / "cache", data, "sentiment_score")
    make_cache(tmp_path / "cache", data, "context_aware")
    with CacheStore(tmp_path / "cache", create=False) as store:
        jobs = {j["template"]: j for j in store.jobs()}
        assert set(jobs) == {"sentiment_score", "context_aware"}
        soft = [o for o in store.current(jobs["sentiment_score"]["job"]).values()]
        desc = [o for o in store.current(jobs["context_aware"]["job"]).values()]
    assert soft and all(o.ok and o.soft_label is not None for o in soft)
    assert all(abs(sum(o.soft_label.probs) - 1) < 1e-6 for o in soft)
    assert all(0 < o.soft_label.off_label_mass < 0.1 for o in soft)
    assert desc and all(o.ok and o.description.startswith("The speaker") for o in desc)
    # joined to the samples, the soft labels peak near the gold score
    ds = load_dataset(load_config(DataConfig, None, [f"{k}={v}" for k, v in yaml_items(data)]))
    view = teacher_view(tmp_path / "cache", {s.id: s.split for s in ds.iter_samples()},
                        ds.fingerprint, template="sentiment_score")
    pairs = [(view.outputs[s.id].soft_label.expected, s.label) for s in ds.iter_samples()]
    assert len(pairs) == ds.num_rows()
    assert np.corrcoef(np.array(pairs).T)[0, 1] > 0.9
