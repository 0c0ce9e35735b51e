"""Dialogue context given as a list in each sample's own row (data.context_column), and
rows that are only context for the dialogue rows path (data.context_only_column)."""

from __future__ import annotations

import csv
import json

import pytest

from prompts import load_template, render
from workbench.config import CacheConfig, ConfigError, DataConfig, TeacherConfig
from workbench.data import DataError, fingerprint, load_dataset
from workbench.data.stats import dataset_stats

CLASSES = ["not_sarcastic", "sarcastic"]

RECORDS = [
    {"id": "s1", "text": "Oh great, another Monday.", "speaker": "Ann", "split": "train",
     "label": "sarcastic", "context": ["How was the weekend?", "Too short.", "Back to work!"],
     "context_speakers": ["Ben", "Ann", "Ben"]},
    {"id": "s2", "text": "I love this song.", "speaker": "Cy", "split": "train",
     "label": "not_sarcastic", "context": [], "context_speakers": []},
    {"id": "s3", "text": "Sure, I'd love to wait.", "speaker": "Ann", "split": "test",
     "label": "sarcastic",
     "context": [{"speaker": "Dee", "text": "The queue is two hours."}, "Really?"],
     "context_speakers": ["Dee", "Eve"]},
    {"id": "s4", "text": "That was nice.", "speaker": "Eve", "split": "test",
     "label": "not_sarcastic"},  # no context at all
]


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _csv(path, records, fields):
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in records:
            w.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()})
    return path


def _cfg(path, **kw):
    return DataConfig(path=str(path), task="classification", class_names=CLASSES,
                      class_column="label", modalities=["text"], speaker_column="speaker",
                      context_column="context", **kw)


def _by_id(ds):
    return {s.id: s for s in ds.samples()}


def test_a_jsonl_list_column_is_the_context_with_its_speakers(tmp_path):
    path = _jsonl(tmp_path / "sarcasm.jsonl", RECORDS)
    s = _by_id(load_dataset(_cfg(path, context_speakers_column="context_speakers")))
    assert s["s1"].meta["speaker"] == "Ann"
    assert s["s1"].meta["context"] == [{"speaker": "Ben", "text": "How was the weekend?"},
                                       {"speaker": "Ann", "text": "Too short."},
                                       {"speaker": "Ben", "text": "Back to work!"}]
    # the speakers column wins over an entry's own speaker
    assert s["s3"].meta["context"] == [{"speaker": "Dee", "text": "The queue is two hours."},
                                       {"speaker": "Eve", "text": "Really?"}]
    assert s["s2"].meta["context"] == [] and s["s4"].meta["context"] == []
    # the raw columns do not stay in meta beside the context
    assert "context_speakers" not in s["s1"].meta
    # without a speakers column: an object's own speaker, else none
    plain = _by_id(load_dataset(_cfg(path)))
    assert plain["s3"].meta["context"] == [{"speaker": "Dee", "text": "The queue is two hours."},
                                           {"speaker": "", "text": "Really?"}]
    assert plain["s1"].meta["context"][0] == {"speaker": "", "text": "How was the weekend?"}


def test_context_turns_keeps_the_last_lines_of_the_list(tmp_path):
    path = _jsonl(tmp_path / "sarcasm.jsonl", RECORDS)
    last2 = _by_id(load_dataset(_cfg(path, context_turns=2)))
    assert [t["text"] for t in last2["s1"].meta["context"]] == ["Too short.", "Back to work!"]
    assert len(last2["s3"].meta["context"]) == 2  # fewer lines than N: all of them
    none = _by_id(load_dataset(_cfg(path, context_turns=0)))
    assert all(s.meta["context"] == [] for s in none.values())


def test_a_csv_cell_holding_a_json_list_reads_the_same(tmp_path):
    fields = ["id", "text", "speaker", "split", "label", "context", "context_speakers"]
    kw = dict(context_speakers_column="context_speakers")
    a = load_dataset(_cfg(_csv(tmp_path / "s.csv", RECORDS, fields), **kw))
    b = load_dataset(_cfg(_jsonl(tmp_path / "s.jsonl", RECORDS), **kw))
    assert {i: s.meta["context"] for i, s in _by_id(a).items()} == \
        {i: s.meta["context"] for i, s in _by_id(b).items()}
    assert a.fingerprint == b.fingerprint


def test_bad_lists_name_the_file_line_and_sample(tmp_path):
    kw = dict(context_speakers_column="context_speakers")
    short = [dict(RECORDS[0]), {**RECORDS[2], "context_speakers": ["Dee"]}]
    path = _jsonl(tmp_path / "short.jsonl", short)
    with pytest.raises(DataError, match=r"short\.jsonl:2 \(sample 's3'\).*1 speaker\(s\) for 2 "
                                        r"line\(s\)"):
        load_dataset(_cfg(path, **kw))
    no_speakers = [{**RECORDS[0], "context_speakers": ""}]
    with pytest.raises(DataError, match=r"n\.csv:2 \(sample 's1'\).*0 speaker\(s\) for 3"):
        load_dataset(_cfg(_csv(tmp_path / "n.csv", no_speakers, list(RECORDS[0])), **kw))
    not_a_list = _jsonl(tmp_path / "str.jsonl", [{**RECORDS[0], "context": "Too short."}])
    with pytest.raises(DataError, match=r"str\.jsonl:1 \(sample 's1'\).*not a JSON list"):
        load_dataset(_cfg(not_a_list))
    an_object = _jsonl(tmp_path / "obj.jsonl", [{**RECORDS[0], "context": {"text": "x"}}])
    with pytest.raises(DataError, match="holds a dict"):
        load_dataset(_cfg(an_object))
    bad_entry = _jsonl(tmp_path / "entry.jsonl", [{**RECORDS[0], "context": ["ok", 3]}])
    with pytest.raises(DataError, match=r"entry 1 of data.context_column='context' is 3"):
        load_dataset(_cfg(bad_entry))


def test_context_settings_are_checked_together():
    base = dict(task="classification", class_names=CLASSES)
    with pytest.raises(ConfigError, match="data.context_column='ctx'.*not both"):
        DataConfig(context_column="ctx", dialogue_column="dlg", turn_column="t", **base)
    with pytest.raises(ConfigError, match="data.context_speakers_column='sp'.*set "
                                          "data.context_column"):
        DataConfig(context_speakers_column="sp", **base)
    with pytest.raises(ConfigError, match="data.context_only_column='ctx_only'.*"
                                          "data.dialogue_column and data.turn_column"):
        DataConfig(context_only_column="ctx_only", **base)
    with pytest.raises(ConfigError, match="data.context_turns=2.*data.context_column"):
        DataConfig(context_turns=2, **base)
    with pytest.raises(ConfigError, match="data.context_turns=-1"):
        DataConfig(context_column="ctx", context_turns=-1, **base)
    assert DataConfig(context_column="ctx", **base).context_turns is None
    with pytest.raises(DataError, match="data.context_column='ctx' is read from a manifest"):
        load_dataset(DataConfig(path="x.pkl", context_column="ctx"))


def test_the_rendered_prompt_shows_the_lines(tmp_path):
    path = _jsonl(tmp_path / "sarcasm.jsonl", RECORDS)
    ds = load_dataset(_cfg(path, context_speakers_column="context_speakers"))
    t = load_template("dialogue_polarity")
    r = render(t, _by_id(ds)["s1"], ds.info)
    assert ('Conversation so far:\nBen: "How was the weekend?"\nAnn: "Too short."\n'
            'Ben: "Back to work!"') in r.prompt
    assert 'Ann: "Oh great, another Monday."' in r.prompt
    assert "Conversation so far" not in render(t, _by_id(ds)["s2"], ds.info).prompt


def test_a_cache_job_with_and_one_without_the_list_context_are_two_jobs(tmp_path):
    from teachers.job import CachingJob
    from workbench.cache import CacheStore

    path = _jsonl(tmp_path / "sarcasm.jsonl", RECORDS)
    full, last1, zero = (load_dataset(_cfg(path, context_turns=k)) for k in (None, 1, 0))
    bare = load_dataset(DataConfig(path=str(path), task="classification", class_names=CLASSES,
                                   class_column="label", modalities=["text"],
                                   speaker_column="speaker"))
    assert full.fingerprint == bare.fingerprint  # the context is not in the data's hash
    # unset, a column named "context" does not reach templates (the no-context run)
    assert "context" not in _by_id(bare)["s1"].meta
    t = load_template("dialogue_polarity")
    ccfg = CacheConfig(dir=str(tmp_path / "cache"), template="dialogue_polarity")
    with CacheStore(tmp_path / "cache") as store:
        def job(ds, k):
            return CachingJob(TeacherConfig(), ccfg, t, ds, store, "m", context_turns=k,
                              context_list=True)
        all_, one, none = job(full, None), job(last1, 1), job(zero, 0)
        plain = CachingJob(TeacherConfig(), ccfg, t, bare, store, "m")
        assert all_.spec.prompting == {"context_list": "all"}
        assert one.spec.prompting == {"context_list": 1}
        assert none.spec.prompting == {} and none.job_id == plain.job_id
        assert len({all_.job_id, one.job_id, plain.job_id}) == 3
        a_keys = {p.sample_id: p.key for p in all_.plan(["train"])}
        n_keys = {p.sample_id: p.key for p in plain.plan(["train"])}
        assert a_keys["s1"] != n_keys["s1"] and a_keys["s2"] == n_keys["s2"]  # s2: no lines
        assert {i: k for i, (_, k) in store.sample_keys(all_.job_id).items()} == a_keys
        assert {i: k for i, (_, k) in store.sample_keys(plain.job_id).items()} == n_keys
        # a template that shows no context: one job whatever the context setting
        other = load_template("sentiment_polarity")
        assert CachingJob(TeacherConfig(), ccfg, other, full, store, "m", context_list=True,
                          context_turns=None).job_id == \
            CachingJob(TeacherConfig(), ccfg, other, bare, store, "m").job_id


# context-only rows ----------------------------------------------------------------------

DIALOGUE_FIELDS = ["id", "dlg", "turn", "who", "text", "label", "split", "ctx_only"]


def _dialogue_rows():
    rows = [  # dialogue 1: two context lines, then two labelled samples; out of order
        {"id": "d1_2", "dlg": 1, "turn": 2, "who": "Ann", "text": "Oh, wonderful.",
         "label": "sarcastic", "split": "train", "ctx_only": ""},
        {"id": "", "dlg": 1, "turn": 0, "who": "Ben", "text": "The car broke down.",
         "label": "", "split": "train", "ctx_only": "yes"},
        {"id": "d1_1c", "dlg": 1, "turn": 1, "who": "Ben", "text": "In the rain.",
         "label": "", "split": "train", "ctx_only": "TRUE"},
        {"id": "d1_3", "dlg": 1, "turn": 3, "who": "Ben", "text": "I know, right?",
         "label": "not_sarcastic", "split": "train", "ctx_only": "0"},
        {"id": "d2_1", "dlg": 2, "turn": 1, "who": "Cy", "text": "Thanks a lot.",
         "label": "sarcastic", "split": "test", "ctx_only": "no"},
        {"id": "d2_0c", "dlg": 2, "turn": 0, "who": "Dee", "text": "I ate your cake.",
         "label": "", "split": "test", "ctx_only": "1"},
    ]
    return rows


def _dialogue_cfg(path, **kw):
    return DataConfig(path=str(path), task="classification", class_names=CLASSES,
                      class_column="label", modalities=["text"], dialogue_column="dlg",
                      turn_column="turn", speaker_column="who", context_only_column="ctx_only",
                      **kw)


def test_context_only_rows_are_context_never_samples(tmp_path):
    path = _csv(tmp_path / "d.csv", _dialogue_rows(), DIALOGUE_FIELDS)
    ds = load_dataset(_dialogue_cfg(path, context_turns=2))  # labels required: passes
    s = _by_id(ds)
    assert sorted(s) == ["d1_2", "d1_3", "d2_1"] and ds.num_rows() == 3
    assert s["d1_2"].meta["context"] == [{"speaker": "Ben", "text": "The car broke down."},
                                         {"speaker": "Ben", "text": "In the rain."}]
    assert s["d1_3"].meta["context"] == [{"speaker": "Ben", "text": "In the rain."},
                                         {"speaker": "Ann", "text": "Oh, wonderful."}]
    assert s["d2_1"].meta["context"] == [{"speaker": "Dee", "text": "I ate your cake."}]
    r = render(load_template("dialogue_polarity"), s["d2_1"], ds.info)
    assert 'Conversation so far:\nDee: "I ate your cake."\n' in r.prompt
    # the same real samples without the context rows: the same fingerprint and stats
    real = [r for r in _dialogue_rows() if r["ctx_only"] in ("", "0", "no")]
    alone = load_dataset(_dialogue_cfg(_csv(tmp_path / "r.csv", real, DIALOGUE_FIELDS),
                                       context_turns=2))
    assert ds.fingerprint == alone.fingerprint == fingerprint(ds.samples())
    assert dict(dataset_stats(ds), name="") == dict(dataset_stats(alone), name="")
    assert dataset_stats(ds)["splits"]["train"]["n"] == 2
    # a subset draws from the real samples only
    sub = load_dataset(_dialogue_cfg(path, context_turns=2, subset={"train": 1}))
    assert [x.id for x in sub.samples("train")] in (["d1_2"], ["d1_3"])
    assert sub.fingerprint == load_dataset(_dialogue_cfg(
        tmp_path / "r.csv", context_turns=2, subset={"train": 1})).fingerprint
    # the no-context run of the same file: still no context rows among the samples
    assert sorted(_by_id(load_dataset(_dialogue_cfg(path, context_turns=0)))) == sorted(s)


def test_a_bad_context_only_flag_names_the_line(tmp_path):
    rows = _dialogue_rows()
    rows[3]["ctx_only"] = "maybe"
    path = _csv(tmp_path / "d.csv", rows, DIALOGUE_FIELDS)
    with pytest.raises(DataError, match=r"d\.csv:5: data.context_only_column='ctx_only' is "
                                        r"'maybe'"):
        load_dataset(_dialogue_cfg(path, context_turns=1))


def test_context_only_rows_in_jsonl_need_no_id_or_label(tmp_path):
    path = tmp_path / "d.jsonl"
    recs = [{"dlg": "a", "turn": 0, "who": "Ben", "text": "Nice weather.", "split": "valid",
             "ctx_only": True},
            {"id": "a1", "dlg": "a", "turn": 1, "who": "Ann", "text": "Lovely, pouring rain.",
             "label": "sarcastic", "split": "valid", "ctx_only": False},
            {"id": "a2", "dlg": "a", "turn": 2, "who": "Ben", "text": "Sure.",
             "label": "not_sarcastic", "split": "valid"}]
    _jsonl(path, recs)
    s = _by_id(load_dataset(_dialogue_cfg(path, context_turns=3)))
    assert sorted(s) == ["a1", "a2"]
    assert [t["text"] for t in s["a2"].meta["context"]] == ["Nice weather.",
                                                           "Lovely, pouring rain."]


def test_an_unset_context_column_keeps_a_context_column_from_the_prompts(tmp_path, caplog):
    """The no-context run by unsetting data.context_column: the file's "context" column is
    not shown raw to templates (it would fail or, well-formed, still show the lines)."""
    path = _jsonl(tmp_path / "sarcasm.jsonl", RECORDS)
    ds = load_dataset(DataConfig(path=str(path), task="classification", class_names=CLASSES,
                                 class_column="label", modalities=["text"]))
    assert all("context" not in s.meta for s in ds.samples())
    assert "set data.context_column=context" in caplog.text
    r = render(load_template("dialogue_polarity"), _by_id(ds)["s1"], ds.info)
    assert "Conversation so far" not in r.prompt
