"""Teacher throughput on CPU with Gemma 3 270M: samples/s for a soft-label template on
MOSI transcripts (synthetic ones without the shared data), through transformers
(hf_local, batched) and through the llama.cpp server (openai_compat). Model loading and
server start-up are excluded; each backend answers the same N prompts into a fresh cache.

    python bench/teacher_throughput.py [N] [TEMPLATE]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from common import Timer, bench_dataset, loadavg

from prompts import load_template
from teachers import make_teacher
from teachers.job import CachingJob
from tests.support.llama_server import llama_server
from workbench.cache.store import CacheStore
from workbench.config import CacheConfig, TeacherConfig
from workbench.models import gemma_gguf_path


def measure(tcfg: TeacherConfig, ds, template, n: int, cache: Path) -> tuple[float, int]:
    teacher = make_teacher(tcfg)
    with CacheStore(cache) as store:
        job = CachingJob(tcfg, CacheConfig(dir=str(cache)), template, ds, store, teacher.model_id())
        planned = job.plan(["test"])[:n]
        teacher.load()
        try:
            with Timer() as t:
                report = job.run(teacher, planned)
        finally:
            teacher.close()
    return report.ok / t.s, report.ok


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    template = load_template(sys.argv[2] if len(sys.argv) > 2 else "sentiment_polarity")
    tmp = Path(tempfile.mkdtemp())
    ds = bench_dataset(tmp)
    rows = []
    for bs in (1, 16):
        cfg = TeacherConfig(backend="hf_local", model="gemma3-270m", api="completions", device="cpu",
                            batch_size=bs)
        rate, ok = measure(cfg, ds, template, n, tmp / f"hf{bs}")
        rows.append((f"hf_local batch {bs}", rate, ok))
    with llama_server(gemma_gguf_path()) as url:
        for conc in (1, 2):
            cfg = TeacherConfig(backend="openai_compat", model="gemma3-270m", base_url=url,
                                api="completions", max_concurrency=conc, timeout_s=300)
            rate, ok = measure(cfg, ds, template, n, tmp / f"llama{conc}")
            rows.append((f"llama.cpp server, concurrency {conc}", rate, ok))
    print(f"{template.name} on {ds.info.name} ({n} test transcripts), {loadavg()}")
    for name, rate, ok in rows:
        print(f"  {name:<32} {rate:6.2f} samples/s  ({ok} ok)")


if __name__ == "__main__":
    main()
