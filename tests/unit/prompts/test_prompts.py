import base64

import numpy as np
import pytest

from prompts import TemplateError, list_templates, load_template, materialize_messages, render
from workbench.data import Media, Sample
from workbench.data.store import DataInfo


def info(metric_set="mosi", modalities=("text", "audio", "vision"), class_names=()):
    return DataInfo(name="t", task="classification" if metric_set == "classification" else "regression",
                    metric_set=metric_set, label_range=(-3.0, 3.0), class_names=list(class_names),
                    modalities=list(modalities))


def sample(**kw):
    base = dict(id="s1", text="I LOVED IT", split="train", label=2.0, audio=np.zeros(3))
    base.update(kw)
    return Sample(**base)


def test_builtin_templates_load_and_have_distinct_hashes():
    names = list_templates()
    for required in ("context_aware", "sentiment_score", "paraphrase", "sentiment_polarity"):
        assert required in names
    hashes = {load_template(n).hash for n in names}
    assert len(hashes) == len(names)


def test_sentiment_score_scales():
    t = load_template("sentiment_score")
    r = render(t, sample(), info())
    assert r.scale.labels == tuple("1234567") and r.scale.values == (-3, -2, -1, 0, 1, 2, 3)
    assert "I LOVED IT" in r.prompt and r.prompt.endswith("Rating:")
    assert r.messages[0]["role"] == "system" and isinstance(r.messages[1]["content"], str)
    assert render(t, sample(), info("sims")).scale.values == (-1.0, -0.5, 0.0, 0.5, 1.0)
    cls = render(t, sample(label=None, label_class=1), info("classification", class_names=["neg", "pos"]))
    assert cls.scale.labels == ("neg", "pos")


def test_frames_become_image_parts_with_data_urls(tmp_path):
    frames = []
    for i in range(6):
        f = tmp_path / f"f{i}.png"
        f.write_bytes(b"\x89PNG" + bytes([i]))
        frames.append(str(f))
    t = load_template("context_aware")
    r = render(t, sample(media=Media(frames=frames)), info())
    parts = r.messages[1]["content"]
    images = [p for p in parts if p["type"] == "image_url"]
    assert len(images) == t.max_frames and all(p["image_url"]["url"].startswith("sha256:") for p in images)
    real = materialize_messages(r.messages, r.media)
    url = [p for p in real[1]["content"] if p["type"] == "image_url"][0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]).startswith(b"\x89PNG")
    # no vision modality: frames are not sent
    assert isinstance(render(t, sample(media=Media(frames=frames)), info(modalities=("text",))).messages[1]["content"], str)


def test_gold_label_must_be_declared(tmp_path):
    leaky = tmp_path / "leaky.yaml"
    leaky.write_text("name: leaky\nversion: 1\noutput: description\nsystem: s\n"
                     "user: 'The answer is {{ label }}'\n")
    with pytest.raises(TemplateError, match="declare uses_gold_label: true"):
        render(load_template(str(leaky)), sample(), info())
    gold = load_template("context_aware_gold")
    assert gold.uses_gold_label
    assert "2.0" in render(gold, sample(), info()).prompt
    with pytest.raises(TemplateError, match="has none"):
        render(gold, sample(label=None), info())


def test_cues_and_variants():
    t = load_template("paraphrase")
    a = render(t, sample(), info(), variant=0).prompt
    b = render(t, sample(), info(), variant=1).prompt
    assert a != b
    s = sample(meta={"audio_cues": "rising pitch", "other": "x"})
    p = render(load_template("context_aware"), s, info(), cue_fields=["audio_cues"]).prompt
    assert "audio cues: rising pitch" in p and "other" not in p


def test_bad_template_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: b\nversion: 1\noutput: essay\nsystem: s\nuser: u\n")
    with pytest.raises(TemplateError, match="output='essay'"):
        load_template(str(bad))
    bad.write_text("name: b\nversion: 1\noutput: text\nsystem: s\nuser: '{% if %}'\n")
    with pytest.raises(TemplateError, match="not a valid Jinja"):
        load_template(str(bad))
    bad.write_text("name: b\nversion: 1\noutput: text\nsystem: s\nuser: u\ntemperature: 3\n")
    with pytest.raises(TemplateError, match="unknown key"):
        load_template(str(bad))
    with pytest.raises(TemplateError, match="no template 'nope'"):
        load_template("nope")
    with pytest.raises(TemplateError, match="no scale for metric set 'sims'"):
        render(load_template("sentiment_score").__class__(**{**load_template("sentiment_score").__dict__,
                                                            "scales": {"mosi": load_template("sentiment_score").scales["mosi"]}}),
               sample(), info("sims"))
