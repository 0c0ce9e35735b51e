"""Prompt templates: the YAML files, their checks, and the label scale a soft-label
template asks for.

A template is a YAML file (``prompts/templates/<name>.yaml``, or any path) with Jinja
``system`` / ``user`` strings and what the teacher's answer is read as (``output``:
``soft_label``, ``description`` or ``text``). Its file's text is hashed into every cache
key (:attr:`Template.hash`). A template that shows the gold label to the teacher must say
so (``uses_gold_label``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from workbench.config import ConfigError
from workbench.config.loader import load_yaml_text
from workbench.data.store import DataInfo
from workbench.errors import WorkbenchError

TEMPLATE_DIR = Path(__file__).parent / "templates"
SCALE_SETS = ("mosi", "sims", "classification")
"""Metric sets a soft-label template's ``scales`` may name; a template without a scale for
a regression set refuses it; a classification set without one answers with its class
names."""
OUTPUTS = ("soft_label", "description", "text")


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
def compiled(source: str) -> jinja2.Template:
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
        d = load_yaml_text(text, str(p))
    except ConfigError as e:
        raise TemplateError(str(e)) from None
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
