"""The offline teacher caching job: render, ask, parse, store — resumably.

For every selected sample the job renders the template, derives the content-addressed
key, and records (sample id -> key) for the job. Keys that already have an ok answer are
skipped; the rest go to the teacher, and each answer is parsed and committed the moment
it arrives. A failed call or an unparseable answer (no label, NaN or non-normalisable
log-probabilities) becomes an error row with its kind.

Each key is leased in the cache before it is sent (so two jobs on one cache never send
the same key at once) with its worst-case price reserved: ``teacher.budget_usd`` caps the
cache's total spend on that teacher, over every run and job. The job stops cleanly when
the budget is spent; fails loudly (:class:`JobFailed`) when errors pass
``cache.max_error_rate`` — mid-run once the Wilson lower bound of the error rate passes
it, at the end on the plain rate, and always when no answer was ok; and stops at the
first write that finds the disk full (:class:`~workbench.cache.store.CacheFull`): the
answers still arriving are stored if they can be, else spilled to a side file the next
run imports, so nothing paid for is lost or sent twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from prompts import Rendered, Template, TemplateError, few_shot_examples, render
from teachers.base import RawOutput, Teacher, TeacherRequest
from teachers.softlabel import BadLogprobs, NoLabelError, soft_label
from workbench.cache.ledger import DONE, LEASED, OVER_BUDGET, end_owner, new_owner
from workbench.cache.records import OK, TeacherOutput, stable_hash
from workbench.cache.spill import write_spill
from workbench.cache.store import (
    WAL_LIMIT_BYTES,
    CacheError,
    CacheFull,
    CacheStore,
    JobSpec,
    free_bytes,
)
from workbench.config import CacheConfig, ConfigError, TeacherConfig
from workbench.data import MSADataset, Sample
from workbench.errors import WorkbenchError

log = logging.getLogger(__name__)

KEY_VERSION = 1
MIN_ERRORS_TO_STOP = 5
"""A running job stops on its error rate only after this many errors (the end-of-job check
applies at any size)."""
CHECKPOINT_EVERY = 200
"""Answers between WAL checkpoints (truncating), so the WAL stays bounded."""


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


def decoding_params(tcfg: TeacherConfig, template: Template) -> dict[str, Any]:
    """Everything about decoding that changes the answer (and so enters the key)."""
    return {
        "api": tcfg.api,
        "temperature": tcfg.temperature,
        "max_tokens": min(template.max_tokens, tcfg.max_tokens) if tcfg.max_tokens else template.max_tokens,
        "top_logprobs": tcfg.top_logprobs if template.output == "soft_label" else 0,
        "seed": tcfg.seed,
        "repetition_penalty": tcfg.repetition_penalty,
        "stop": list(template.stop),
    }


def cache_key(template: Template, model_id: str, decoding: dict[str, Any], rendered: Rendered) -> str:
    """Hash of what determines the answer: template text, model, decoding, and the
    rendered request (sample text, cues and media content hashes; never ids or paths)."""
    request = {"messages": rendered.messages, "prompt": rendered.prompt}
    if rendered.versions:  # e.g. the wording version of acoustic cues; absent: keys as before
        request["versions"] = rendered.versions
    return stable_hash({"v": KEY_VERSION, "template": template.hash, "model": model_id,
                        "decoding": decoding, "request": request})


def in_shard(sample_id: str, shard: tuple[int, int]) -> bool:
    """Deterministic shard membership from the sample id (same on every machine)."""
    i, n = shard
    h = int.from_bytes(hashlib.blake2b(sample_id.encode(), digest_size=8).digest(), "little")
    return h % n == i


@dataclass
class PlannedRequest:
    sample_id: str
    split: str
    key: str
    rendered: Rendered


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
    """Keys skipped because another live job was sending them."""
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


def parse_output(template: Template, rendered: Rendered, req: TeacherRequest, raw: RawOutput,
                 tcfg: TeacherConfig) -> TeacherOutput:
    """A stored output from a backend's raw answer: ok with what the template asks for,
    or an error row naming why not."""
    cost = (raw.tokens_in * tcfg.price.input_per_mtok + raw.tokens_out * tcfg.price.output_per_mtok) / 1e6
    base = dict(key=req.key, raw_text=raw.text, tokens_in=raw.tokens_in, tokens_out=raw.tokens_out,
                latency_s=raw.latency_s, cost_usd=cost, retries=raw.retries,
                top_logprobs=raw.positions, created_at=time.time(),
                meta={"finish_reason": raw.finish_reason} if raw.finish_reason else {})
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
    text = " ".join(raw.text.split())
    if not text:
        return TeacherOutput(status="empty_output", error="the teacher returned no text", **base)
    text = text[: template.max_chars]
    return TeacherOutput(status=OK, description=text, **base)


def prompting_options(ccfg: CacheConfig, tcfg: TeacherConfig, *, few_shot: int,
                      few_shot_seed: int, context_turns: int | None = 0,
                      context_list: bool = False) -> dict[str, Any]:
    """The options beside the template that change what a job asks (part of its id): two
    runs that differ only in these are two jobs, not one job whose keys replace each other's.

    Dialogue context (for a template that renders it; ``data.context_turns``): from previous
    rows, ``context_turns: N``; from a list per sample (``context_list``, i.e.
    ``data.context_column``), ``context_list: N``, or ``"all"`` when ``context_turns`` is
    unset. No context (0, or unset from rows) adds nothing: such a job asks what a job on
    data without context asks."""
    opts: dict[str, Any] = {}
    if few_shot:
        opts["few_shot"] = {"n": few_shot, "seed": few_shot_seed}
    if context_list:
        if context_turns != 0:
            opts["context_list"] = "all" if context_turns is None else context_turns
    elif context_turns:
        opts["context_turns"] = context_turns
    if ccfg.cue_fields:
        opts["cue_fields"] = list(ccfg.cue_fields)
    if tcfg.send_audio:
        opts["send_audio"] = True
    return opts


class CachingJob:
    """One template x teacher x dataset, filling a cache."""

    def __init__(self, tcfg: TeacherConfig, ccfg: CacheConfig, template: Template, data: MSADataset,
                 store: CacheStore, model_id: str, *, few_shot: int = 0,
                 few_shot_seed: int = 0, context_turns: int | None = 0,
                 context_list: bool = False) -> None:
        self.tcfg, self.ccfg, self.template, self.data, self.store = tcfg, ccfg, template, data, store
        self.model_id = model_id
        # few-shot examples from the data's own train split (data.few_shot), never valid/test
        self.examples = few_shot_examples(
            data.samples("train") if "train" in data.splits else [], data.info, template,
            few_shot, few_shot_seed) if few_shot else []
        self.max_examples = few_shot * len(self.examples and template.scale(data.info).labels)
        if few_shot and not self.examples:
            raise TemplateError(f"data.few_shot={few_shot}: dataset {data.info.name!r} has no "
                                "labelled train samples to draw examples from")
        self.decoding = decoding_params(tcfg, template)
        self.spec = JobSpec(
            template=template.name, template_version=template.version, template_hash=template.hash,
            uses_gold_label=template.uses_gold_label, output=template.output, teacher=model_id,
            backend=tcfg.backend, decoding=self.decoding, data_name=data.info.name,
            data_fingerprint=data.fingerprint, prompting=prompting_options(
                ccfg, tcfg, few_shot=few_shot, few_shot_seed=few_shot_seed,
                context_turns=context_turns if template.renders_context else 0,
                context_list=context_list))
        self.job_id = self.spec.job_id

    # planning ---------------------------------------------------------------
    def plan(self, splits: Iterable[str] | None = None, shard: tuple[int, int] = (0, 1),
             variants: int = 1, limit: int = 0) -> list[PlannedRequest]:
        """Render every selected sample and record its key under this job; ``limit`` > 0
        keeps only the first ``limit`` requests, and only those are recorded (the job's
        pending count is about what it was asked to do)."""
        splits = list(splits) if splits else self.data.splits
        if self.template.uses_gold_label and splits != ["train"]:
            log.warning("template %r shows the gold label; its outputs on %s will be refused by "
                        "training and evaluation", self.template.name,
                        [s for s in splits if s != "train"])
        planned: list[PlannedRequest] = []
        for split in splits:
            for sample in self.data.iter_samples(split):
                if not in_shard(sample.id, shard):
                    continue
                for v in range(variants):
                    planned.append(self._plan_one(sample, v, variants))
        if limit:
            planned = planned[:limit]
        self.store.register_job(self.spec)
        known = self.store.sample_keys(self.job_id)  # a resumed job has these already
        self.store.add_requests(self.job_id, [
            (p.sample_id, p.split, p.key, {**p.rendered.to_json(), "decoding": self.decoding})
            for p in planned if known.get(p.sample_id) != (p.split, p.key)])
        return planned

    def _plan_one(self, sample: Sample, variant: int, variants: int) -> PlannedRequest:
        try:
            rendered = render(self.template, sample, self.data.info,
                              cue_fields=self.ccfg.cue_fields, variant=variant,
                              audio=self.tcfg.send_audio, examples=self.examples,
                              max_examples=self.max_examples)
        except TemplateError as e:
            raise TemplateError(f"{self.data.info.source}: {e}") from None
        sid = sample.id if variants == 1 else f"{sample.id}#{variant}"
        return PlannedRequest(sid, sample.split, cache_key(self.template, self.model_id, self.decoding, rendered),
                              rendered)

    def unreused(self, planned: list[PlannedRequest]) -> list[tuple[dict[str, Any], int]]:
        """The cache's other jobs of this template on this data whose ok answers this plan
        will not reuse (another template version, teacher or prompting option gave the same
        samples other keys), each with how many such answers it holds."""
        new = {p.sample_id: p.key for p in planned}
        ok = self.store.ok_keys()
        out = []
        for spec in self.store.jobs():
            if (spec["job"] == self.job_id or spec.get("template") != self.template.name
                    or spec.get("data_fingerprint") != self.spec.data_fingerprint):
                continue
            n = sum(1 for sid, (_, key) in self.store.sample_keys(spec["job"]).items()
                    if sid in new and key != new[sid] and key in ok)
            if n:
                out.append((spec, n))
        return out

    # running ----------------------------------------------------------------
    def run(self, teacher: Teacher, planned: list[PlannedRequest], *, only_keys: set[str] | None = None,
            progress: Callable[[JobReport, TeacherOutput], None] | None = None) -> JobReport:
        """Send every planned key without an ok answer (or only ``only_keys``)."""
        return send_requests(self.store, teacher, self.template, self.tcfg, self.ccfg, self.job_id,
                             self.decoding, planned, only_keys=only_keys, progress=progress)


def _prompt_chars(p: PlannedRequest) -> int:
    return len(p.rendered.prompt or json.dumps(p.rendered.messages))


def _worst_price(tcfg: TeacherConfig, p: PlannedRequest, max_tokens: int,
                 tokens_per_char: float = 0.5) -> float:
    """An upper estimate of one request's price, reserved against the budget while it runs:
    every output token it may generate, and its input at ``tokens_per_char`` (0.5 before
    any answer is in: no tokenizer needs fewer than 2 characters a token)."""
    tokens_in = math.ceil(_prompt_chars(p) * tokens_per_char) + 16
    return (tokens_in * tcfg.price.input_per_mtok + max_tokens * tcfg.price.output_per_mtok) / 1e6


def _lease_ttl(tcfg: TeacherConfig) -> float:
    """How long a key's lease outlives a job that stopped renewing it (was killed)."""
    return (tcfg.timeout_s + 30.0) * (tcfg.max_retries + 1) + 60.0


def send_requests(store: CacheStore, teacher: Teacher, template: Template, tcfg: TeacherConfig,
                  ccfg: CacheConfig, job_id: str, decoding: dict[str, Any],
                  planned: list[PlannedRequest], *, only_keys: set[str] | None = None,
                  progress: Callable[[JobReport, TeacherOutput], None] | None = None) -> JobReport:
    """Send the planned keys that have no ok answer yet, committing each answer as it lands."""
    t0 = time.perf_counter()
    imported = store.import_spills()
    done = store.ok_keys()
    todo: dict[str, PlannedRequest] = {}
    for p in planned:
        if p.key in done or p.key in todo:
            continue
        if only_keys is not None and p.key not in only_keys:
            continue
        todo[p.key] = p
    keys = {p.key for p in planned}
    report = JobReport(job=job_id, selected=len(planned), unique_keys=len(keys),
                       already_ok=len(keys & done), imported=imported)
    if not todo:
        report.wall_s = time.perf_counter() - t0
        return report
    want_lp = template.output == "soft_label"
    max_tokens = decoding["max_tokens"]
    budget = tcfg.budget_usd
    teacher_id = teacher.model_id()
    owner = new_owner()
    ttl = _lease_ttl(tcfg)
    unstored: list[TeacherOutput] = []  # paid answers the full disk refused, for the spill
    full: list[CacheFull] = []
    stored = 0
    tokens_per_char = 0.5  # then 1.1 x the largest tokens-per-character the answers show
    seen_ratio = 0.0

    def disk_full(e: CacheFull) -> None:
        if not full:
            log.error("%s; stopping: no new requests, in-flight answers are kept", e)
            full.append(e)
        report.stopped = "disk_full"

    queue = deque(todo.items())
    paused = [False]  # the budget is reserved by this job's own requests in flight

    def requests():
        paused[0] = False
        while queue:
            key, p = queue[0]
            if report.stopped:
                return
            try:
                verdict = store.lease(key, owner, teacher=teacher_id, budget_usd=budget, ttl_s=ttl,
                                      reserve_usd=_worst_price(tcfg, p, max_tokens, tokens_per_char))
            except CacheFull as e:
                disk_full(e)
                return
            if verdict == OVER_BUDGET:
                if report.sent > sum(report.finished.values()):
                    paused[0] = True  # wait for them: their real price frees the reservations
                else:
                    report.stopped = "budget"
                return
            queue.popleft()
            if verdict == DONE:
                continue
            if verdict == LEASED:
                report.leased_elsewhere += 1
                continue
            report.sent += 1
            scale = p.rendered.scale if want_lp else None
            yield TeacherRequest(key=key, messages=p.rendered.messages, prompt=p.rendered.prompt,
                                 media=p.rendered.media, max_tokens=max_tokens, want_logprobs=want_lp,
                                 stop=list(decoding.get("stop", [])),
                                 labels=list(scale.labels) if scale else [])

    def store_one(out: TeacherOutput) -> None:
        nonlocal stored
        try:
            store.put(out, teacher=teacher_id, owner=owner)
        except CacheFull as e:
            unstored.append(out)
            disk_full(e)
            return
        stored += 1
        if stored % CHECKPOINT_EVERY == 0:
            try:
                store.checkpoint()
            except CacheFull as e:
                disk_full(e)

    def on_result(req: TeacherRequest, raw: RawOutput) -> bool:
        nonlocal tokens_per_char, seen_ratio
        out = parse_output(template, todo[req.key].rendered, req, raw, tcfg)
        if out.tokens_in:
            seen_ratio = max(seen_ratio, out.tokens_in / max(1, _prompt_chars(todo[req.key])))
            tokens_per_char = 1.1 * seen_ratio
        store_one(out)  # counted below even if the disk refused it: it was paid for
        report.finished[out.status] += 1
        report.tokens_in += out.tokens_in
        report.tokens_out += out.tokens_out
        report.cost_usd += out.cost_usd
        report.retries += out.retries
        if progress:
            progress(report, out)
        n = sum(report.finished.values())
        if (report.errors >= MIN_ERRORS_TO_STOP
                and wilson_lower(report.errors, n) > ccfg.max_error_rate):
            report.stopped = report.stopped or "error_rate"
        return not report.stopped

    try:
        teacher.generate(requests(), on_result)
        while paused[0] and not report.stopped:  # near the budget: drained, now ask again
            teacher.generate(requests(), on_result)
    finally:
        spill = _keep_unstored(store, unstored, teacher_id, owner, report)
        try:
            store.release_leases(owner)
        except CacheFull:
            pass  # they lapse with this run (end_owner) or at their expiry
        end_owner(owner)
    report.wall_s = time.perf_counter() - t0
    if full:
        raise CacheFull(_disk_full_message(store, report, len(todo) - report.ok, spill))
    n = sum(report.finished.values())
    if report.stopped == "error_rate" or (n and (report.ok == 0 or report.errors / n > ccfg.max_error_rate)):
        kinds = ", ".join(f"{k}={v}" for k, v in report.finished.items() if k != OK)
        why = (f"> cache.max_error_rate={ccfg.max_error_rate}"
               if report.errors / max(n, 1) > ccfg.max_error_rate
               else f"no answer was ok, whatever cache.max_error_rate={ccfg.max_error_rate}")
        raise JobFailed(
            f"stopped after {report.errors} errors in {n} answers ({why}): {kinds}. Everything "
            f"so far is in {store.dir}; inspect with `workbench cache status`, fix the cause, rerun.")
    return report


def _keep_unstored(store: CacheStore, unstored: list[TeacherOutput], teacher_id: str, owner: str,
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
        path = write_spill(store.dir, left, teacher_id)
    except OSError as e:
        log.error("could not spill %d answers anywhere (%s); they are lost", len(left), e)
        return ""
    report.spilled = len(left)
    return str(path)


def _disk_full_message(store: CacheStore, report: JobReport, remaining: int, spill: str) -> str:
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


def retry_errors(store: CacheStore, teacher: Teacher, tcfg: TeacherConfig, *, kinds: list[str],
                 job: str | None = None, ccfg: CacheConfig | None = None) -> list[JobReport]:
    """Re-send every key whose current answer is an error of ``kinds`` (all if empty).

    Requests come from the cache itself, so no data or template rendering is needed; the
    template file must still be the one the job used (same hash), and the teacher the same
    model.
    """
    from prompts import load_template

    reports = []
    specs = [j for j in store.jobs() if job is None or j["job"] == job]
    if job and not specs:
        raise CacheError(f"no job {job!r} in {store.dir}; see `workbench cache status`")
    loaded = False
    for spec in specs:
        keys = store.error_keys(kinds, job=spec["job"])
        if not keys:
            continue
        if spec["teacher"] != teacher.model_id():
            raise ConfigError(f"job {spec['job']} was answered by {spec['teacher']}, but the given "
                             f"teacher is {teacher.model_id()}; pass that job's teacher config")
        template = load_template(spec["template"])
        if template.hash != spec["template_hash"]:
            raise CacheError(f"template {spec['template']!r} changed since job {spec['job']} "
                             "(its hash differs); rerun `workbench cache run` to make a new job")
        if not loaded:
            teacher.load()
            loaded = True
        reports.append(send_requests(store, teacher, template, tcfg, ccfg or CacheConfig(), spec["job"],
                                     spec["decoding"], stored_requests(store, spec["job"], keys)))
    return reports


def stored_requests(store: CacheStore, job: str, keys: list[str]) -> list[PlannedRequest]:
    """Planned requests for ``keys`` of ``job``, rebuilt from what the cache stored."""
    from prompts import Rendered

    by_key: dict[str, tuple[str, str]] = {}
    for sid, (split, key) in store.sample_keys(job).items():
        by_key.setdefault(key, (sid, split))
    return [PlannedRequest(by_key[k][0], by_key[k][1], k, Rendered.from_json(store.request(k)))
            for k in keys]
