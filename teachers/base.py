"""The Teacher protocol every backend implements, and what crosses it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from workbench.errors import WorkbenchError


@dataclass
class TeacherRequest:
    """One prompt for a teacher, identified by its cache key."""

    key: str
    messages: list[dict[str, Any]]
    """Chat messages (image parts as ``sha256:`` references; backends materialise them)."""
    prompt: str
    """The same request as a plain prompt, for completion APIs and base models."""
    media: dict[str, str] = field(default_factory=dict)
    max_tokens: int = 64
    want_logprobs: bool = False
    stop: list[str] = field(default_factory=list)
    """Generation ends at the first of these strings (which is not part of the text)."""
    labels: list[str] = field(default_factory=list)
    """The label names when the answer is read only as a soft label (no description): a
    backend may then answer from the answer position alone (see ``teachers.scoring``)."""


@dataclass
class RawOutput:
    """What a backend got back for one request (after its own retries)."""

    text: str = ""
    positions: list[dict[str, Any]] | None = None
    """Per generated token: ``{"token", "logprob", "top": [[token, logprob], ...]}``."""
    tokens_in: int = 0
    tokens_out: int = 0
    latency_s: float = 0.0
    retries: int = 0
    error_kind: str = ""
    """Empty when the call succeeded; otherwise an error kind of workbench.cache.records."""
    error: str = ""
    finish_reason: str = ""
    usage_missing: bool = False
    """The answer came without token counts (no ``usage``): its price is not known and is
    counted at the request's worst case."""
    maybe_billed: int = 0
    """Attempts that were sent and may have been billed, though no answer was read (cut at
    the deadline, a body cut or malformed); each is counted at the worst-case price, so
    that the money counted is never below the money billed."""


OnResult = Callable[[TeacherRequest, RawOutput], bool]
"""Called as each request finishes; return False to stop sending new requests."""


class Teacher(Protocol):
    """A source of teacher outputs."""

    name: str

    def model_id(self) -> str:
        """Model name and revision, as it enters cache keys."""
        ...

    def load(self) -> None:
        """Load weights or open connections; called once before generate."""
        ...

    def generate(self, requests: Iterable[TeacherRequest], on_result: OnResult) -> None:
        """Answer every request, calling ``on_result`` as each finishes (in any order)."""
        ...

    def close(self) -> None:
        ...


class TeacherUnavailable(WorkbenchError, RuntimeError):
    """A backend cannot run here (missing package or device); the message says why."""
