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


def test_few_shot_rows_that_part_early_run_without_the_prefix(gemma, tmp_path, caplog):
    """With few-shot examples from train, an example's own sample is shown the spare example
    instead: its prompt parts from the others after the system line. The others keep the
    long prefix, the odd ones run without it, and every answer is still the full path's."""
    import dataclasses
    import re

    data = dataclasses.replace(tiny_data(tmp_path, n=40), few_shot=1)
    with caplog.at_level("INFO"):
        _compare(data, tmp_path, limit=0, splits=["train"])
    said = [m for r in caplog.records if "shared prompt prefix" in (m := r.getMessage())]
    n, sharing, total = map(int, re.search(r"(\d+) tokens, computed once for (\d+) of (\d+)",
                                           said[-1]).groups())
    assert 0 < total - sharing <= 3  # the examples' own samples (one per answer word)
    assert n > 40  # system line + three examples, not the system line alone


def test_token_budget_batches_give_the_one_at_a_time_soft_labels(gemma, tmp_path, caplog):
    """Suffixes batched by a token budget over the shared prefix (short ones many to a batch,
    long ones few, each padded to its neighbours) give each prompt's soft label as it is
    scored alone (one prompt per batch, whole, no padding, no prefix cache) within 1e-5."""
    import re

    data = tiny_data(tmp_path, n=40)
    _, alone = _soft_labels(_teacher(batch_size=1, prefix_cache=False), data, tmp_path / "alone", 16, ["train"])
    caplog.clear()  # the one-at-a-time run logs its batches too where INFO is already on
    with caplog.at_level("INFO", logger="teachers.hf_local"):
        _, batched = _soft_labels(_teacher(batch_size=16, batch_tokens=48), data, tmp_path / "budget",
                                  16, ["train"])
    said = "\n".join(r.getMessage() for r in caplog.records)
    n_batches, real, padded = map(int, re.search(r"batches: (\d+), (\d+) real of (\d+) padded", said).groups())
    assert 1 < n_batches < 16 and real <= padded <= 48 * n_batches
    assert set(alone) == set(batched)
    ok = [k for k, o in alone.items() if o.ok]
    assert len(ok) >= 0.9 * len(alone)
    for k in ok:
        a, b = alone[k].soft_label, batched[k].soft_label
        assert a.labels == b.labels and a.argmax == b.argmax
        assert max(abs(x - y) for x, y in zip(a.probs, b.probs, strict=True)) <= 1e-5, k
