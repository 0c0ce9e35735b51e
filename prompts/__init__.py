"""Versioned prompt templates rendered into OpenAI-style chat messages.

A template is a YAML file (``prompts/templates/<name>.yaml``, or any path) with Jinja
``system`` / ``user`` strings and what the teacher's answer is read as (``output``:
``soft_label``, ``description`` or ``text``). Rendering a template for a sample gives a
:class:`Rendered` request: chat messages (text parts, plus image parts for video frames and, opt-in, an ``input_audio`` part),
the same request as one plain prompt for base models, and what the cache stores.

A template that shows the gold label to the teacher must say so (``uses_gold_label``);
rendering it without a label fails, and consumers refuse its outputs on valid/test.
"""

from __future__ import annotations

import base64
import hashlib
import mimetypes
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import yaml

from workbench.data.acoustic import CUE_FIELDS as ACOUSTIC_CUES
from workbench.data.acoustic import CUES_VERSION_KEY
from workbench.data.schema import Sample
from workbench.data.store import DataInfo, file_sha256
from workbench.errors import WorkbenchError

TEMPLATE_DIR = Path(__file__).parent / "templates"
SCALE_SETS = ("mosi", "sims", "classification")
"""Metric sets a soft-label template's ``scales`` may name; a template without a scale for
a regression set refuses it; a classification set without one answers with its class
names."""
OUTPUTS = ("soft_label", "description", "text")
MEDIA_URL_PREFIX = "sha256:"

__all__ = ["Template", "Rendered", "Scale", "load_template", "list_templates", "render",
           "few_shot_examples",
           "materialize_messages", "media_file", "audio_bytes", "TemplateError"]


class TemplateError(WorkbenchError, ValueError):
    """A template file is malformed, or cannot be rendered for a sample."""


@dataclass(frozen=True)
class Scale:
    """The label set a soft-label template asks for."""

    labels: tuple[str, ...]
    values: tuple[float, ...]
    names: tuple[str, ...]


@dataclass
class Template:
    name: str
    version: int
    output: str
    uses_gold_label: bool
    system: str
    user: str
    answer_prefix: str
    max_tokens: int
    max_chars: int
    max_frames: int
    stop: tuple[str, ...]
    """Generation stops at the first of these strings."""
    scales: dict[str, dict[str, Any]]
    source: str
    text: str = field(repr=False)
    """The file's full text; its hash enters every cache key."""

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]

    @property
    def renders_context(self) -> bool:
        """Whether the prompt shows the dialogue's previous turns (``context``): only then
        does ``data.context_turns`` change what a job asks."""
        from jinja2 import meta

        return any("context" in meta.find_undeclared_variables(_ENV.parse(part))
                   for part in (self.system, self.user))

    def scale(self, info: DataInfo) -> Scale:
        """The label scale for a dataset: by metric set, or its class names."""
        if self.output != "soft_label":
            raise TemplateError(f"template {self.name!r} has output={self.output!r}: no label scale")
        spec = self.scales.get(info.metric_set)
        if info.metric_set == "classification":
            names = tuple(info.class_names)
            values = tuple(float(i) for i in range(len(names)))
            if spec is None:  # the answer words are the dataset's class names
                return Scale(labels=names, values=values, names=names)
            labels = tuple(str(x) for x in spec.get("labels", ()))
            if len(labels) != len(names):
                raise TemplateError(
                    f"template {self.name!r} ({self.source}): scales.classification.labels "
                    f"{list(labels)} must give one answer word per class of "
                    f"data.class_names={list(names)}, in that order; fix the template or "
                    "remove its classification scale to answer with the class names")
            return Scale(labels=labels, values=values, names=names)
        if spec is None:
            raise TemplateError(
                f"template {self.name!r} ({self.source}) has no scale for metric set "
                f"{info.metric_set!r}; add one under `scales:` (has {sorted(self.scales)})"
            )
        labels = tuple(str(x) for x in spec["labels"])
        values = tuple(float(x) for x in spec["values"])
        names = tuple(str(x) for x in spec.get("names", labels))
        if not (len(labels) == len(values) == len(names)):
            raise TemplateError(f"{self.source}: scale {info.metric_set!r} has labels, values "
                                "and names of different lengths")
        return Scale(labels=labels, values=values, names=names)


_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False,
                          keep_trailing_newline=False)


@lru_cache(maxsize=256)
def _compiled(source: str) -> jinja2.Template:
    """Compile each template string once (compiling costs far more than rendering)."""
    return _ENV.from_string(source)
_REQUIRED = ("name", "version", "output", "system", "user")


def list_templates() -> list[str]:
    return sorted(p.stem for p in TEMPLATE_DIR.glob("*.yaml"))


@lru_cache(maxsize=64)
def _load(path: str) -> Template:
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    try:
        d = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise TemplateError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(d, dict):
        raise TemplateError(f"{p}: a template is a mapping with keys {list(_REQUIRED)}")
    missing = [k for k in _REQUIRED if k not in d]
    if missing:
        raise TemplateError(f"{p}: missing key(s) {missing}")
    if d["output"] not in OUTPUTS:
        raise TemplateError(f"{p}: output={d['output']!r}; use one of {list(OUTPUTS)}")
    known = set(_REQUIRED) | {"uses_gold_label", "answer_prefix", "max_tokens", "max_chars",
                              "max_frames", "scales", "description", "stop"}
    unknown = sorted(set(d) - known)
    if unknown:
        raise TemplateError(f"{p}: unknown key(s) {unknown}; known: {sorted(known)}")
    for part in ("system", "user"):
        try:
            _ENV.parse(d[part])
        except jinja2.TemplateSyntaxError as e:
            raise TemplateError(f"{p}: {part} is not a valid Jinja template (line {e.lineno}): {e.message}") from None
    for metric_set, spec in (d.get("scales") or {}).items():
        if metric_set not in SCALE_SETS or not isinstance(spec, dict) or "labels" not in spec \
                or (metric_set != "classification" and "values" not in spec):
            raise TemplateError(
                f"{p}: scales.{metric_set} is not used: give scales for metric sets "
                f"{list(SCALE_SETS)}, each with labels (and values, except classification, "
                "whose values are the class indices)")
    return Template(
        name=str(d["name"]), version=int(d["version"]), output=d["output"],
        uses_gold_label=bool(d.get("uses_gold_label", False)), system=str(d["system"]),
        user=str(d["user"]), answer_prefix=str(d.get("answer_prefix", "")),
        max_tokens=int(d.get("max_tokens", 64)), max_chars=int(d.get("max_chars", 2000)),
        max_frames=int(d.get("max_frames", 4)), stop=tuple(str(x) for x in d.get("stop") or ()),
        scales=dict(d.get("scales") or {}),
        source=str(p), text=text,
    )


def load_template(name_or_path: str) -> Template:
    """A template by name (``prompts/templates/<name>.yaml``) or by file path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return _load(str(p.resolve()))
    builtin = TEMPLATE_DIR / f"{name_or_path}.yaml"
    if builtin.is_file():
        return _load(str(builtin))
    raise TemplateError(f"no template {name_or_path!r}: use one of {list_templates()} or a .yaml path")


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
        system = _compiled(template.system).render(ctx).strip()
        user = _compiled(template.user).render(ctx).strip()
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


def media_file(media: dict[str, str], ref: str) -> str:
    """The file behind a ``sha256:`` reference, checked to still hold the rendered content."""
    h = ref[len(MEDIA_URL_PREFIX):] if ref.startswith(MEDIA_URL_PREFIX) else ref
    path = media.get(h)
    if path is None:
        raise TemplateError(f"media reference {ref!r} is not among the request's media files")
    if file_sha256(path) != h:
        raise TemplateError(f"media file {path} changed since it was rendered; rerun the job")
    return path


def _data_url(path: str) -> str:
    mime = mimetypes.guess_type(path)[0] or "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(Path(path).read_bytes()).decode()


AUDIO_AS_IS = {".wav": "wav", ".mp3": "mp3"}
"""Audio formats chat APIs take in ``input_audio`` parts; other files are decoded to wav."""


def audio_format(path: str) -> str:
    """The ``input_audio`` format a file is sent as."""
    return AUDIO_AS_IS.get(Path(path).suffix.lower(), "wav")


def audio_bytes(path: str) -> bytes:
    """The file's bytes when chat APIs take its format; else its audio as 16 kHz mono wav."""
    if Path(path).suffix.lower() in AUDIO_AS_IS:
        return Path(path).read_bytes()
    import io
    import wave

    import av
    import numpy as np

    try:
        with av.open(path) as container:
            stream = next((s for s in container.streams if s.type == "audio"), None)
            if stream is None:
                raise TemplateError(f"media file {path} has no audio stream")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
            chunks = [f.to_ndarray().reshape(-1) for frame in container.decode(stream)
                      for f in resampler.resample(frame)]
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    except av.error.FFmpegError as e:
        raise TemplateError(f"media file {path}: cannot decode its audio ({e})") from None
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.concatenate(chunks).astype("<i2").tobytes() if chunks else b"")
    return buf.getvalue()


def materialize_messages(messages: list[dict[str, Any]], media: dict[str, str]) -> list[dict[str, Any]]:
    """Messages with ``sha256:`` references replaced by the files' content: image URLs by
    base64 data URLs, ``input_audio`` data by the base64 of the audio (see audio_bytes)."""
    out = []
    for m in messages:
        if isinstance(m["content"], list):
            parts = []
            for part in m["content"]:
                if part.get("type") == "image_url" and part["image_url"]["url"].startswith(MEDIA_URL_PREFIX):
                    path = media_file(media, part["image_url"]["url"])
                    part = {"type": "image_url", "image_url": {"url": _data_url(path)}}
                elif part.get("type") == "input_audio" and part["input_audio"]["data"].startswith(MEDIA_URL_PREFIX):
                    path = media_file(media, part["input_audio"]["data"])
                    data = base64.b64encode(audio_bytes(path)).decode()
                    part = {"type": "input_audio", "input_audio": {**part["input_audio"], "data": data}}
                parts.append(part)
            m = {**m, "content": parts}
        out.append(m)
    return out
