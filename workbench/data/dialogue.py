"""Dialogue context: the previous utterances of a sample's dialogue, for prompts.

With ``data.dialogue_column`` and ``data.turn_column`` (manifest columns, kept in each
sample's ``meta``), :func:`add_dialogue_context` gives every sample
``meta["speaker"]`` (from ``data.speaker_column``) and ``meta["context"]``: the
``data.context_turns`` previous utterances of the same dialogue in the same split, oldest
first, each ``{"speaker": ..., "text": ...}``. It runs on the whole file before any
``data.subset``, so a sampled utterance keeps the turns that were not sampled. Templates
render ``context`` and ``speaker``; what they render enters the cache key.
"""

from __future__ import annotations

from collections import defaultdict

from workbench.config import DataConfig
from workbench.data.schema import DataError, Sample

CONTEXT_KEY = "context"
SPEAKER_KEY = "speaker"


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
    """Set ``meta["speaker"]`` and ``meta["context"]`` on every sample (module docstring)."""
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
    k = cfg.context_turns
    for turns in dialogues.values():
        turns.sort(key=lambda s: _turn(s, cfg))
        for i, s in enumerate(turns):
            prev = turns[max(0, i - k):i] if k else []
            s.meta[CONTEXT_KEY] = [{"speaker": p.meta.get(SPEAKER_KEY, ""), "text": p.text}
                                   for p in prev]
