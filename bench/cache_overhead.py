"""Overhead of the caching job against the bare teacher backend.

Both send the same requests (sentiment_polarity on the first N train samples) with the
same concurrency to the same local llama.cpp server; runs alternate (job, bare, job, bare)
so drift and the server's prompt cache affect both. The job is the library entry
(``run_cache_job``) into a fresh cache; its time is planning (render, key, register) plus
sending, as the job reports them (data loading aside, which the bare side does not do
either). The bare side hands the same rendered requests straight to the same
``openai_compat`` backend (``Teacher.generate``): the same score-only request
(``max_tokens=1``), the same full-answer fallback, the same retries and limits, and no
cache, lease, parse or store. The tokens both sides were billed are printed and must be
equal (the same requests were sent). Prints the ratio of median wall times (goal <= 1.05).

    python bench/cache_overhead.py [N] [CONCURRENCY] [REPEATS]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

from common import Timer, bench_data, loadavg

from prompts import load_template
from teachers.base import TeacherRequest
from teachers.job import CachingJob, decoding_params
from teachers.llamacpp_server import llama_server
from teachers.openai_compat import OpenAICompatTeacher
from teachers.run import run_cache_job
from workbench.cache.store import CacheStore
from workbench.config import CacheConfig, CacheJobConfig, TeacherConfig
from workbench.data import load_dataset
from workbench.models import gemma_gguf_path

TEMPLATE = "sentiment_polarity"


def planned_requests(tcfg: TeacherConfig, cfg: CacheJobConfig, cache: Path) -> list[TeacherRequest]:
    """The requests the job sends, planned into a scratch cache (outside the timing)."""
    template = load_template(TEMPLATE)
    dec = decoding_params(tcfg, template)
    with CacheStore(cache) as store:
        job = CachingJob(tcfg, cfg.cache, template, load_dataset(cfg.data), store, tcfg.model)
        planned = job.plan(cfg.splits, limit=cfg.limit)
    seen, reqs = set(), []
    for p in planned:
        if p.key in seen:
            continue
        seen.add(p.key)
        reqs.append(TeacherRequest(key=p.key, messages=p.rendered.messages,
                                   prompt=p.rendered.prompt, media=p.rendered.media,
                                   max_tokens=dec["max_tokens"], want_logprobs=True,
                                   stop=list(dec["stop"]), labels=list(p.rendered.scale.labels)))
    return reqs


def bare_backend(tcfg: TeacherConfig, reqs: list[TeacherRequest]) -> tuple[int, int]:
    """Send ``reqs`` through the backend alone; the (input, output) tokens billed."""
    teacher = OpenAICompatTeacher(tcfg)
    teacher.load()
    billed = [0, 0]

    def on_result(req, raw) -> bool:
        billed[0] += raw.tokens_in
        billed[1] += raw.tokens_out
        return True

    teacher.generate(iter(reqs), on_result)
    teacher.close()
    return billed[0], billed[1]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    conc = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    reps = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    tmp = Path(tempfile.mkdtemp())
    data = bench_data(tmp)
    with llama_server(gemma_gguf_path()) as url:
        tcfg = TeacherConfig(backend="openai_compat", model="gemma3-270m", base_url=url,
                             api="completions", max_concurrency=conc, timeout_s=120)
        bare_t, job_t = [], []
        for rep in range(reps):
            cache = tmp / f"cache{rep}"
            cfg = CacheJobConfig(data=data, teacher=tcfg,
                            cache=CacheConfig(dir=str(cache), template=TEMPLATE),
                            splits=["train"], limit=n)
            summary = run_cache_job(cfg)
            report = summary.report
            assert report.ok + report.errors == len(set(summary.keys))
            reqs = planned_requests(tcfg, cfg, tmp / f"scratch{rep}")
            assert {r.key for r in reqs} == set(summary.keys)
            with Timer() as tb:
                billed = bare_backend(tcfg, reqs)
            if billed != (report.tokens_in, report.tokens_out):
                raise SystemExit(f"the two sides sent different requests: tokens in/out "
                                 f"job {report.tokens_in}/{report.tokens_out}, bare "
                                 f"{billed[0]}/{billed[1]}")
            tj = summary.plan_s + report.wall_s
            bare_t.append(tb.s)
            job_t.append(tj)
            print(f"rep {rep}: bare {tb.s:.2f}s  job {tj:.2f}s  tokens in/out "
                  f"{billed[0]}/{billed[1]} on both ({loadavg()})")
    ratio = statistics.median(job_t) / statistics.median(bare_t)
    print(f"caching job / bare backend, {n} requests, concurrency {conc}: "
          f"{statistics.median(job_t):.2f}s / {statistics.median(bare_t):.2f}s = {ratio:.3f} (goal <= 1.05)")


if __name__ == "__main__":
    main()
