"""Overhead of the caching job against a bare client loop.

Both send the same requests (sentiment_polarity on the first N samples) with the same
concurrency to the same local llama.cpp server; runs alternate (bare, job, bare, job)
so drift and the server's prompt cache affect both. Prints the ratio of median wall
times (goal <= 1.05).

    python bench/cache_overhead.py [N] [CONCURRENCY] [REPEATS]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

from common import Timer, bench_dataset, loadavg

from prompts import load_template
from teachers import make_teacher
from teachers.job import CachingJob, decoding_params
from tests.support.llama_server import llama_server
from workbench.cache.store import CacheStore
from workbench.config import CacheConfig, TeacherConfig
from workbench.models import gemma_gguf_path


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
    ds = bench_dataset(tmp)
    template = load_template("sentiment_polarity")
    with llama_server(gemma_gguf_path()) as url:
        tcfg = TeacherConfig(backend="openai_compat", model="gemma3-270m", base_url=url,
                             api="completions", max_concurrency=conc, timeout_s=120)
        dec = decoding_params(tcfg, template)
        params = {"max_tokens": dec["max_tokens"], "temperature": 0.0, "seed": 0,
                  "logprobs": tcfg.top_logprobs}
        bare_t, job_t = [], []
        for rep in range(reps):
            with CacheStore(tmp / f"cache{rep}") as store:
                teacher = make_teacher(tcfg)
                job = CachingJob(tcfg, CacheConfig(dir=str(tmp / f"cache{rep}")), template, ds, store,
                                 teacher.model_id())
                prompts = None
                with Timer() as tj:
                    planned = job.plan(["train"])[:n]
                    teacher.load()
                    report = job.run(teacher, planned)
                prompts = [p.rendered.prompt for p in planned]
                assert report.ok + report.errors == len({p.key for p in planned})
            with Timer() as tb:
                asyncio.run(bare_loop(url, "gemma3-270m", prompts, params, conc))
            bare_t.append(tb.s)
            job_t.append(tj.s)
            print(f"rep {rep}: bare {tb.s:.2f}s  job {tj.s:.2f}s  ({loadavg()})")
    ratio = statistics.median(job_t) / statistics.median(bare_t)
    print(f"caching job / bare client loop, {n} requests, concurrency {conc}: "
          f"{statistics.median(job_t):.2f}s / {statistics.median(bare_t):.2f}s = {ratio:.3f} (goal <= 1.05)")


if __name__ == "__main__":
    main()
