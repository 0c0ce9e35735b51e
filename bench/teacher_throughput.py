"""Teacher throughput on CPU with Gemma 3 270M: samples/s for a soft-label template on
MOSI transcripts (synthetic ones without the shared data), through transformers
(hf_local, batched) and through the llama.cpp server (openai_compat). Each backend answers
the same N test prompts into a fresh cache through the caching job's library entry
(``run_cache_job``); model loading and server start-up are excluded (the rate is over the
job's sending time, ``report.wall_s``).

    python bench/teacher_throughput.py [N] [TEMPLATE]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from common import bench_data, loadavg

from teachers.llamacpp_server import llama_server
from teachers.run import run_cache_job
from workbench.config import CacheConfig, CacheJobConfig, DataConfig, TeacherConfig
from workbench.models import gemma_gguf_path


def measure(tcfg: TeacherConfig, data: DataConfig, template: str, n: int,
            cache: Path) -> tuple[float, int]:
    cfg = CacheJobConfig(data=data, teacher=tcfg, cache=CacheConfig(dir=str(cache), template=template),
                         splits=["test"], limit=n)
    report = run_cache_job(cfg).report
    return report.ok / report.wall_s, report.ok


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    template = sys.argv[2] if len(sys.argv) > 2 else "sentiment_polarity"
    tmp = Path(tempfile.mkdtemp())
    data = bench_data(tmp)
    rows = []
    for bs in (1, 16):
        cfg = TeacherConfig(backend="hf_local", model="gemma3-270m", api="completions", device="cpu",
                            batch_size=bs)
        rate, ok = measure(cfg, data, template, n, tmp / f"hf{bs}")
        rows.append((f"hf_local batch {bs}", rate, ok))
    with llama_server(gemma_gguf_path()) as url:
        for conc in (1, 2):
            cfg = TeacherConfig(backend="openai_compat", model="gemma3-270m", base_url=url,
                                api="completions", max_concurrency=conc, timeout_s=300)
            rate, ok = measure(cfg, data, template, n, tmp / f"llama{conc}")
            rows.append((f"llama.cpp server, concurrency {conc}", rate, ok))
    print(f"{template} on {data.name or Path(data.path).stem} ({n} test transcripts), {loadavg()}")
    for name, rate, ok in rows:
        print(f"  {name:<32} {rate:6.2f} samples/s  ({ok} ok)")


if __name__ == "__main__":
    main()
