"""Rendering a template for a sample: the chat messages, the plain prompt and what the
cache stores (:class:`Rendered`), and the few-shot examples a render may show.

The rendered text enters the sample's cache key; media parts carry ``sha256:`` references
to the files' content (:mod:`prompts.media` turns them into what a backend sends).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import jinja2

from prompts.media import MEDIA_URL_PREFIX, audio_format
from prompts.template import Scale, Template, TemplateError, compiled
from workbench.data.acoustic import CUE_FIELDS as ACOUSTIC_CUES
from workbench.data.acoustic import CUES_VERSION_KEY
from workbench.data.schema import Sample
from workbench.data.store import DataInfo, file_sha256


@dataclass
class Rendered:
    """One request, ready for any backend and for the cache."""

    messages: list[dict[str, Any]]
    """Chat messages; image parts carry ``sha256:<hash>`` URLs (see materialize_messages)."""
    prompt: str
    """The same request as one plain-text prompt ending in the answer prefix (base models)."""
    media: dict[str, str]
    """hash -> file path of each image part."""
    scale: Scale | None
    versions: dict[str, int] = field(default_factory=dict)
    """Versions of generated content the request shows (``acoustic_cues``: the version of
    the cue wording); part of the cache key when not empty."""

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Rendered:
        sc = d.get("scale")
        scale = None if sc is None else Scale(tuple(sc["labels"]), tuple(sc["values"]), tuple(sc["names"]))
        return cls(messages=d["messages"], prompt=d["prompt"], media=d.get("media", {}), scale=scale,
                   versions=d.get("versions", {}))

    def to_json(self) -> dict[str, Any]:
        return {"messages": self.messages, "prompt": self.prompt, "media": self.media,
                "scale": None if self.scale is None else
                {"labels": list(self.scale.labels), "values": list(self.scale.values),
                 "names": list(self.scale.names)},
                **({"versions": self.versions} if self.versions else {})}


def _frames(sample: Sample, k: int) -> list[str]:
    frames = sample.media.frames
    if len(frames) <= k:
        return list(frames)
    step = len(frames) / k
    return [frames[int(i * step + step / 2)] for i in range(k)]


def cue_values(sample: Sample, cue_fields: list[str] | tuple[str, ...]) -> tuple[dict[str, Any], dict[str, int]]:
    """The cues a request shows (name as shown -> value) and the versions they carry.

    A field is a ``meta`` key of the sample; ``acoustic`` stands for the acoustic cues media
    ingestion writes (pitch, loudness, speaking rate, pauses), whose wording version then
    enters the request's versions (and so its cache key)."""
    fields: list[str] = []
    for f in cue_fields:
        fields += list(ACOUSTIC_CUES) if f == "acoustic" else [f]
    cues = {f.replace("_", " "): sample.meta[f] for f in fields if sample.meta.get(f) not in (None, "")}
    versions = {}
    if any(f in ACOUSTIC_CUES and f.replace("_", " ") in cues for f in fields) \
            and CUES_VERSION_KEY in sample.meta:
        versions["acoustic_cues"] = int(sample.meta[CUES_VERSION_KEY])
    return cues, versions


def render(template: Template, sample: Sample, info: DataInfo, *, cue_fields: list[str] | tuple[str, ...] = (),
           variant: int = 0, audio: bool = False, examples: list[dict[str, Any]] | tuple = (),
           max_examples: int = 0) -> Rendered:
    """Render ``template`` for ``sample``; raises TemplateError naming the sample on failure.

    The template sees ``text``, ``speaker`` and ``context`` (the previous utterances of the
    dialogue, ``[{speaker, text}]``, :mod:`workbench.data.dialogue`), ``frames``, ``cues``,
    ``scale`` and ``examples``: few-shot examples from the train split
    (:func:`few_shot_examples`, ``[{id, text, speaker, answer}]``), never the sample itself
    (at most ``max_examples`` when > 0).

    ``audio``: add the sample's audio file as an ``input_audio`` part (for audio-capable
    chat models; ``teacher.send_audio``); like frames, it is referenced by content hash.
    """
    scale = template.scale(info) if template.output == "soft_label" else None
    frames = _frames(sample, template.max_frames) if "vision" in info.modalities else []
    cues, versions = cue_values(sample, cue_fields)
    ctx: dict[str, Any] = {
        "text": sample.text, "frames": frames, "cues": cues, "variant": variant,
        "speaker": str(sample.meta.get("speaker") or ""),
        "context": list(sample.meta.get("context") or []),
        "examples": [e for e in examples if e["id"] != sample.id][:max_examples]
        if max_examples else [e for e in examples if e["id"] != sample.id],
        "scale": [{"token": t, "name": n, "value": v}
                  for t, n, v in zip(scale.labels, scale.names, scale.values, strict=True)]
        if scale else [],
        "label_range": list(info.label_range),
    }
    if template.uses_gold_label:
        if sample.label is None and sample.label_class is None:
            raise TemplateError(f"template {template.name!r} shows the gold label but sample "
                                f"{sample.id!r} has none")
        ctx["label"] = sample.label if sample.label is not None else info.class_names[sample.label_class]
    try:
        system = compiled(template.system).render(ctx).strip()
        user = compiled(template.user).render(ctx).strip()
    except jinja2.UndefinedError as e:
        hint = " (declare uses_gold_label: true to use `label`)" if "label" in str(e) else ""
        raise TemplateError(f"template {template.name!r} on sample {sample.id!r}: {e}{hint}") from None
    media = {file_sha256(f): f for f in frames}
    content: str | list[dict[str, Any]]
    parts = [{"type": "image_url", "image_url": {"url": MEDIA_URL_PREFIX + h}} for h in media]
    if audio and sample.media.audio_file:
        h = file_sha256(sample.media.audio_file)
        media[h] = sample.media.audio_file
        parts.append({"type": "input_audio",
                      "input_audio": {"data": MEDIA_URL_PREFIX + h, "format": audio_format(sample.media.audio_file)}})
    content = [{"type": "text", "text": user}] + parts if parts else user
    messages = [{"role": "system", "content": system}, {"role": "user", "content": content}]
    prompt = f"{system}\n\n{user}\n{template.answer_prefix}".rstrip()
    return Rendered(messages=messages, prompt=prompt, media=media, scale=scale, versions=versions)


def few_shot_examples(train: list[Sample], info: DataInfo, template: Template,
                      per_label: int, seed: int = 0) -> list[dict[str, Any]]:
    """Few-shot examples for ``template`` from the **train** split only: ``per_label``
    labelled samples per answer word of its scale (a regression label goes to the word of
    the nearest scale value), picked by a seeded hash of the id, in a fixed interleaved
    order. Each is ``{id, text, speaker, answer}``; :func:`render` drops the sample itself."""
    import random

    if per_label <= 0:
        return []
    if any(s.split != "train" for s in train):
        raise TemplateError("few-shot examples come from the train split only")
    scale = template.scale(info) if template.output == "soft_label" else None
    if scale is None:
        raise TemplateError(f"template {template.name!r} has no label scale to answer few-shot "
                            "examples with; set data.few_shot=0")
    by_word: dict[str, list[Sample]] = {w: [] for w in scale.labels}
    for s in train:
        if info.task == "classification":
            if s.label_class is None:
                continue
            word = scale.labels[int(s.label_class)]
        else:
            if s.label is None:
                continue
            word = min(zip(scale.labels, scale.values, strict=True),
                       key=lambda lv: abs(lv[1] - float(s.label)))[0]
        by_word[word].append(s)
    rng = random.Random(seed)
    picked: dict[str, list[Sample]] = {}
    for word, pool in by_word.items():
        pool = sorted(pool, key=lambda s: hashlib.sha256(f"{seed}\x00{s.id}".encode()).hexdigest())
        picked[word] = pool[: per_label + 1]  # one spare: a sample never shows itself
    order = [w for w in scale.labels]
    rng.shuffle(order)
    out = []
    for i in range(per_label + 1):
        for w in order:
            if i < len(picked[w]):
                s = picked[w][i]
                out.append({"id": s.id, "text": s.text, "answer": w,
                            "speaker": str(s.meta.get("speaker") or "")})
    return out
