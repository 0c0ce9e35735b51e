"""Score-only answers and the shared prompt prefix give today's soft labels: Gemma 3 270M
through hf_local, the full ``generate`` path (score_only=false, prefix_cache=false) against
the new one, same cache keys, max |Δp| ≤ 1e-4 — on synthetic transcripts (always) and on
a slice of MOSI (when the shared data is here)."""

import pytest

from teachers.run import run_cache_job
from tests.support.paths import REPO
from tests.support.teacher_env import tiny_data
from workbench.cache.store import CacheStore
from workbench.config import CacheConfig, CacheJobConfig, DataConfig, TeacherConfig, load_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gemma():
    from workbench.models import gemma_hf_dir

    try:
        return gemma_hf_dir()
    except FileNotFoundError as e:
        pytest.skip(str(e))


def _teacher(**kw) -> TeacherConfig:
    base = dict(backend="hf_local", model="gemma3-270m", api="completions", device="cpu",
                batch_size=8, repetition_penalty=1.2)
    return TeacherConfig(**{**base, **kw})


def _soft_labels(tcfg, data, cache, limit, splits):
    ccfg = CacheConfig(dir=str(cache), template="sentiment_polarity", max_error_rate=1.0)
    job = run_cache_job(CacheJobConfig(data=data, teacher=tcfg, cache=ccfg, splits=splits, limit=limit))
    with CacheStore(cache) as store:
        outs = store.current(job.job_id)
    return job, outs


def _compare(data, tmp_path, limit, splits):
    old_job, old = _soft_labels(_teacher(score_only=False, prefix_cache=False), data, tmp_path / "old",
                                limit, splits)
    new_job, new = _soft_labels(_teacher(), data, tmp_path / "new", limit, splits)
    assert old_job.keys == new_job.keys  # runtime knobs: the keys do not change
    assert old_job.report.sent == new_job.report.sent == len(set(old_job.keys))
    assert set(old) == set(new)
    ok = [k for k, o in old.items() if o.ok]
    assert len(ok) >= 0.9 * len(old)
    worst = 0.0
    for k in old:
        assert old[k].status == new[k].status, k
        if old[k].ok:
            a, b = old[k].soft_label, new[k].soft_label
            assert a.labels == b.labels and a.argmax == b.argmax
            worst = max(worst, *(abs(x - y) for x, y in zip(a.probs, b.probs, strict=True)))
            assert abs(a.off_label_mass - b.off_label_mass) <= 1e-4
    assert worst <= 1e-4
    # the new path answered by one forward pass where the first token is a label, decoding
    # on from that pass's cache only where it is not (as generate went on)
    assert any(o.meta.get("finish_reason") == "score_only" for o in new.values())
    assert sum(o.tokens_out for o in new.values()) <= sum(o.tokens_out for o in old.values())
    for k in old:
        if old[k].ok and new[k].meta.get("finish_reason") != "score_only":
            assert new[k].raw_text == old[k].raw_text and new[k].tokens_out == old[k].tokens_out
    return worst


def test_score_only_with_prefix_matches_generate_on_synthetic(gemma, tmp_path):
    _compare(tiny_data(tmp_path, n=40), tmp_path, limit=10, splits=["train"])


def test_score_only_with_prefix_matches_generate_on_mosi(gemma, mosi_dir, tmp_path):
    data = load_config(DataConfig, REPO / "configs/data/mosi.yaml",
                       [f"path={mosi_dir / 'mosi_label.csv'}", f"features={mosi_dir / 'mosi_bclstm_features.npz'}"])
    _compare(data, tmp_path, limit=16, splits=["test"])
