"""A job over a cache that holds another job's answers for the same samples (another template
version, teacher or prompting option) says how many it will not reuse before it sends."""

from __future__ import annotations

from prompts import load_template
from teachers.job import CachingJob
from tests.support.distill import make_cache, tiny_data, yaml_items
from workbench.cache import CacheStore
from workbench.config import CacheConfig, DataConfig, TeacherConfig, load_config
from workbench.data import load_dataset


def test_a_changed_teacher_or_prompt_counts_the_answers_it_will_not_reuse(tmp_path):
    data = tiny_data(tmp_path / "d", n=24)
    cache = tmp_path / "cache"
    first = make_cache(cache, data, "sentiment_score")
    ds = load_dataset(load_config(DataConfig, None, [f"{k}={v}" for k, v in yaml_items(data)]))
    t = load_template("sentiment_score")
    ccfg = CacheConfig(dir=str(cache), template="sentiment_score")
    with CacheStore(cache) as store:
        ok_first = {k for _, k in store.sample_keys(first).values()} & store.ok_keys()
        same = CachingJob(TeacherConfig(), ccfg, t, ds, store, "fake-teacher@1")
        other = CachingJob(TeacherConfig(), ccfg, t, ds, store, "fake-teacher@2")  # a new revision
        unreused = other.unreused(other.plan())
        assert [(spec["job"], n) for spec, n in unreused] == [(first, len(ok_first))]
        assert len(ok_first) > 0
        assert same.job_id == first  # the same prompts: everything is reused, nothing to say
        assert same.unreused(same.plan()) == []
