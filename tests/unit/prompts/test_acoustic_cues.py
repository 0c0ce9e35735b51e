"""Acoustic cues in prompts: ``cache.cue_fields=[acoustic]`` shows the cue words media
ingestion wrote, and their wording version enters the cache key."""

from prompts import load_template, render
from teachers.job import cache_key
from workbench.data import Sample
from workbench.data.store import DataInfo

INFO = DataInfo(name="t", task="regression", metric_set="mosi", label_range=(-3.0, 3.0),
                class_names=[], modalities=["text", "audio"])
CUES = {"pitch": "high and varied", "loudness": "soft", "speaking_rate": "fast",
        "pauses": "long", "acoustic_cues_version": 1}


def sample(**meta):
    return Sample(id="a", text="it was fine", split="train", label=1.0, meta=meta)


def key(rendered):
    return cache_key(load_template("sentiment_polarity"), "m", {}, rendered)


def test_acoustic_stands_for_the_four_cues_in_plain_words():
    r = render(load_template("sentiment_polarity"), sample(**CUES), INFO, cue_fields=["acoustic"])
    user = r.messages[1]["content"]
    for line in ("pitch: high and varied", "loudness: soft", "speaking rate: fast", "pauses: long"):
        assert line in user
    assert r.versions == {"acoustic_cues": 1}
    assert type(r).from_json(r.to_json()).versions == {"acoustic_cues": 1}


def test_the_cue_version_is_part_of_the_key():
    t = load_template("sentiment_polarity")
    v1 = render(t, sample(**CUES), INFO, cue_fields=["acoustic"])
    v2 = render(t, sample(**{**CUES, "acoustic_cues_version": 2}), INFO, cue_fields=["acoustic"])
    assert v1.prompt == v2.prompt and key(v1) != key(v2)
    other = render(t, sample(**{**CUES, "pitch": "low and flat"}), INFO, cue_fields=["acoustic"])
    assert key(other) != key(v1)


def test_requests_without_acoustic_cues_keep_their_keys():
    t = load_template("sentiment_polarity")
    plain = render(t, sample(**CUES), INFO)
    assert plain.versions == {} and "pitch" not in plain.prompt
    assert "versions" not in plain.to_json()
    assert key(plain) == key(render(t, sample(), INFO))
