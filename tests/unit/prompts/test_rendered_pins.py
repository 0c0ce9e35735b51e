"""Rendered prompts pinned by hash: their text enters every cache key, so a change to how
templates load or render (or to the media references and cue lines they carry) must show
up here before it silently gives every cached answer a new key.

Each case renders a built-in template for fixed samples (text, speaker and dialogue
context, acoustic cues, few-shot examples, frames and an audio file with fixed bytes) and
pins the hash of what the cache key covers -- messages, plain prompt, versions -- with the
scale and the template's own hash. When a change is meant to alter a prompt, the template's
``version`` goes up and the pin here is updated in the same commit; a new built-in template
gets its pins beside the others.
"""

from __future__ import annotations

import pytest

from prompts import few_shot_examples, list_templates, load_template, render
from workbench.cache.records import stable_hash
from workbench.data import Media, Sample
from workbench.data.store import DataInfo

REGRESSION = DataInfo(name="t", task="regression", metric_set="mosi", label_range=(-3.0, 3.0),
                      class_names=[], modalities=["text", "audio", "vision"])
CLASSES = DataInfo(name="c", task="classification", metric_set="classification",
                   label_range=(0.0, 2.0), class_names=["negative", "neutral", "positive"],
                   modalities=["text"])
CUES = {"pitch": "high and varied", "loudness": "soft", "speaking_rate": "fast",
        "pauses": "long", "acoustic_cues_version": 1, "gesture": "nods"}

TEMPLATE_HASHES = {
    "context_aware": "e725bafc95624535",
    "context_aware_gold": "3c08b4ea105be86c",
    "dialogue_polarity": "96e2ed0636b26b8b",
    "paraphrase": "3fcf0af547017953",
    "sentiment_polarity": "e6f1442467cd0927",
    "sentiment_score": "6a7bc903e6b1e993",
}
"""Each built-in template's file hash (``Template.hash``, part of every key)."""

RENDERED = {
    ("plain", "context_aware"): "10b2093b7de9dbdc7a3e25b5c17b1ecb",
    ("plain", "context_aware_gold"): "1661ffb9e349e26f50203619371189ca",
    ("plain", "dialogue_polarity"): "699e6d3cb39c58361b46d4042b22fd5e",
    ("plain", "paraphrase"): "ce4d2df33cf9e143c8b71c4c85b5a935",
    ("plain", "sentiment_polarity"): "e5d9ca02871d92a9b5e860dae06d04ab",
    ("plain", "sentiment_score"): "ade214e53195d89dcdb2b4443c178913",
    ("media_cues", "context_aware"): "f3b50830d6dd1d1d3f6e3cfe60af1efa",
    ("media_cues", "context_aware_gold"): "e8b48a571532a91ee4493f8c904848e3",
    ("media_cues", "dialogue_polarity"): "df16ffcb6d7130ff1e7af74f373a7f24",
    ("media_cues", "paraphrase"): "4cd635331efe8fb495c8a87a988bdd67",
    ("media_cues", "sentiment_polarity"): "6c1a178d641796fe6980b9bc8fd4db1f",
    ("media_cues", "sentiment_score"): "bd3c24dfd8ecc2191f10f9dfd5bb872f",
    ("few_shot", "dialogue_polarity"): "9dc06b3d212461857902318d8c883757",
    ("few_shot", "sentiment_polarity"): "166eb6cadd5584102163dc11e20295ca",
    ("few_shot", "sentiment_score"): "8bf7c0c202305a0162eb2667ab8f51e5",
}
"""(case, template) -> hash of the rendered request."""


def _request_hash(r) -> str:
    return stable_hash({"messages": r.messages, "prompt": r.prompt, "versions": r.versions,
                        "scale": r.to_json()["scale"]})


def _media(tmp_path) -> Media:
    frames = []
    for i in range(6):
        f = tmp_path / f"frame{i}.png"
        f.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes([i]) * 16)
        frames.append(str(f))
    audio = tmp_path / "clip.wav"
    audio.write_bytes(b"RIFF" + bytes(range(64)))
    return Media(frames=frames, audio_file=str(audio))


def _cases(tmp_path) -> dict[tuple[str, str], str]:
    """Every case this test pins, rendered now."""
    plain = Sample(id="s1", text="I LOVED IT, honestly", split="train", label=2.0)
    rich = Sample(id="s2", text="well... it was fine", split="train", label=-0.4,
                  media=_media(tmp_path),
                  meta={**CUES, "speaker": "Ann",
                        "context": [{"speaker": "Bob", "text": "did you like it?"},
                                    {"speaker": "Ann", "text": "hm"}]})
    train = [Sample(id=f"t{i}", text=f"line {i}", split="train", label=None, label_class=i % 3,
                    meta={"speaker": f"S{i % 2}"}) for i in range(9)]
    line = Sample(id="t4", text="line 4", split="train", label=None, label_class=1,
                  meta={"speaker": "S0", "context": [{"speaker": "S1", "text": "line 3"}]})
    out: dict[tuple[str, str], str] = {}
    for name in list_templates():
        t = load_template(name)
        out[("plain", name)] = _request_hash(render(t, plain, REGRESSION))
        out[("media_cues", name)] = _request_hash(render(
            t, rich, REGRESSION, cue_fields=["acoustic", "gesture"], audio=True, variant=1))
    for name in ("dialogue_polarity", "sentiment_polarity", "sentiment_score"):
        t = load_template(name)
        examples = few_shot_examples(train, CLASSES, t, 1, seed=3)
        out[("few_shot", name)] = _request_hash(render(t, line, CLASSES, examples=examples,
                                                       max_examples=3))
    return out


def test_builtin_template_files_are_pinned():
    assert {n: load_template(n).hash for n in list_templates()} == TEMPLATE_HASHES


@pytest.mark.parametrize("case", ["plain", "media_cues", "few_shot"])
def test_rendered_prompts_are_pinned(tmp_path, case):
    got = {k: v for k, v in _cases(tmp_path).items() if k[0] == case}
    want = {k: v for k, v in RENDERED.items() if k[0] == case}
    assert got == want


def test_the_pins_see_a_one_character_change(tmp_path):
    base = _cases(tmp_path)
    t = load_template("sentiment_score")
    changed = render(t, Sample(id="s1", text="I LOVED IT, honestly!", split="train", label=2.0),
                     REGRESSION)
    assert _request_hash(changed) != base[("plain", "sentiment_score")]
