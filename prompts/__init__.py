"""Versioned prompt templates rendered into OpenAI-style chat messages.

A template is a YAML file (``prompts/templates/<name>.yaml``, or any path) with Jinja
``system`` / ``user`` strings and what the teacher's answer is read as (``output``:
``soft_label``, ``description`` or ``text``). Rendering a template for a sample gives a
:class:`Rendered` request: chat messages (text parts, plus image parts for video frames and, opt-in, an ``input_audio`` part),
the same request as one plain prompt for base models, and what the cache stores.

A template that shows the gold label to the teacher must say so (``uses_gold_label``);
rendering it without a label fails, and consumers refuse its outputs on valid/test.

:mod:`prompts.template` loads and checks templates, :mod:`prompts.render` renders them
(and picks few-shot examples), :mod:`prompts.media` resolves the media references; the
names below are the package's public ones.
"""

from prompts.media import audio_bytes, materialize_messages, media_file
from prompts.render import Rendered, few_shot_examples, render
from prompts.template import Scale, Template, TemplateError, list_templates, load_template

__all__ = ["Template", "Rendered", "Scale", "load_template", "list_templates", "render",
           "few_shot_examples",
           "materialize_messages", "media_file", "audio_bytes", "TemplateError"]
