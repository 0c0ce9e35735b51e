"""``openai_compat``: any OpenAI-compatible endpoint (OpenAI, ``vllm serve``, llama.cpp).

The official ``openai`` async client with its own retries turned off; this module
retries instead, so every attempt is counted: jittered exponential backoff on 429, 5xx,
timeouts, connection errors and malformed bodies, honouring ``Retry-After``. Requests run
with bounded concurrency under requests-per-minute and tokens-per-minute limits.
``teacher.timeout_s`` is a total deadline per attempt (connect, headers and the whole
body): a server that drips its answer a byte at a time is cut off at the deadline, and the
attempt is retried or becomes a ``timeout`` row. The API key is read from the environment
variable the config names and goes nowhere else: it is registered with
:mod:`workbench.cache.scrub`, so server texts that echo it are scrubbed before they are
logged or stored.

A soft-label-only request (``teachers.scoring.score_only``) asks for one token with its
``logprobs`` (``max_tokens=1``) and is re-sent whole only when that token is no label. The
prompt is sent as rendered: the template's shared text comes first and byte-identical in
every request, so servers that cache prompt prefixes reuse it (vLLM's automatic prefix
caching, llama.cpp's ``cache_prompt``, OpenAI's automatic prompt caching from 1024 tokens).

A response body is read only up to ``teacher.max_response_bytes`` once decompressed
(:func:`capped_client`): a larger one becomes a ``bad_response`` row, counted as possibly
billed, and the job goes on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from typing import Any
from urllib.parse import urljoin, urlsplit

from prompts import materialize_messages
from teachers.base import OnResult, RawOutput, TeacherRequest, TeacherUnavailable
from teachers.scoring import needs_full_decode, score_only
from workbench.cache.scrub import register_secret, scrub_cut
from workbench.config import TeacherConfig

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
MAX_RETRY_AFTER_S = 120.0


class RateLimiter:
    """Requests-per-minute and tokens-per-minute limits over a sliding 60 s window.

    ``events`` is the window's history (time, tokens); a backend passes the same deque to
    the limiter of each of its ``generate`` calls, so the limits hold across calls (the
    sender's budget pauses, the Ray engine's batches), not only within one."""

    def __init__(self, rpm: int, tpm: int, clock=time.monotonic,
                 events: deque[tuple[float, int]] | None = None) -> None:
        self.rpm, self.tpm, self.clock = rpm, tpm, clock
        self.events: deque[tuple[float, int]] = deque() if events is None else events
        self.lock = asyncio.Lock()

    def _delay(self, tokens: int) -> float:
        now = self.clock()
        while self.events and now - self.events[0][0] >= 60.0:
            self.events.popleft()
        wait = 0.0
        if self.rpm and len(self.events) >= self.rpm:
            wait = max(wait, 60.0 - (now - self.events[len(self.events) - self.rpm][0]))
        if self.tpm:
            used = sum(t for _, t in self.events)
            if used + tokens > self.tpm and self.events:
                # wait until enough of the window has expired
                need = used + tokens - self.tpm
                freed = 0
                for ts, t in self.events:
                    freed += t
                    if freed >= need:
                        wait = max(wait, 60.0 - (now - ts))
                        break
        return max(0.0, wait)

    async def acquire(self, tokens: int) -> None:
        if not (self.rpm or self.tpm):
            return
        async with self.lock:
            while (delay := self._delay(tokens)) > 0:
                await asyncio.sleep(delay)
            self.events.append((self.clock(), tokens))


def _retry_after(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    if response is None:
        return None
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return min(MAX_RETRY_AFTER_S, max(0.0, float(value)))
    except ValueError:
        return None


class ResponseTooLarge(ValueError):
    """A response body passed ``teacher.max_response_bytes`` once decompressed."""


def capped_client(base_url: str, max_bytes: int) -> Any:
    """The HTTP client the teacher sends with: it follows a redirect only within
    ``base_url``'s origin (:func:`same_origin_only`) and reads a response body only up to
    ``max_bytes`` decompressed bytes.

    The body is counted as httpx decodes it (in pieces of at most 1 MiB, whatever the
    compression ratio), and reading stops with :class:`ResponseTooLarge` at the first
    piece past the cap, so memory holds about the cap, never the expanded body."""
    from openai import DefaultAsyncHttpxClient

    class CappedClient(DefaultAsyncHttpxClient):
        async def send(self, request: Any, *, stream: bool = False, **kw: Any) -> Any:
            response = await super().send(request, stream=True, **kw)
            if stream:
                return response
            parts: list[bytes] = []
            size = 0
            try:
                async for part in response.aiter_bytes():
                    size += len(part)
                    if size > max_bytes:
                        raise ResponseTooLarge(
                            f"the response body passed teacher.max_response_bytes={max_bytes} "
                            f"({max_bytes / 2**20:.1f} MiB) once decompressed; not read further "
                            "(raise teacher.max_response_bytes if the teacher's answers are "
                            "that large)")
                    parts.append(part)
            finally:
                await response.aclose()
            # the body is decoded: the new response carries it without its content coding
            headers = [(k, v) for k, v in response.headers.multi_items()
                       if k.lower() not in ("content-encoding", "content-length")]
            read = type(response)(response.status_code, headers=headers, content=b"".join(parts),
                                   request=response.request, extensions=response.extensions,
                                   history=response.history)
            read.elapsed = response.elapsed
            return read

    return CappedClient(event_hooks={"response": [same_origin_only(base_url)]})


def classify(exc: Exception) -> tuple[str, bool]:
    """(error kind, retryable) for an exception raised by the openai client."""
    import openai

    if isinstance(exc, ResponseTooLarge):  # the same request is likely to get it again
        return "bad_response", False
    if isinstance(exc, TimeoutError):  # the per-attempt deadline (asyncio.wait_for)
        return "timeout", True
    if isinstance(exc, openai.RateLimitError):
        return "rate_limited", True
    if isinstance(exc, openai.APITimeoutError):
        return "timeout", True
    if isinstance(exc, openai.APIConnectionError):
        return "connection", True
    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        if code >= 500:
            return "server_error", True
        if code == 408:
            return "timeout", True
        return "bad_request", False
    if isinstance(exc, (openai.APIResponseValidationError, json.JSONDecodeError, ValueError,
                        TypeError, AttributeError, KeyError)):
        return "bad_response", True
    raise exc


def read_usage(usage: Any) -> tuple[int | None, int | None]:
    """(prompt tokens, completion tokens) of an answer's ``usage``; (None, None) when the
    server sent none (the price is then unknown: see ``RawOutput.usage_missing``).

    A count that is negative or not a whole number raises ``ValueError`` (a
    ``bad_response``): a server's usage is what the money is counted from."""
    if usage is None:
        return None, None
    counts = []
    for name in ("prompt_tokens", "completion_tokens"):
        v = getattr(usage, name, None)
        if v is None:
            return None, None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or v != int(v):
            raise ValueError(f"usage.{name}={v!r} is not a count of tokens: the answer's price "
                             "cannot be counted")
        counts.append(int(v))
    return counts[0], counts[1]


BILLED_UNSEEN = ("timeout", "bad_response", "connection")
"""Error kinds of an attempt that may have reached the server and been billed without its
answer being read: cut at the deadline, a body cut short or malformed, a connection lost
after the request went out."""


def may_have_been_billed(kind: str, exc: BaseException) -> bool:
    """Whether a failed attempt may have cost money: it was sent (not refused at connect)
    and ended without an answer read (see :data:`BILLED_UNSEEN`)."""
    if kind not in BILLED_UNSEEN:
        return False
    cause = exc.__cause__
    return not (kind == "connection" and type(cause).__name__ == "ConnectError")


ERROR_CHARS = 300
"""How much of a server's error text a row keeps (after scrubbing: see :func:`scrub_cut`)."""


def error_text(exc: BaseException, timeout_s: float) -> str:
    """The stored text of a failed attempt: its type and message, scrubbed, then cut."""
    detail = str(exc) or f"no complete answer within teacher.timeout_s={timeout_s}"
    return scrub_cut(f"{type(exc).__name__}: {detail}", ERROR_CHARS)


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme, 0)
    return parts.scheme, parts.hostname or "", port


def same_origin_only(base_url: str) -> Callable[[Any], Awaitable[None]]:
    """A response hook for the HTTP client that follows a redirect only within
    ``base_url``'s origin (scheme, host, port).

    A redirect elsewhere is refused as a ``bad_request`` row naming where it pointed,
    before anything is sent there: its answers would be stored as the configured
    teacher's, and with them whatever that server chose to say."""
    import openai

    allowed = _origin(base_url)

    async def hook(response: Any) -> None:
        if not response.has_redirect_location:
            return
        target = urljoin(str(response.request.url), response.headers["location"])
        if _origin(target) != allowed:
            scheme, host, port = _origin(target)
            raise openai.APIStatusError(
                f"the server redirected to {scheme}://{host}:{port}, another origin than "
                f"teacher.base_url={base_url}: not followed. If you trust it, set "
                "teacher.base_url to that address", response=response, body=None)
    return hook


def _chat_positions(choice: Any) -> list[dict[str, Any]] | None:
    lp = getattr(choice, "logprobs", None)
    content = getattr(lp, "content", None) if lp is not None else None
    if not content:
        return None
    return [{"token": t.token, "logprob": float(t.logprob),
             "top": [[a.token, float(a.logprob)] for a in (t.top_logprobs or [])]} for t in content]


def _completion_positions(choice: Any) -> list[dict[str, Any]] | None:
    lp = getattr(choice, "logprobs", None)
    if lp is None or not getattr(lp, "tokens", None):
        return None
    tops = lp.top_logprobs or [None] * len(lp.tokens)
    return [{"token": tok, "logprob": float(tlp) if tlp is not None else float("-inf"),
             "top": [[k, float(v)] for k, v in (top or {}).items()]}
            for tok, tlp, top in zip(lp.tokens, lp.token_logprobs, tops, strict=True)]


class OpenAICompatTeacher:
    name = "openai_compat"

    def __init__(self, cfg: TeacherConfig) -> None:
        self.cfg = cfg
        self._api_key: str | None = None
        self._rate_events: deque[tuple[float, int]] = deque()
        """What the rate limits have counted, kept across ``generate`` calls."""

    def model_id(self) -> str:
        return f"{self.cfg.model}@{self.cfg.revision}" if self.cfg.revision else self.cfg.model

    def load(self) -> None:
        if self.cfg.api_key_env:
            key = os.environ.get(self.cfg.api_key_env)
            if not key:
                raise TeacherUnavailable(
                    f"teacher.api_key_env={self.cfg.api_key_env!r} but that environment variable "
                    f"is not set: export {self.cfg.api_key_env}=... before running")
            self._api_key = key
            register_secret(key)
        else:
            self._api_key = "not-needed"  # local servers ignore it; the client requires one

    def close(self) -> None:
        self._api_key = None

    # ------------------------------------------------------------------ calls
    def _params(self, req: TeacherRequest) -> tuple[str, dict[str, Any]]:
        cfg = self.cfg
        p: dict[str, Any] = {"model": cfg.model, "max_tokens": req.max_tokens,
                             "temperature": cfg.temperature, "seed": cfg.seed}
        if req.stop:
            p["stop"] = req.stop
        if cfg.repetition_penalty != 1.0:  # vLLM and llama.cpp servers read it from the body
            p["extra_body"] = {"repetition_penalty": cfg.repetition_penalty}
        if cfg.api == "chat":
            p["messages"] = materialize_messages(req.messages, req.media)
            if req.want_logprobs:
                p.update(logprobs=True, top_logprobs=cfg.top_logprobs)
            return "chat", p
        p["prompt"] = req.prompt
        if req.want_logprobs:
            p["logprobs"] = cfg.top_logprobs
        return "completions", p

    async def _call(self, client: Any, req: TeacherRequest) -> RawOutput:
        if score_only(req, self.cfg):  # one token: the answer position's log-probabilities
            out = await self._call_once(client, replace(req, max_tokens=1))
            if not needs_full_decode(out.positions, req.labels):
                return out
            # the first token is no label: ask for the whole answer
            full = await self._call_once(client, req)
            full.tokens_in += out.tokens_in
            full.tokens_out += out.tokens_out
            full.usage_missing = full.usage_missing or out.usage_missing
            return full
        return await self._call_once(client, req)

    async def _call_once(self, client: Any, req: TeacherRequest) -> RawOutput:
        kind, params = self._params(req)
        if kind == "chat":
            resp = await client.chat.completions.create(**params)
        else:
            resp = await client.completions.create(**params)
        if isinstance(resp, (str, bytes)) or not getattr(resp, "choices", None):
            raise ValueError(f"response has no choices: {scrub_cut(str(resp), 200)!r}")
        choice = resp.choices[0]
        if kind == "chat":
            text = choice.message.content or ""
            positions = _chat_positions(choice)
        else:
            text = choice.text or ""
            positions = _completion_positions(choice)
        tokens_in, tokens_out = read_usage(getattr(resp, "usage", None))
        return RawOutput(
            text=text, positions=positions, usage_missing=tokens_in is None,
            tokens_in=tokens_in or 0, tokens_out=tokens_out or 0,
            finish_reason=getattr(choice, "finish_reason", "") or "")

    async def _one(self, client: Any, req: TeacherRequest, limiter: RateLimiter) -> RawOutput:
        cfg = self.cfg
        est_tokens = len(req.prompt) // 4 + req.max_tokens
        t0 = time.perf_counter()
        retries = maybe_billed = 0
        while True:
            await limiter.acquire(est_tokens)
            try:
                out = await asyncio.wait_for(self._call(client, req), cfg.timeout_s)
            except Exception as e:  # noqa: BLE001 - classify() re-raises what it does not know
                kind, retryable = classify(e)
                maybe_billed += may_have_been_billed(kind, e)
                if not retryable or retries >= cfg.max_retries:
                    return RawOutput(error_kind=kind, error=error_text(e, cfg.timeout_s),
                                     retries=retries, latency_s=time.perf_counter() - t0,
                                     maybe_billed=maybe_billed)
                delay = _retry_after(e)
                if delay is None:
                    delay = min(MAX_BACKOFF_S, 0.5 * 2 ** retries) * random.uniform(0.5, 1.5)
                retries += 1
                log.debug("%s on %s, retry %d in %.2fs", kind, req.key[:8], retries, delay)
                await asyncio.sleep(delay)
                continue
            out.retries, out.maybe_billed = retries, maybe_billed
            out.latency_s = time.perf_counter() - t0
            return out

    async def _run(self, requests: Iterable[TeacherRequest], on_result: OnResult) -> None:
        from openai import AsyncOpenAI

        cfg = self.cfg
        # The client's connection pool is larger than any concurrency we allow; the
        # semaphore below is what bounds requests in flight.
        http = capped_client(cfg.base_url, cfg.max_response_bytes)
        client = AsyncOpenAI(base_url=cfg.base_url, api_key=self._api_key, max_retries=0,
                             timeout=cfg.timeout_s, http_client=http)
        limiter = RateLimiter(cfg.requests_per_minute, cfg.tokens_per_minute,
                              events=self._rate_events)
        sem = asyncio.Semaphore(cfg.max_concurrency)
        stop = asyncio.Event()
        tasks: set[asyncio.Task] = set()
        failures: list[BaseException] = []

        async def worker(req: TeacherRequest) -> None:
            try:
                out = await self._one(client, req, limiter)
                if on_result(req, out) is False:
                    stop.set()
            except Exception as e:  # noqa: BLE001 - re-raised below, after in-flight answers land
                failures.append(e)
                stop.set()
            finally:
                sem.release()

        try:
            # A slot is taken before the next request is drawn, so the caller's iterator
            # (which reserves budget and leases keys) only hands out what is sent now.
            it = iter(requests)
            while True:
                await sem.acquire()
                req = None if stop.is_set() else next(it, None)
                if req is None:
                    sem.release()
                    break
                task = asyncio.create_task(worker(req))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            await client.close()
        if failures:
            raise failures[0]

    def generate(self, requests: Iterable[TeacherRequest], on_result: OnResult) -> None:
        if self._api_key is None:
            raise RuntimeError("call load() first")
        asyncio.run(self._run(requests, on_result))
