"""Sending a caching job's planned keys to a teacher, committing each answer as it lands.

:func:`send_requests` sends the planned keys that have no ok answer yet (or only the keys
asked for) and returns a :class:`JobReport`. One :class:`Sender` holds the state of that
pass: the queue of keys, the lease owner, the running estimate of tokens per prompt
character, the answers the full disk refused.

Each key is leased in the cache before it is sent (so two jobs on one cache never send
the same key at once) with its worst-case price reserved (:func:`worst_price`):
``teacher.budget_usd`` caps the cache's total spend on that teacher, over every run and
job. Near the budget the sender waits for its own requests in flight (their real price
frees their reservations) and asks again; it stops cleanly when the budget is spent. It
fails loudly (:class:`JobFailed`) when errors pass ``cache.max_error_rate`` -- mid-run once
the Wilson lower bound of the error rate passes it, at the end on the plain rate, and
always when no answer was ok -- and stops at the first write that finds the disk full
(:class:`~workbench.cache.store.CacheFull`): the answers still arriving are stored if they
can be, else spilled to a side file the next run imports, so nothing paid for is lost or
sent twice.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prompts import Rendered, Template
from teachers.base import RawOutput, Teacher, TeacherRequest
from teachers.softlabel import BadLogprobs, NoLabelError, soft_label
from workbench.cache.ledger import DONE, LEASED, OVER_BUDGET, end_owner, new_owner
from workbench.cache.records import OK, TeacherOutput
from workbench.cache.store import WAL_LIMIT_BYTES, CacheFull, CacheStore, free_bytes
from workbench.config import CacheConfig, TeacherConfig
from workbench.errors import WorkbenchError

log = logging.getLogger(__name__)

MIN_ERRORS_TO_STOP = 5
"""A running job stops on its error rate only after this many errors (the end-of-job check
applies at any size)."""
CHECKPOINT_EVERY = 200
"""Answers between WAL checkpoints (truncating), so the WAL stays bounded."""
LEASE_POLL_S = 0.5
"""Seconds between asks for keys another job was sending, once the queue is empty."""


def wilson_lower(errors: int, n: int, z: float = 1.96) -> float:
    """Lower bound of the 95 % Wilson score interval of an error rate ``errors / n``."""
    if n == 0:
        return 0.0
    p = errors / n
    d = 1 + z * z / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - margin) / d)


class JobFailed(WorkbenchError, RuntimeError):
    """Too many errors: the job stopped; everything finished so far is in the cache."""

    exit_code = 1


@dataclass
class PlannedRequest:
    sample_id: str
    split: str
    key: str
    rendered: Rendered


@dataclass(frozen=True)
class JobSettings:
    """What a job asks and the limits it sends under."""

    job_id: str
    template: Template
    decoding: dict[str, Any]
    """The job's decoding parameters (:func:`teachers.job.decoding_params`)."""
    tcfg: TeacherConfig
    ccfg: CacheConfig


@dataclass
class JobReport:
    job: str
    selected: int
    unique_keys: int
    already_ok: int
    sent: int = 0
    finished: Counter = field(default_factory=Counter)
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    retries: int = 0
    wall_s: float = 0.0
    stopped: str = ""
    """Why the job stopped early ("budget", "error_rate", "disk_full"), or empty."""
    leased_elsewhere: int = 0
    """Keys another live job was sending when this one came to them: waited for, then
    taken over if that job went away without answering them."""
    spilled: int = 0
    """Answers that could not be stored (disk full) and went to a spill file."""
    imported: int = 0
    """Answers a previous disk-full run spilled, imported before sending."""

    @property
    def ok(self) -> int:
        return self.finished.get(OK, 0)

    @property
    def errors(self) -> int:
        return sum(v for k, v in self.finished.items() if k != OK)

    @property
    def answered(self) -> int:
        return sum(self.finished.values())

    def count(self, out: TeacherOutput) -> None:
        """Add one answer (ok or error) and what it cost."""
        self.finished[out.status] += 1
        self.tokens_in += out.tokens_in
        self.tokens_out += out.tokens_out
        self.cost_usd += out.cost_usd
        self.retries += out.retries


CHARS_PER_TOKEN = 16
"""Characters an answer may hold per token asked for (``max_tokens``) before it is cut for
storage: no tokenizer's token is that long."""
MIN_TEXT_CHARS = 256
"""The least an answer is cut to, however few tokens were asked for."""


def text_limit(max_tokens: int) -> int:
    """How many characters of an answer to ``max_tokens`` tokens a row stores."""
    return max(MIN_TEXT_CHARS, CHARS_PER_TOKEN * max_tokens)


def parse_output(template: Template, rendered: Rendered, req: TeacherRequest, raw: RawOutput,
                 tcfg: TeacherConfig, worst_usd: float = 0.0) -> TeacherOutput:
    """A stored output from a backend's raw answer: ok with what the template asks for,
    or an error row naming why not.

    Its cost is the answer's usage at the configured prices, plus an upper estimate for
    each attempt whose price cannot be read: an answer without usage costs ``worst_usd``
    (the request's worst-case price); an attempt that may have been billed unseen (cut at
    the deadline, a body cut short) costs what the answer that followed it was billed for
    the same prompt, with every output token it could have had.
    Such rows say so in ``meta["cost_estimated"]``.

    An answer's text longer than ``req.max_tokens`` tokens can be (:func:`text_limit`) is
    cut to that length before it is stored or parsed, with a warning, and its row keeps
    the length it had in ``meta["text_cut"]``."""
    cost = (raw.tokens_in * tcfg.price.input_per_mtok + raw.tokens_out * tcfg.price.output_per_mtok) / 1e6
    meta: dict = {"finish_reason": raw.finish_reason} if raw.finish_reason else {}
    raw_text, limit = raw.text, text_limit(req.max_tokens)
    if len(raw_text) > limit:
        meta["text_cut"] = len(raw_text)
        log.warning("%s: the teacher's answer has %d characters, more than %d tokens can be "
                    "(max_tokens=%d); stored cut to %d characters", req.key[:8], len(raw_text),
                    req.max_tokens, req.max_tokens, limit)
        raw_text = raw_text[:limit]
    unknown = raw.maybe_billed + raw.usage_missing
    if unknown and worst_usd > 0:
        per_attempt = worst_usd
        if not raw.error_kind and not raw.usage_missing and raw.tokens_in > 0:
            # the same prompt, answered with its usage: the exact input it is billed for
            per_attempt = (raw.tokens_in * tcfg.price.input_per_mtok + max(
                raw.tokens_out, req.max_tokens) * tcfg.price.output_per_mtok) / 1e6
        estimate = raw.maybe_billed * per_attempt + raw.usage_missing * worst_usd
        cost += estimate
        meta["cost_estimated"] = {"usage_missing": raw.usage_missing,
                                  "unseen_attempts": raw.maybe_billed,
                                  "estimated_usd": round(estimate, 9)}
    base = dict(key=req.key, raw_text=raw_text, tokens_in=raw.tokens_in, tokens_out=raw.tokens_out,
                latency_s=raw.latency_s, cost_usd=cost, retries=raw.retries,
                top_logprobs=raw.positions, created_at=time.time(), meta=meta)
    if raw.error_kind:
        return TeacherOutput(status=raw.error_kind, error=raw.error, **base)
    if template.output == "soft_label":
        if not raw.positions:
            return TeacherOutput(status="no_logprobs", error="no log-probabilities in the response", **base)
        scale = rendered.scale
        try:
            sl = soft_label(raw.positions, list(scale.labels), list(scale.values))
        except NoLabelError as e:
            return TeacherOutput(status="no_label", error=str(e), **base)
        except BadLogprobs as e:
            return TeacherOutput(status="bad_response", error=str(e), **base)
        return TeacherOutput(status=OK, soft_label=sl, **base)
    text = " ".join(raw_text.split())
    if not text:
        return TeacherOutput(status="empty_output", error="the teacher returned no text", **base)
    text = text[: template.max_chars]
    return TeacherOutput(status=OK, description=text, **base)


def prompt_chars(p: PlannedRequest) -> int:
    return len(p.rendered.prompt or json.dumps(p.rendered.messages))


def worst_price(tcfg: TeacherConfig, p: PlannedRequest, max_tokens: int,
                tokens_per_char: float = 0.5) -> float:
    """An upper estimate of one request's price, reserved against the budget while it runs:
    every output token it may generate, and its input at ``tokens_per_char`` (0.5 before
    any answer is in: no tokenizer needs fewer than 2 characters a token)."""
    tokens_in = math.ceil(prompt_chars(p) * tokens_per_char) + 16
    return (tokens_in * tcfg.price.input_per_mtok + max_tokens * tcfg.price.output_per_mtok) / 1e6


def lease_ttl(tcfg: TeacherConfig) -> float:
    """How long a key's lease outlives a job that stopped renewing it (was killed)."""
    return (tcfg.timeout_s + 30.0) * (tcfg.max_retries + 1) + 60.0


class Sender:
    """One pass over the keys to send: leases them, hands the teacher their requests,
    parses, stores and counts each answer as it lands, and stops on the budget, the error
    rate or a full disk (``report.stopped``)."""

    def __init__(self, store: CacheStore, teacher: Teacher, settings: JobSettings,
                 todo: dict[str, PlannedRequest], report: JobReport,
                 progress: Callable[[JobReport, TeacherOutput], None] | None = None) -> None:
        self.store, self.teacher, self.settings = store, teacher, settings
        self.todo, self.report, self.progress = todo, report, progress
        self.teacher_id = teacher.model_id()
        self.owner = new_owner()
        self.queue = deque(todo.items())
        self.paused = False
        """The budget is reserved by this pass's own requests in flight: wait, then ask again."""
        self.full: CacheFull | None = None
        """The first write the full disk refused."""
        self.unstored: list[TeacherOutput] = []
        """Paid answers the full disk refused, for the spill."""
        self.stored = 0
        self.elsewhere: list[tuple[str, PlannedRequest]] = []
        """Keys another live job was sending when this pass came to them."""
        self.tokens_per_char = 0.5
        """Reserved per prompt character: 1.1 x the largest ratio the answers show."""
        self.seen_ratio = 0.0

    def run(self) -> str:
        """Send until the queue is empty or the pass stops; the spill file's path, if any.

        Keys another job was sending are asked for again once the queue is empty, until
        that job has answered them or its leases are void (its process gone, or lapsed):
        then this job sends them, so a job killed beside it leaves no key pending."""
        try:
            self.send_queue()
            waited = {k for k, _ in self.elsewhere}
            while self.elsewhere and not self.report.stopped:
                log.info("waiting for %d key(s) another job is sending", len(self.elsewhere))
                time.sleep(LEASE_POLL_S)
                self.queue, self.elsewhere = deque(self.elsewhere), []
                self.send_queue()
                waited |= {k for k, _ in self.elsewhere}
            self.report.leased_elsewhere = len(waited)
        finally:
            spill = keep_unstored(self.store, self.unstored, self.teacher_id, self.owner,
                                  self.report)
            try:
                self.store.release_leases(self.owner)
            except CacheFull:
                pass  # they lapse with this run (end_owner) or at their expiry
            end_owner(self.owner)
        return spill

    def send_queue(self) -> None:
        self.teacher.generate(self.requests(), self.on_result)
        while self.paused and not self.report.stopped:  # near the budget: drained, ask again
            self.teacher.generate(self.requests(), self.on_result)

    def requests(self) -> Iterator[TeacherRequest]:
        """The queue's keys as requests, each leased first; ends when the pass stops or the
        budget is reserved (paused while this pass's own requests are in flight)."""
        self.paused = False
        while self.queue:
            key, p = self.queue[0]
            if self.report.stopped:
                return
            verdict = self._lease(key, p)
            if verdict is None:
                return
            if verdict == OVER_BUDGET:
                if self.report.sent > self.report.answered:
                    self.paused = True  # wait for them: their real price frees the reservations
                else:
                    self.report.stopped = "budget"
                return
            self.queue.popleft()
            if verdict == DONE:
                continue
            if verdict == LEASED:
                self.elsewhere.append((key, p))
                continue
            self.report.sent += 1
            yield self._request(key, p)

    def _lease(self, key: str, p: PlannedRequest) -> str | None:
        """The cache's verdict on leasing ``key``; None when the disk is full."""
        tcfg = self.settings.tcfg
        reserve = worst_price(tcfg, p, self.settings.decoding["max_tokens"], self.tokens_per_char)
        try:
            return self.store.lease(key, self.owner, teacher=self.teacher_id,
                                    budget_usd=tcfg.budget_usd, ttl_s=lease_ttl(tcfg),
                                    reserve_usd=reserve)
        except CacheFull as e:
            self._disk_full(e)
            return None

    def _request(self, key: str, p: PlannedRequest) -> TeacherRequest:
        want_lp = self.settings.template.output == "soft_label"
        scale = p.rendered.scale if want_lp else None
        decoding = self.settings.decoding
        return TeacherRequest(key=key, messages=p.rendered.messages, prompt=p.rendered.prompt,
                              media=p.rendered.media, max_tokens=decoding["max_tokens"],
                              want_logprobs=want_lp, stop=list(decoding.get("stop", [])),
                              labels=list(scale.labels) if scale else [])

    def on_result(self, req: TeacherRequest, raw: RawOutput) -> bool:
        """Parse, store and count one answer; False once the pass stops."""
        planned = self.todo[req.key]
        worst = worst_price(self.settings.tcfg, planned, req.max_tokens, self.tokens_per_char)
        out = parse_output(self.settings.template, planned.rendered, req, raw, self.settings.tcfg,
                           worst_usd=worst)
        if out.tokens_in:
            self.seen_ratio = max(self.seen_ratio, out.tokens_in / max(1, prompt_chars(planned)))
            self.tokens_per_char = 1.1 * self.seen_ratio
        self._store(out)  # counted below even if the disk refused it: it was paid for
        report = self.report
        report.count(out)
        if self.progress:
            self.progress(report, out)
        errors, limit = report.errors, self.settings.ccfg.max_error_rate
        if errors >= MIN_ERRORS_TO_STOP and wilson_lower(errors, report.answered) > limit:
            report.stopped = report.stopped or "error_rate"
        return not report.stopped

    def _store(self, out: TeacherOutput) -> None:
        try:
            self.store.put(out, teacher=self.teacher_id, owner=self.owner)
        except CacheFull as e:
            self.unstored.append(out)
            self._disk_full(e)
            return
        self.stored += 1
        if self.stored % CHECKPOINT_EVERY == 0:
            try:
                self.store.checkpoint()
            except CacheFull as e:
                self._disk_full(e)

    def _disk_full(self, e: CacheFull) -> None:
        if self.full is None:
            log.error("%s; stopping: no new requests, in-flight answers are kept", e)
            self.full = e
        self.report.stopped = "disk_full"


def send_requests(store: CacheStore, teacher: Teacher, settings: JobSettings,
                  planned: list[PlannedRequest], *, only_keys: set[str] | None = None,
                  progress: Callable[[JobReport, TeacherOutput], None] | None = None) -> JobReport:
    """Send the planned keys that have no ok answer yet (or only ``only_keys``), committing
    each answer as it lands; raises :class:`~workbench.cache.store.CacheFull` when the disk
    filled and :class:`JobFailed` when errors passed ``cache.max_error_rate``."""
    t0 = time.perf_counter()
    imported = store.import_spills()
    done = store.ok_keys()
    todo: dict[str, PlannedRequest] = {}
    for p in planned:
        if p.key not in done and p.key not in todo and (only_keys is None or p.key in only_keys):
            todo[p.key] = p
    keys = {p.key for p in planned}
    report = JobReport(job=settings.job_id, selected=len(planned), unique_keys=len(keys),
                       already_ok=len(keys & done), imported=imported)
    if not todo:
        report.wall_s = time.perf_counter() - t0
        return report
    sender = Sender(store, teacher, settings, todo, report, progress)
    spill = sender.run()
    report.wall_s = time.perf_counter() - t0
    if sender.full is not None:
        raise CacheFull(disk_full_message(store, report, len(todo) - report.ok, spill))
    check_error_rate(report, settings.ccfg.max_error_rate, store)
    return report


def check_error_rate(report: JobReport, max_error_rate: float, store: CacheStore) -> None:
    """Raise :class:`JobFailed` when the pass stopped on its error rate, its errors pass
    ``max_error_rate``, or no answer was ok."""
    n = report.answered
    over = n and (report.ok == 0 or report.errors / n > max_error_rate)
    if report.stopped != "error_rate" and not over:
        return
    kinds = ", ".join(f"{k}={v}" for k, v in report.finished.items() if k != OK)
    why = (f"> cache.max_error_rate={max_error_rate}"
           if report.errors / max(n, 1) > max_error_rate
           else f"no answer was ok, whatever cache.max_error_rate={max_error_rate}")
    raise JobFailed(
        f"stopped after {report.errors} errors in {n} answers ({why}): {kinds}. Everything "
        f"so far is in {store.dir}; inspect with `workbench cache status`, fix the cause, rerun.")


def keep_unstored(store: CacheStore, unstored: list[TeacherOutput], teacher_id: str, owner: str,
                  report: JobReport) -> str:
    """Store what the full disk refused if it has room now, else spill it; the spill's path."""
    if not unstored:
        return ""
    try:
        store.checkpoint()
    except CacheFull:
        pass
    left = []
    for out in unstored:
        try:
            store.put(out, teacher=teacher_id, owner=owner)
        except CacheFull:
            left.append(out)
    if not left:
        return ""
    try:
        path = store.spill(left, teacher_id)
    except OSError as e:
        log.error("could not spill %d answers anywhere (%s); they are lost", len(left), e)
        return ""
    report.spilled = len(left)
    return str(path)


def disk_full_message(store: CacheStore, report: JobReport, remaining: int, spill: str) -> str:
    per_answer = store.conn.execute(
        "SELECT COALESCE(AVG(COALESCE(LENGTH(raw_text), 0) + COALESCE(LENGTH(error), 0) "
        "+ COALESCE(LENGTH(description), 0) + COALESCE(LENGTH(soft_label), 0) "
        "+ COALESCE(LENGTH(top_logprobs), 0) + COALESCE(LENGTH(meta), 0)), 2048) "
        "FROM outputs").fetchone()[0]
    need = remaining * (per_answer + 300) * 1.5 + WAL_LIMIT_BYTES + 1024 * 1024
    kept = (f"; {report.spilled} answers it could not write are in {spill}, imported by the next "
            "run" if spill else "")
    return (f"cache {store.dir}: the disk is full ({free_bytes(store.dir) / 1e6:.1f} MB free); "
            f"stopped sending at the first failed write after {report.ok + report.errors} "
            f"answers{kept}. Free at least {need / 1e6:.1f} MB on that disk (or move the cache) "
            f"and rerun: the {remaining} keys without an ok answer are sent, nothing answered "
            "is sent again.")
