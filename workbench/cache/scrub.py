"""Scrub secrets out of server text before it is stored or logged.

A server may echo what it was sent (an API key in a 401 body, an ``Authorization`` header
in a debug page, a key pasted into a prompt and repeated back). Every text the cache
stores — error messages, raw answers, descriptions, top-k tokens — passes through
:func:`scrub` first, which removes the values registered with :func:`register_secret`
(the configured API key, registered by the backend that read it) and anything shaped like
a bearer token or an ``sk-...`` key.
"""

from __future__ import annotations

import re
import threading

REDACTED = "[REDACTED]"

_PATTERNS = re.compile(
    r"(?i:bearer)\s+[A-Za-z0-9._~+/=-]{8,}"      # Authorization: Bearer <token>
    r"|\bsk[-_](?:[A-Za-z0-9]+[-_])*[A-Za-z0-9]{6,}"  # sk-..., sk-proj-..., sk_live_...
)
_secrets: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Remember a secret's exact value so :func:`scrub` removes it wherever it appears."""
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(value)


def scrub(text: str | None) -> str | None:
    """``text`` with registered secrets and token-shaped strings replaced by ``[REDACTED]``."""
    if not text:
        return text
    with _lock:
        values = sorted(_secrets, key=len, reverse=True)
    for v in values:
        if v in text:
            text = text.replace(v, REDACTED)
    return _PATTERNS.sub(REDACTED, text)


def scrub_cut(text: str, limit: int) -> str:
    """``text`` scrubbed, then cut to ``limit`` characters (with ``...`` when cut).

    In this order: a secret that straddles the cut would lose its tail and no longer be
    the registered value, so cutting first can store most of a key."""
    text = scrub(text) or ""
    return text if len(text) <= limit else text[:limit] + "..."
