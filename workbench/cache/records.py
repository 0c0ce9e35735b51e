"""What a teacher said about one request, as stored in the cache."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

OK = "ok"
DUPLICATE = "duplicate"
"""A paid answer for a key that already had an ok row (two jobs raced): never the key's
current answer, kept so the money it cost is counted."""

# Error kinds. Transport kinds come from the backend after its retries are spent;
# parse kinds from reading the answer. Each is retryable with `workbench cache retry`.
ERROR_KINDS = {
    "rate_limited": "HTTP 429 after all retries",
    "server_error": "HTTP 5xx after all retries",
    "timeout": "no answer within teacher.timeout_s after all retries",
    "connection": "could not reach the endpoint after all retries",
    "bad_request": "the endpoint rejected the request (HTTP 4xx other than 429)",
    "bad_response": "malformed or truncated response body",
    "no_label": "no label token among the top log-probabilities at the answer position",
    "no_logprobs": "the backend returned no log-probabilities (soft labels need them)",
    "empty_output": "the teacher returned no text",
    "backend_error": "the local backend raised while generating",
}


PROB_TOLERANCE = 1e-3
"""How far a soft label's probabilities may sum from 1."""


@dataclass
class SoftLabel:
    """A distribution over the template's label bins, read from token log-probabilities."""

    labels: list[str]
    """Label strings, in bin order (e.g. "1".."7")."""
    values: list[float]
    """Score each label stands for (e.g. -3..3), or class indices."""
    probs: list[float]
    """Renormalised over the label set; sums to 1."""
    expected: float
    variance: float
    entropy: float
    """In nats, over the label set."""
    off_label_mass: float
    """Probability the teacher put outside the label set at the answer position."""
    argmax: int

    def is_distribution(self) -> bool:
        """Probabilities, expected value and entropy finite, the probabilities summing to 1
        (within :data:`PROB_TOLERANCE`)."""
        return (all(math.isfinite(v) for v in (*self.probs, self.expected, self.entropy))
                and abs(sum(self.probs) - 1.0) < PROB_TOLERANCE)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SoftLabel:
        return cls(**d)


@dataclass
class TeacherOutput:
    """One attempt at one cache key."""

    key: str
    status: str
    """``ok`` or an error kind from :data:`ERROR_KINDS`."""
    error: str = ""
    raw_text: str = ""
    description: str | None = None
    soft_label: SoftLabel | None = None
    top_logprobs: list[dict[str, Any]] | None = None
    """Per generated position: the chosen token, its logprob and the top alternatives."""
    tokens_in: int = 0
    tokens_out: int = 0
    latency_s: float = 0.0
    cost_usd: float = 0.0
    retries: int = 0
    created_at: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == OK


def stable_hash(obj: Any, n: int = 32) -> str:
    """Hex digest of a JSON-able object with sorted keys."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:n]
