"""Soft labels from top-k token log-probabilities.

At the answer position the teacher's top-k alternatives are matched to the label set:
variants of a label's token (``"4"``, ``" 4"``, ``"▁4"``, ``"Positive"``, ``" positive"``)
are merged, a token that is an unambiguous prefix of one label's name counts for it
(``"pos"`` for ``positive`` when the name spans several tokens), probabilities are
renormalised over the label set, and the mass that fell outside it is kept as a quality
signal. A position with no label token at all is a parse failure, never a zero; so are
log-probabilities that are NaN or above 0, or whose probabilities sum past 1
(:class:`BadLogprobs`: a broken server, stored as a ``bad_response`` row).
"""

from __future__ import annotations

import math
from typing import Any

from workbench.cache.records import SoftLabel

_SPACE_MARKERS = ("▁", "Ġ", "Ċ")


NORM_TOLERANCE = 1e-2
"""How far past 1 the top-k probabilities at a position may sum (rounding in servers)."""


class NoLabelError(ValueError):
    """No label token among the alternatives at the answer position."""


class BadLogprobs(ValueError):
    """Log-probabilities that no distribution has: NaN, above 0, or summing past 1."""


def check_logprobs(alts: dict[str, float], position: int) -> None:
    """Raise :class:`BadLogprobs` unless ``alts`` (token -> logprob) can be a distribution."""
    bad = [(t, lp) for t, lp in alts.items()
           if not isinstance(lp, (int, float)) or math.isnan(lp) or lp > 1e-6]
    if bad:
        shown = ", ".join(f"{t!r}: {lp}" for t, lp in bad[:4])
        raise BadLogprobs(f"log-probabilities at position {position} are not valid ({shown})")
    total = sum(math.exp(lp) for lp in alts.values())
    if total > 1 + NORM_TOLERANCE:
        raise BadLogprobs(f"the top-k probabilities at position {position} sum to {total:.4f} > 1: "
                          "they cannot be normalised")


def norm_token(tok: str) -> str:
    for m in _SPACE_MARKERS:
        tok = tok.replace(m, " ")
    return tok.strip().lower()


def _match(tok: str, labels: list[str]) -> int | None:
    t = norm_token(tok)
    if not t:
        return None
    exact = [i for i, lab in enumerate(labels) if lab == t]
    if exact:
        return exact[0]
    if len(t) >= 2:
        prefix = [i for i, lab in enumerate(labels) if lab.startswith(t)]
        if len(prefix) == 1:
            return prefix[0]
    return None


def is_label_token(tok: str, labels: list[str]) -> bool:
    """Whether ``tok`` reads as one of ``labels`` (the test :func:`answer_position` applies)."""
    return _match(tok, [norm_token(lab) for lab in labels]) is not None


def answer_position(positions: list[dict[str, Any]], labels: list[str]) -> int:
    """The first position whose chosen token is a label, else the first non-blank one."""
    norm = [norm_token(lab) for lab in labels]
    first_nonblank = None
    for i, pos in enumerate(positions):
        if _match(pos["token"], norm) is not None:
            return i
        if first_nonblank is None and norm_token(pos["token"]):
            first_nonblank = i
    if first_nonblank is None:
        raise NoLabelError("the answer is blank")
    return first_nonblank


def soft_label(positions: list[dict[str, Any]], labels: list[str], values: list[float]) -> SoftLabel:
    """Read a :class:`SoftLabel` from per-position top-k log-probabilities.

    ``positions``: ``[{"token": chosen, "logprob": lp, "top": [[token, lp], ...]}, ...]``.
    """
    if not positions:
        raise NoLabelError("no generated positions")
    norm = [norm_token(lab) for lab in labels]
    i = answer_position(positions, labels)
    pos = positions[i]
    alts = {tok: lp for tok, lp in pos.get("top") or []}
    alts.setdefault(pos["token"], pos["logprob"])
    check_logprobs(alts, i)
    mass = [0.0] * len(labels)
    for tok, lp in alts.items():
        j = _match(tok, norm)
        if j is not None:
            mass[j] += math.exp(lp)
    total = sum(mass)
    if total <= 0.0:
        shown = ", ".join(repr(t) for t in list(alts)[:8])
        raise NoLabelError(f"no label of {labels} among the top tokens at position {i} ({shown})")
    probs = [m / total for m in mass]
    expected = sum(p * v for p, v in zip(probs, values, strict=True))
    variance = sum(p * (v - expected) ** 2 for p, v in zip(probs, values, strict=True))
    entropy = -sum(p * math.log(p) for p in probs if p > 0)
    return SoftLabel(
        labels=list(labels), values=[float(v) for v in values], probs=probs,
        expected=expected, variance=variance, entropy=entropy,
        off_label_mass=max(0.0, 1.0 - total), argmax=max(range(len(probs)), key=probs.__getitem__),
    )
