"""Text lengths in the student text encoder's tokens, against ``student.max_text_len``.

The student cuts every transcript at ``student.max_text_len`` tokens of its encoder's
tokenizer (``truncation=True`` when batching): a longer text loses its end, without a
word -- with dialogue context written before the utterance, the utterance itself. This
module counts what the cut takes: :func:`length_stats` per split (p50 / p95 / max, and the
count and share over a limit), :func:`truncation_warning` the one line training logs before
it starts (:func:`warn_truncation`), and ``workbench data stats`` shows the table.

Lengths count the special tokens the student's batches hold (``[CLS] ... [SEP]``), as the
limit does. :func:`token_counter` reads the encoder directory's ``tokenizer.json`` with the
``tokenizers`` library -- the backend transformers' fast tokenizer runs, without importing
transformers (``data stats`` stays quick) -- or, for a directory without one, its
``AutoTokenizer``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from workbench.config.student import StudentConfig
from workbench.data.schema import Sample
from workbench.models import resolve_text_encoder

log = logging.getLogger(__name__)

COVER = 0.95
"""The share of texts a suggested ``student.max_text_len`` keeps whole."""

Counter = Callable[[Sequence[str]], list[int]]


def sample_text(sample: Sample) -> str:
    """The text the student tokenizes for ``sample`` (its transcript; '' without one)."""
    return sample.text or ""


def token_counter(encoder: str) -> tuple[Counter, int | None]:
    """``(count, max_positions)`` for a student text encoder (``minilm`` or a directory):
    ``count(texts)`` gives each text's length in tokens, special tokens included, never
    cut; ``max_positions`` is the most tokens the encoder reads (``None`` when its config
    does not say). Raises :class:`workbench.models.ModelNotFound` when it is not here."""
    path = Path(resolve_text_encoder(encoder))
    if (path / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        tok.no_padding()
        tok.no_truncation()

        def count(texts: Sequence[str]) -> list[int]:
            return [len(e.ids) for e in tok.encode_batch(list(texts))]
    else:
        from transformers import AutoTokenizer

        auto = AutoTokenizer.from_pretrained(str(path))

        def count(texts: Sequence[str]) -> list[int]:
            if not texts:
                return []
            return [len(ids) for ids in auto(list(texts), verbose=False)["input_ids"]]
    return count, _max_positions(path)


def _max_positions(path: Path) -> int | None:
    cfg = path / "config.json"
    if not cfg.is_file():
        return None
    value = json.loads(cfg.read_text()).get("max_position_embeddings")
    return int(value) if isinstance(value, int) and value > 0 else None


def length_stats(lengths: Sequence[int], limit: int | None = None) -> dict[str, Any]:
    """``n``, ``p50``, ``p95``, ``max`` of token ``lengths`` (each an observed length: the
    smallest length that many texts fit in); with ``limit``: ``over`` (texts longer than
    it), ``share`` (of ``n``) and ``limit``. Empty for no lengths."""
    if not lengths:
        return {}
    a = np.asarray(lengths)
    out: dict[str, Any] = {"n": int(a.size), "p50": _quantile(a, 0.5), "p95": _quantile(a, COVER),
                           "max": int(a.max())}
    if limit is not None:
        over = int((a > limit).sum())
        out.update(limit=int(limit), over=over, share=round(over / a.size, 4))
    return out


def _quantile(a: np.ndarray, q: float) -> int:
    """The smallest observed length at least ``q`` of the texts fit in."""
    s = np.sort(a)
    return int(s[max(0, math.ceil(q * s.size) - 1)])


def percent(share: float) -> str:
    """``share`` as a percentage, a non-zero share under 0.1% as ``<0.1%``."""
    return "<0.1%" if 0 < share < 0.001 else f"{share:.1%}"


def truncation_warning(lengths: Mapping[str, Sequence[int]], limit: int,
                       max_positions: int | None = None,
                       field: str = "student.max_text_len") -> str | None:
    """What ``field=limit`` cuts of the splits' token ``lengths``: the count, the share, the
    longest, and what to set (the length :data:`COVER` of the texts fit in, or the longest,
    within ``max_positions``). ``None`` when nothing is cut."""
    every = [n for split in lengths.values() for n in split]
    total = length_stats(every, limit)
    if not total or not total["over"]:
        return None
    per = ", ".join(f"{split} {sum(n > limit for n in ls)} of {len(ls)}"
                    for split, ls in lengths.items() if ls)
    cover = total["p95"] if total["p95"] > limit else total["max"]
    what = "all of them" if cover >= total["max"] else f"{COVER:.0%} of them"
    hint = f"{field}={cover} covers {what}"
    if max_positions and cover > max_positions:
        hint = (f"{field}={max_positions} is the most the encoder reads ({max_positions} "
                f"positions; {cover} would cover {what})")
    return (f"{field}={limit} cuts {total['over']} of {total['n']} texts "
            f"({percent(total['share'])}; {per}); the longest has {total['max']} tokens "
            f"(p50 {total['p50']}, p95 {total['p95']}). A cut text loses its end (with context "
            f"written before the utterance, the utterance itself): {hint}")


def warn_truncation(student: StudentConfig, splits: Mapping[str, Sequence[Sample]]) -> str | None:
    """Log (as a warning) what ``student.max_text_len`` cuts of the ``splits``' texts, counted
    with the student's own tokenizer; returns the message (``None``: nothing is cut)."""
    count, max_positions = token_counter(student.text_encoder)
    lengths = {split: count([sample_text(s) for s in samples]) for split, samples in splits.items()}
    msg = truncation_warning(lengths, student.max_text_len, max_positions)
    if msg:
        log.warning("%s", msg)
    return msg
