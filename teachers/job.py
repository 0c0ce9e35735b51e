"""The offline teacher caching job: render, key, record, then send -- resumably.

For every selected sample the job renders the template, derives the content-addressed
key, and records (sample id -> key) for the job. Keys that already have an ok answer are
skipped; the rest go to the teacher through :func:`teachers.sending.send_requests`, which
parses and commits each answer the moment it arrives (a failed call or an unparseable
answer becomes an error row with its kind), holds the budget, and stops on the error rate
(:class:`~teachers.sending.JobFailed`) or a full disk. :func:`retry_errors` sends the keys
whose answer is an error again, from the requests the cache stored.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

from prompts import Rendered, Template, TemplateError, few_shot_examples, render
from teachers.base import Teacher
from teachers.sending import JobReport, JobSettings, PlannedRequest, send_requests
from workbench.cache.records import TeacherOutput, stable_hash
from workbench.cache.store import CacheError, CacheStore, JobSpec
from workbench.config import CacheConfig, ConfigError, TeacherConfig
from workbench.data import MSADataset, Sample

log = logging.getLogger(__name__)

KEY_VERSION = 1


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
    if rendered.versions:  # e.g. the wording version of acoustic cues; none: no key entry
        request["versions"] = rendered.versions
    return stable_hash({"v": KEY_VERSION, "template": template.hash, "model": model_id,
                        "decoding": decoding, "request": request})


def in_shard(sample_id: str, shard: tuple[int, int]) -> bool:
    """Deterministic shard membership from the sample id (same on every machine)."""
    i, n = shard
    h = int.from_bytes(hashlib.blake2b(sample_id.encode(), digest_size=8).digest(), "little")
    return h % n == i


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
        return send_requests(self.store, teacher, self.settings(), planned, only_keys=only_keys,
                             progress=progress)

    def settings(self) -> JobSettings:
        return JobSettings(job_id=self.job_id, template=self.template, decoding=self.decoding,
                           tcfg=self.tcfg, ccfg=self.ccfg)


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
        settings = JobSettings(job_id=spec["job"], template=template, decoding=spec["decoding"],
                               tcfg=tcfg, ccfg=ccfg or CacheConfig())
        reports.append(send_requests(store, teacher, settings,
                                     stored_requests(store, spec["job"], keys)))
    return reports


def stored_requests(store: CacheStore, job: str, keys: list[str]) -> list[PlannedRequest]:
    """Planned requests for ``keys`` of ``job``, rebuilt from what the cache stored."""
    by_key: dict[str, tuple[str, str]] = {}
    for sid, (split, key) in store.sample_keys(job).items():
        by_key.setdefault(key, (sid, split))
    return [PlannedRequest(by_key[k][0], by_key[k][1], k, Rendered.from_json(store.request(k)))
            for k in keys]
