"""Overhead of the caching job against a bare client loop.

Both send the same requests (sentiment_polarity on the first N train samples) with the
same concurrency to the same local llama.cpp server; runs alternate (job, bare, job, bare)
so drift and the server's prompt cache affect both. The job is the library entry
(``run_cache_job``) into a fresh cache; its time is planning (render, key, register) plus
sending, as the job reports them (data loading aside, which the bare loop does not do
either); the bare loop sends the prompts the job stored. Prints the ratio of median wall
times (goal <= 1.05).

    python bench/cache_overhead.py [N] [CONCURRENCY] [REPEATS]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

from common import Timer, bench_data, loadavg

from prompts import load_template
from teachers.job import decoding_params
from teachers.llamacpp_server import llama_server
from teachers.run import run_cache_job
from workbench.cache.store import CacheStore
from workbench.config import CacheConfig, CacheJobConfig, TeacherConfig
from workbench.models import gemma_gguf_path

TEMPLATE = "sentiment_polarity"


async def bare_loop(url: str, model: str, prompts: list[str], params: dict, concurrency: int) -> int:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, api_key="x", max_retries=0, timeout=120)
    sem = asyncio.Semaphore(concurrency)

    async def one(p: str) -> None:
        async with sem:
            await client.completions.create(model=model, prompt=p, **params)

    await asyncio.gather(*(one(p) for p in prompts))
    await client.close()
    return len(prompts)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    conc = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    reps = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    tmp = Path(tempfile.mkdtemp())
    data = bench_data(tmp)
    with llama_server(gemma_gguf_path()) as url:
        tcfg = TeacherConfig(backend="openai_compat", model="gemma3-270m", base_url=url,
                             api="completions", max_concurrency=conc, timeout_s=120)
        dec = decoding_params(tcfg, load_template(TEMPLATE))
        params = {"max_tokens": dec["max_tokens"], "temperature": 0.0, "seed": 0,
                  "logprobs": tcfg.top_logprobs}
        bare_t, job_t = [], []
        for rep in range(reps):
            cache = tmp / f"cache{rep}"
            cfg = CacheJobConfig(data=data, teacher=tcfg,
                                 cache=CacheConfig(dir=str(cache), template=TEMPLATE),
                                 splits=["train"], limit=n)
            summary = run_cache_job(cfg)
            report = summary.report
            assert report.ok + report.errors == len(set(summary.keys))
            with CacheStore(cache) as store:
                prompts = [store.request(k)["prompt"] for k in summary.keys]
            with Timer() as tb:
                asyncio.run(bare_loop(url, "gemma3-270m", prompts, params, conc))
            tj = summary.plan_s + report.wall_s
            bare_t.append(tb.s)
            job_t.append(tj)
            print(f"rep {rep}: bare {tb.s:.2f}s  job {tj:.2f}s  ({loadavg()})")
    ratio = statistics.median(job_t) / statistics.median(bare_t)
    print(f"caching job / bare client loop, {n} requests, concurrency {conc}: "
          f"{statistics.median(job_t):.2f}s / {statistics.median(bare_t):.2f}s = {ratio:.3f} (goal <= 1.05)")


if __name__ == "__main__":
    main()
