"""Dialogue context, few-shot examples from the train split, and scales that are used or
refused (never silently ignored)."""

from __future__ import annotations

import csv

import pytest

from prompts import TemplateError, few_shot_examples, load_template, render
from teachers.job import cache_key, decoding_params
from workbench.config import DataConfig, TeacherConfig
from workbench.data import load_dataset
from workbench.data.schema import DataError

CLASSES = ["negative", "neutral", "positive"]


def _meld_like(tmp_path, rows):
    path = tmp_path / "m.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["Utterance", "Speaker", "Sentiment", "Dialogue_ID",
                                          "Utterance_ID", "split"])
        w.writeheader()
        w.writerows(rows)
    return path


def _rows():
    rows = []
    for d in range(3):
        for u in (2, 0, 1):  # out of order in the file
            rows.append({"Utterance": f"d{d} line {u}", "Speaker": f"S{u}",
                         "Sentiment": CLASSES[(d + u) % 3], "Dialogue_ID": d,
                         "Utterance_ID": u, "split": "train" if d < 2 else "test"})
    return rows


def _cfg(path, **kw):
    return DataConfig(path=str(path), id_format="{split}_{Dialogue_ID}_{Utterance_ID}",
                      text_column="Utterance", class_column="Sentiment", task="classification",
                      class_names=CLASSES, modalities=["text"], dialogue_column="Dialogue_ID",
                      turn_column="Utterance_ID", speaker_column="Speaker", **kw)


def test_context_is_the_previous_turns_of_the_dialogue_and_enters_the_key(tmp_path):
    path = _meld_like(tmp_path, _rows())
    ds = load_dataset(_cfg(path, context_turns=1))
    s = next(x for x in ds.samples("train") if x.id == "train_0_2")
    assert s.meta["speaker"] == "S2" and s.meta["context"] == [{"speaker": "S1", "text": "d0 line 1"}]
    first = next(x for x in ds.samples("train") if x.id == "train_0_0")
    assert first.meta["context"] == []
    t = load_template("dialogue_polarity")
    r1 = render(t, s, ds.info)
    assert 'S1: "d0 line 1"' in r1.prompt and 'S2: "d0 line 2"' in r1.prompt
    wider = load_dataset(_cfg(path, context_turns=2))
    s2 = next(x for x in wider.samples("train") if x.id == "train_0_2")
    r2 = render(t, s2, wider.info)
    dec = decoding_params(TeacherConfig(), t)
    assert cache_key(t, "m", dec, r1) != cache_key(t, "m", dec, r2)
    bad = _rows()
    bad[0]["Utterance_ID"] = "first"
    with pytest.raises(DataError, match="turn_column"):
        load_dataset(_cfg(_meld_like(tmp_path, bad), context_turns=1))


def test_few_shot_examples_come_from_train_and_never_show_the_sample(tmp_path):
    ds = load_dataset(_cfg(_meld_like(tmp_path, _rows())))
    t = load_template("dialogue_polarity")
    train = ds.samples("train")
    ex = few_shot_examples(train, ds.info, t, 1)
    assert {e["answer"] for e in ex} == set(CLASSES)
    assert all(e["id"].startswith("train_") for e in ex)
    with pytest.raises(TemplateError, match="train split only"):
        few_shot_examples(ds.samples("test"), ds.info, t, 1)
    shown = ex[0]
    me = next(s for s in train if s.id == shown["id"])
    r = render(t, me, ds.info, examples=ex, max_examples=3)
    assert r.prompt.count("Sentiment:") == 4  # three others + the answer
    assert f'"{me.text}"\nSentiment: {shown["answer"]}' not in r.prompt


def test_scales_are_used_or_refused(tmp_path):
    ds = load_dataset(_cfg(_meld_like(tmp_path, _rows())))
    own = tmp_path / "own.yaml"
    base = ("name: own\nversion: 1\noutput: soft_label\nsystem: s\nuser: '{{ text }}'\n")
    own.write_text(base + "scales:\n  classification: {labels: [bad, meh, good]}\n")
    sc = load_template(str(own)).scale(ds.info)
    assert sc.labels == ("bad", "meh", "good") and sc.names == tuple(CLASSES)
    short = tmp_path / "short.yaml"
    short.write_text(base + "scales:\n  classification: {labels: [bad, good]}\n")
    with pytest.raises(TemplateError, match="one answer word per class"):
        load_template(str(short)).scale(ds.info)
    odd = tmp_path / "odd.yaml"
    odd.write_text(base + "scales:\n  meld: {labels: [a, b, c], values: [0, 1, 2]}\n")
    with pytest.raises(TemplateError, match="scales.meld is not used"):
        load_template(str(odd))
    # no scales at all: fine for classification (the class names), refused for regression
    none = tmp_path / "none.yaml"
    none.write_text(base)
    assert load_template(str(none)).scale(ds.info).labels == tuple(CLASSES)
    from workbench.data.store import DataInfo

    info = DataInfo(name="r", task="regression", metric_set="mosi", label_range=(-3.0, 3.0),
                    class_names=[], modalities=["text"], feature_dims={}, feature_kind={},
                    fingerprint="", source="")
    with pytest.raises(TemplateError, match="no scale for metric set 'mosi'"):
        load_template(str(none)).scale(info)


def test_a_few_shot_run_is_its_own_job_and_leaves_the_plain_jobs_keys(tmp_path):
    """Two runs into one cache that differ only in data.few_shot are two jobs: the second
    must not replace the first's sample keys (the join names both when asked for one)."""
    from teachers.job import CachingJob
    from workbench.cache import CacheStore
    from workbench.config import CacheConfig

    ds = load_dataset(_cfg(_meld_like(tmp_path, _rows()), context_turns=1))
    t = load_template("dialogue_polarity")
    ccfg = CacheConfig(dir=str(tmp_path / "cache"), template="dialogue_polarity")
    with CacheStore(tmp_path / "cache") as store:
        plain = CachingJob(TeacherConfig(), ccfg, t, ds, store, "m")
        shots = CachingJob(TeacherConfig(), ccfg, t, ds, store, "m", few_shot=1)
        assert plain.job_id != shots.job_id
        assert plain.spec.prompting == {} and shots.spec.prompting["few_shot"]["n"] == 1
        p_keys = {p.sample_id: p.key for p in plain.plan(["test"])}
        s_keys = {p.sample_id: p.key for p in shots.plan(["test"])}
        assert set(p_keys) == set(s_keys) and all(p_keys[i] != s_keys[i] for i in p_keys)
        assert {i: k for i, (_, k) in store.sample_keys(plain.job_id).items()} == p_keys
        assert {i: k for i, (_, k) in store.sample_keys(shots.job_id).items()} == s_keys
        assert {j["job"] for j in store.jobs()} == {plain.job_id, shots.job_id}


def test_a_run_with_dialogue_context_is_its_own_job(tmp_path):
    """data.context_turns changes what a context-rendering template asks: another job (its
    id names the option), so a run with and one without context in one cache keep their
    own sample keys. A template that shows no context is the same job either way."""
    from teachers.job import CachingJob
    from workbench.cache import CacheStore
    from workbench.config import CacheConfig

    path = _meld_like(tmp_path, _rows())
    with_ctx, without = (load_dataset(_cfg(path, context_turns=k)) for k in (2, 0))
    ccfg = CacheConfig(dir=str(tmp_path / "cache"), template="dialogue_polarity")
    dialogue, plain = load_template("dialogue_polarity"), load_template("sentiment_polarity")
    assert dialogue.renders_context and not plain.renders_context
    with CacheStore(tmp_path / "cache") as store:
        ctx = CachingJob(TeacherConfig(), ccfg, dialogue, with_ctx, store, "m", context_turns=2)
        none = CachingJob(TeacherConfig(), ccfg, dialogue, without, store, "m")
        assert ctx.job_id != none.job_id and ctx.spec.prompting == {"context_turns": 2}
        c_keys = {p.sample_id: p.key for p in ctx.plan(["test"])}
        n_keys = {p.sample_id: p.key for p in none.plan(["test"])}
        assert {i: k for i, (_, k) in store.sample_keys(ctx.job_id).items()} == c_keys
        assert {i: k for i, (_, k) in store.sample_keys(none.job_id).items()} == n_keys
        assert c_keys != n_keys
        same = [CachingJob(TeacherConfig(), ccfg, plain, ds, store, "m", context_turns=k)
                for ds, k in ((with_ctx, 2), (without, 0))]
        assert same[0].job_id == same[1].job_id
