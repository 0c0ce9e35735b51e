"""Dialogue context: the previous utterances of a sample, for prompts.

Every sample gets ``meta["speaker"]`` (from ``data.speaker_column``) and
``meta["context"]``: previous lines, oldest first, each ``{"speaker": ..., "text": ...}``.
They come from one of two places:

* **other rows** (``data.dialogue_column`` and ``data.turn_column``, kept in each sample's
  ``meta``): :func:`add_dialogue_context` gives each sample the ``data.context_turns``
  previous utterances of the same dialogue in the same split. It runs on the whole file
  before any ``data.subset``, so a sampled utterance keeps the turns that were not sampled.
  Rows marked by ``data.context_only_column`` (:func:`context_only`) take part here and
  are then dropped (:func:`drop_context_only`): they are never samples.
* **a list in the sample's own row** (``data.context_column``, with
  ``data.context_speakers_column``): :func:`list_context`, called by the manifest reader
  for each row; ``data.context_turns`` keeps the last N lines (unset: all of them).

Templates render ``context`` and ``speaker``; what they render enters the cache key, and
:func:`teachers.job.prompting_options` puts the setting into the caching job's id.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from typing import Any

from workbench.config import DataConfig
from workbench.data.schema import DataError, Sample

log = logging.getLogger(__name__)

CONTEXT_KEY = "context"
SPEAKER_KEY = "speaker"
CONTEXT_ONLY_KEY = "_context_only"
"""``meta`` flag the manifest reader sets on a context-only row (never on a sample)."""

_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no", "")


def _turn(sample: Sample, cfg: DataConfig) -> float:
    value = sample.meta.get(cfg.turn_column)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataError(f"sample {sample.id!r} (line {sample.meta.get('source_line', '?')}): "
                        f"data.turn_column={cfg.turn_column!r} is {value!r}, not a number; "
                        "name the column holding each utterance's position in its "
                        "dialogue") from None


def add_dialogue_context(samples: list[Sample], cfg: DataConfig) -> None:
    """Set ``meta["speaker"]`` and ``meta["context"]`` on every sample from the previous
    rows of its dialogue (module docstring)."""
    if not samples:
        return
    missing = [s.id for s in samples if s.meta.get(cfg.dialogue_column) in (None, "")]
    if missing:
        raise DataError(f"{len(missing)} sample(s) have no data.dialogue_column="
                        f"{cfg.dialogue_column!r} (e.g. {missing[:3]}); fill it or unset "
                        "data.dialogue_column")
    dialogues: dict[tuple[str, str], list[Sample]] = defaultdict(list)
    for s in samples:
        if cfg.speaker_column:
            s.meta[SPEAKER_KEY] = str(s.meta.get(cfg.speaker_column) or "")
        dialogues[(s.split, str(s.meta[cfg.dialogue_column]))].append(s)
    k = cfg.context_turns or 0
    for turns in dialogues.values():
        if k:
            turns.sort(key=lambda s: _turn(s, cfg))
        for i, s in enumerate(turns):
            prev = turns[max(0, i - k):i] if k else []
            s.meta[CONTEXT_KEY] = [{"speaker": p.meta.get(SPEAKER_KEY, ""), "text": p.text}
                                   for p in prev]


def context_only(value: Any, cfg: DataConfig, where: str) -> bool:
    """Whether a ``data.context_only_column`` cell marks a context-only row: true/1/yes
    (any case, or a JSON true / 1); false/0/no, empty or missing: a sample. Anything else
    is a :class:`DataError` naming ``where`` (file:line)."""
    if value is None or isinstance(value, bool):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise DataError(f"{where}: data.context_only_column={cfg.context_only_column!r} is "
                    f"{value!r}; use true/1/yes for a row that is only context, false/0/no "
                    "or empty for a sample")


def drop_context_only(samples: list[Sample]) -> list[Sample]:
    """``samples`` without the context-only rows (after they fed the dialogue context)."""
    kept = [s for s in samples if not s.meta.get(CONTEXT_ONLY_KEY)]
    if len(kept) < len(samples):
        log.info("data.context_only_column: %d context-only rows shown as context, not "
                 "samples", len(samples) - len(kept))
    return kept


def _as_list(value: Any, field: str, column: str, where: str) -> list[Any]:
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            short = value if len(value) <= 60 else value[:57] + "..."
            raise DataError(f"{where}: data.{field}={column!r} holds {short!r}, not a JSON "
                            f"list ({e.msg}); write the lines as a JSON list, e.g. "
                            '["first line", "second line"]') from None
    if not isinstance(value, list):
        raise DataError(f"{where}: data.{field}={column!r} holds a {type(value).__name__} "
                        f"({value!r}), not a list; write the lines as a JSON list, e.g. "
                        '["first line", "second line"]')
    return value


def list_context(row: dict[str, Any], cfg: DataConfig, where: str) -> list[dict[str, str]]:
    """The ``context`` of one manifest row from ``data.context_column`` (and
    ``data.context_speakers_column``): ``[{speaker, text}]``, oldest first, the last
    ``data.context_turns`` of them (unset: all). ``where`` names the file, line and sample
    id in errors: a value that is not a list, an entry that is neither a string nor an
    object with a ``text``, or a speakers list of another length."""
    lines = _as_list(row.get(cfg.context_column), "context_column", cfg.context_column, where)
    context: list[dict[str, str]] = []
    for i, entry in enumerate(lines):
        if isinstance(entry, str):
            context.append({"speaker": "", "text": entry.strip()})
        elif isinstance(entry, dict) and isinstance(entry.get("text"), str):
            speaker = entry.get("speaker")
            context.append({"speaker": "" if speaker is None else str(speaker).strip(),
                            "text": entry["text"].strip()})
        else:
            raise DataError(f"{where}: entry {i} of data.context_column="
                            f"{cfg.context_column!r} is {entry!r}; each entry is a string or "
                            'an object {"speaker": ..., "text": ...}')
    if cfg.context_speakers_column:
        speakers = _as_list(row.get(cfg.context_speakers_column), "context_speakers_column",
                            cfg.context_speakers_column, where)
        if len(speakers) != len(context):
            raise DataError(f"{where}: data.context_speakers_column="
                            f"{cfg.context_speakers_column!r} has {len(speakers)} speaker(s) "
                            f"for {len(context)} line(s) of data.context_column="
                            f"{cfg.context_column!r}; give one speaker per line, in the same "
                            'order (null or "" for an unknown one)')
        for turn, speaker in zip(context, speakers, strict=True):
            turn["speaker"] = "" if speaker is None else str(speaker).strip()
    k = cfg.context_turns
    if k is not None:
        context = context[-k:] if k else []
    return context
