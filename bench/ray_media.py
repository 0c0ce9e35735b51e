"""The media stage on Ray against worker processes, in one run: clips/s of ``workbench data
media --processes N`` and of ``--engine ray`` with N CPUs.

Writes N_CLIPS synthetic clips with the project's media synth (``workbench data synth
--media``: 2-second H.264 + AAC clips, two per file, cut by start / end), then ingests them
with ``workbench.data.ingest.ingest_media`` into fresh directories:

1. ``media.processes=WORKERS`` (the local engine), first job of this process;
2. ``media.engine=ray`` on a Ray instance with WORKERS CPUs, twice: the first job pays
   for Ray's worker processes starting (and importing PyAV, openSMILE), the second finds
   them up (what every job after the first on a running cluster sees);
3. ``media.processes=WORKERS`` again (each job starts its own pool, so this is every
   later job; the driver's imports are done by now), the figure Ray is compared with;
4. the clip loop alone (no manifest, no dataset writing) through the engine's plain Ray
   tasks (``workbench.data.ray_media.ray_records``: one task per clip, ``ray.wait`` in
   completion order) and through Ray Data (``from_items(...).map(...)``, one clip per
   block, ``iter_rows``), which the engine does not use: this shows why.

clips/s is clips / the job's wall time (``report.wall_s``: manifest, decoding, dataset).
The ratio ray / processes is the figure (shared machines make single rates noisy).

    python bench/ray_media.py [N_CLIPS] [WORKERS]
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, loadavg

sys.path.insert(0, str(REPO))

from workbench.config import DataConfig, MediaConfig, MediaJobConfig, load_config  # noqa: E402
from workbench.data.ingest import clip_spec, ingest_media, process_clip  # noqa: E402
from workbench.data.media import ClipSpec  # noqa: E402
from workbench.data.synth_media import MediaSynthSpec, write_media_dataset  # noqa: E402


def _ray(workers: int):
    """Ray with ``workers`` CPUs: the running instance when it has that many, else a local
    one started here (a running one of another size is shut down first)."""
    from workbench.ray_engine import connect, import_ray

    ray = import_ray()
    if ray.is_initialized() and ray.cluster_resources().get("CPU", 0) != workers:
        ray.shutdown()
    return connect(num_cpus=workers)


def _job(data: DataConfig, out: Path, media: MediaConfig) -> float:
    """clips/s of one ingestion job into the fresh directory ``out``."""
    report = ingest_media(MediaJobConfig(data=data, media=media, out=str(out)))
    if report.done != report.clips:
        raise RuntimeError(f"{report.clips - report.done} clips were not decoded: {report.errors[:3]}")
    return report.done / report.wall_s


def _ray_data_decode(row: dict, mcfg: MediaConfig, media_dir: str) -> dict:
    """One Ray Data row: a clip's spec (JSON) in, its record (JSON) out."""
    spec = ClipSpec(**json.loads(row["spec"]))
    return {"record": json.dumps(process_clip(spec, mcfg, Path(media_dir)))}


def _clip_loops(data: DataConfig, tmp: Path, ray) -> tuple[float, float]:
    """clips/s of the decoding loop alone: through Ray Data (``from_items(...).map(...)``,
    one clip per block, rows streamed back with ``iter_rows``), and through the engine's
    plain Ray tasks (``workbench.data.ray_media.ray_records``); each run once before it is
    timed (Ray Data's first execution in a process starts its executor)."""
    from dataclasses import asdict, replace

    import ray.data

    from workbench.data import read_samples
    from workbench.data.ray_media import absolute, ray_records

    mcfg = MediaConfig(engine="ray")
    specs = [absolute(clip_spec(s, mcfg)) for s in read_samples(replace(data, check_media=False))]
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    rates = []
    for name, rep in (("data", 0), ("tasks", 0), ("data", 1), ("tasks", 1)):  # rep 0: warm-up
        media_dir = tmp / f"loop-{name}-{rep}" / "media"
        (media_dir / "clips").mkdir(parents=True)
        t = time.perf_counter()
        if name == "data":
            items = [{"spec": json.dumps(asdict(sp))} for sp in specs]
            ds = ray.data.from_items(items, override_num_blocks=len(items)).map(
                _ray_data_decode, fn_kwargs={"mcfg": mcfg, "media_dir": str(media_dir)}, num_cpus=1)
            records = [json.loads(row["record"]) for row in ds.iter_rows()]
        else:
            records = list(ray_records(specs, mcfg, media_dir))
        rates.append(len(specs) / (time.perf_counter() - t))
        if sum(r["status"] == "ok" and not r.get("skipped") for r in records) != len(specs):
            raise RuntimeError(f"the {name} loop did not decode every clip")
    return rates[2], rates[3]


def measure(n_clips: int, workers: int) -> dict:
    """clips/s of the media stage with ``workers`` processes and with Ray on ``workers``
    CPUs, on ``n_clips`` synthetic clips (keys as printed by :func:`main`)."""
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        config = write_media_dataset(tmp / "synth", MediaSynthSpec(n=n_clips, seed=0))
        data = load_config(DataConfig, config)
        first_local = _job(data, tmp / "processes-first", MediaConfig(processes=workers))
        t = time.perf_counter()
        ray = _ray(workers)
        connect_s = time.perf_counter() - t
        cold = _job(data, tmp / "ray-first", MediaConfig(engine="ray"))
        warm = _job(data, tmp / "ray", MediaConfig(engine="ray"))
        local = _job(data, tmp / "processes", MediaConfig(processes=workers))
        loop_data, loop_tasks = _clip_loops(data, tmp, ray)
    return {"clips": n_clips, "workers": workers,
            "processes clips/s": local, "ray clips/s": warm,
            "processes first job clips/s": first_local, "ray first job clips/s": cold,
            "ray connect s": connect_s,
            "ray / processes": warm / local, "ray first job / processes": cold / local,
            "clip loop ray data clips/s": loop_data, "clip loop ray tasks clips/s": loop_tasks,
            "ray data / ray tasks": loop_data / loop_tasks}


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 48
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    print(f"CPU: {os.cpu_count()} cores; load {loadavg()}")
    print(f"media stage: {n} synthetic 2-second clips (workbench data synth --media), "
          f"{workers} workers")
    m = measure(n, workers)
    print(f"  --processes {workers}, first job:     {m['processes first job clips/s']:6.2f} clips/s "
          "(this process imports PyAV and openSMILE)")
    print(f"  --processes {workers}:               {m['processes clips/s']:6.2f} clips/s "
          "(every job starts its own worker processes)")
    print(f"  --engine ray, {workers} CPUs, first job: {m['ray first job clips/s']:6.2f} clips/s "
          f"(Ray's workers start; connecting took {m['ray connect s']:.1f} s before it)")
    print(f"  --engine ray, {workers} CPUs:            {m['ray clips/s']:6.2f} clips/s")
    print(f"  clip loop alone: Ray tasks (the engine) {m['clip loop ray tasks clips/s']:.2f} "
          f"clips/s, Ray Data {m['clip loop ray data clips/s']:.2f} clips/s")
    print("ratios (one run):")
    print(f"  ray / processes: {m['ray / processes']:.3f} (first job {m['ray first job / processes']:.3f})")
    print(f"  Ray Data / Ray tasks, clip loop: {m['ray data / ray tasks']:.3f}")
    print(f"load after: {loadavg()}")


if __name__ == "__main__":
    main()
