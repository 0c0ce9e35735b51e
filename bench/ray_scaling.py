"""The Ray engine against the local engine, in one run: answers/s of the caching job and
clips/s of the media stage.

1. I/O-bound teacher: the fault server on loopback answering every request after 200 ms
   (``openai_compat``, 4 requests in flight per actor). Local engine at concurrency 4 and
   8; Ray at 1 actor (concurrency 4) and 2 actors (concurrency 8, shared out 4 + 4).
2. CPU-bound teacher: Gemma 3 270M on ``hf_local`` (score-only), local engine with 1 and 2
   torch threads; Ray at 1 actor (1 CPU) and 2 actors (1 CPU each).
3. Media stage (``bench/ray_media.py``): ``--processes N`` against ``--engine ray``.

Each job fills a fresh cache with the same requests. answers/s is the job's sending rate
(``report.wall_s``: leasing, sending, parsing, storing; model loading and actor start-up
aside, which are printed apart as start-up seconds). Ratios:

- overhead at equal parallelism = local answers/s / Ray answers/s (target <= 1.15);
- scaling = Ray 2 actors / Ray 1 actor on the I/O-bound teacher (target >= 1.8).

A local Ray instance with 2 CPUs is started here (this machine has 2 cores).

    python bench/ray_scaling.py [N_IO] [N_CPU] [N_CLIPS]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cache_soak import unique_texts
from common import REPO, loadavg

sys.path.insert(0, str(REPO))

from teachers.run import run_cache_job  # noqa: E402
from workbench.config import (  # noqa: E402
    CacheConfig,
    CacheJobConfig,
    DataConfig,
    RayConfig,
    TeacherConfig,
)
from workbench.data.synth import SynthSpec, write  # noqa: E402

LATENCY_S = 0.2
PER_ACTOR = 4


def synth(tmp: Path, n: int) -> DataConfig:
    manifest = unique_texts(write(tmp / f"synth{n}", SynthSpec(n=n, seed=3)))
    return DataConfig(path=str(manifest), features=str(manifest.parent / "features.npz"))


def one_job(tcfg: TeacherConfig, data: DataConfig, cache: Path, engine: str,
            actors: int = 1) -> tuple[float, float, int]:
    """(answers/s while sending, start-up seconds, answers) of one job into ``cache``."""
    cfg = CacheJobConfig(data=data, teacher=tcfg, cache=CacheConfig(
        dir=str(cache), template="sentiment_polarity", max_error_rate=1.0, engine=engine,
        ray=RayConfig(actors=actors, num_cpus=1.0 if tcfg.backend == "hf_local" else 0.0)))
    t0 = time.perf_counter()
    s = run_cache_job(cfg)
    total = time.perf_counter() - t0
    r = s.report
    return r.answered / r.wall_s, total - r.wall_s - s.plan_s, r.answered


def row(name: str, rate: float, startup: float, n: int) -> None:
    print(f"  {name:<34} {rate:7.1f} answers/s   ({n} answers; start-up {startup:5.1f} s)",
          flush=True)


def io_bound(tmp: Path, n: int) -> dict[str, float]:
    data = synth(tmp, n)
    out = {}
    print(f"I/O-bound teacher: fake server, {LATENCY_S * 1000:.0f} ms per answer, {n} samples")
    # the fault server (tests/support/fake_openai.py) in its own process, as cache_soak runs it
    server = subprocess.Popen([sys.executable, "-m", "tests.support.fake_openai", "--fault-rate",
                               "0", "--slow-s", str(LATENCY_S)], cwd=REPO, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    base_url = server.stdout.readline().strip()
    try:
        for name, engine, actors, conc in (("local, concurrency 4", "local", 1, 4),
                                           ("ray, 1 actor (concurrency 4)", "ray", 1, 4),
                                           ("local, concurrency 8", "local", 1, 8),
                                           ("ray, 2 actors (concurrency 4+4)", "ray", 2, 8)):
            tcfg = TeacherConfig(backend="openai_compat", model="fake", base_url=base_url,
                                 api="completions", max_concurrency=conc, timeout_s=30)
            rate, startup, k = one_job(tcfg, data, tmp / f"io-{engine}-{actors}-{conc}", engine,
                                       actors)
            out[name] = rate
            row(name, rate, startup, k)
    finally:
        server.terminate()
        server.wait()
    return out


def cpu_bound(tmp: Path, n: int) -> dict[str, float]:
    data = synth(tmp, n)
    out = {}
    print(f"CPU-bound teacher: Gemma 3 270M, hf_local score-only, {n} samples")
    for name, engine, actors, threads in (("local, 1 thread", "local", 1, 1),
                                          ("ray, 1 actor (1 CPU)", "ray", 1, 1),
                                          ("local, 2 threads", "local", 1, 2),
                                          ("ray, 2 actors (1 CPU each)", "ray", 2, 1)):
        tcfg = TeacherConfig(backend="hf_local", model="gemma3-270m", api="completions",
                             device="cpu", batch_size=8, num_threads=threads)
        rate, startup, k = one_job(tcfg, data, tmp / f"cpu-{engine}-{actors}-{threads}", engine,
                                   actors)
        out[name] = rate
        row(name, rate, startup, k)
    return out


def main() -> None:
    n_io = int(sys.argv[1]) if len(sys.argv) > 1 else 240
    n_cpu = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    n_clips = int(sys.argv[3]) if len(sys.argv) > 3 else 24
    from workbench.ray_engine import connect

    print(f"CPU: {os.cpu_count()} cores; load {loadavg()}")
    connect(num_cpus=2)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        io = io_bound(tmp, n_io)
        cpu = cpu_bound(tmp, n_cpu)
        try:
            from ray_media import measure
        except ImportError:
            print("media stage: bench/ray_media.py is not there; skipped")
        else:
            print(f"media stage: {n_clips} synthetic clips, 2 workers")
            media = measure(n_clips, 2)
            print("  " + ", ".join(f"{k} {v:.3g}" for k, v in media.items()
                                   if isinstance(v, (int, float))))
    print("ratios (one run):")
    print(f"  I/O overhead at equal parallelism, local/ray: 1 actor "
          f"{io['local, concurrency 4'] / io['ray, 1 actor (concurrency 4)']:.3f}, 2 actors "
          f"{io['local, concurrency 8'] / io['ray, 2 actors (concurrency 4+4)']:.3f} (target <= 1.15)")
    print(f"  I/O scaling, ray 2 actors / 1 actor: "
          f"{io['ray, 2 actors (concurrency 4+4)'] / io['ray, 1 actor (concurrency 4)']:.3f} "
          "(target >= 1.8)")
    print(f"  CPU overhead at equal parallelism, local/ray: 1 actor "
          f"{cpu['local, 1 thread'] / cpu['ray, 1 actor (1 CPU)']:.3f}, 2 actors "
          f"{cpu['local, 2 threads'] / cpu['ray, 2 actors (1 CPU each)']:.3f} (target <= 1.15)")
    print(f"  CPU scaling, ray 2 actors / 1 actor: "
          f"{cpu['ray, 2 actors (1 CPU each)'] / cpu['ray, 1 actor (1 CPU)']:.3f} (2 cores here)")


if __name__ == "__main__":
    main()
