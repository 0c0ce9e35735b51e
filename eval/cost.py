"""Cost and speed of a student, and of the teacher it replaces.

Student side, measured on this machine (one process, the model's device):

- ``parameters``: total / trainable parameter counts, per component and overall, as the
  run counted them (``student.json``; else :meth:`StudentModel.parameter_counts` of the
  loaded model), and the bytes the weights and buffers take in memory;
- ``size``: bytes of the checkpoint directory on disk. Frozen text encoders are not in it
  and neither are the base weights under a LoRA adapter (both are rebuilt from the
  encoder's package), so ``size.excludes`` names them;
- ``speed``: throughput (samples/s) of :func:`students.inference.predict` at a batch size,
  and per-sample latency (p50 / p95 / mean) at batch 1, both end to end (tokenisation,
  collation, forward pass), on at most ``speed_samples`` samples spread over the split
  (``timed_samples`` of ``split_samples``);
- ``memory``: resident-set size before the model was loaded (when the caller passes it),
  after the benchmark, their difference, the process's peak RSS (``maxrss``), and on a GPU
  ``torch.cuda.max_memory_allocated`` during the benchmark.

Teacher side, read from the caches named in the checkpoint's ``teacher_manifest.json``: for
every cache job the run trained on, the mean recorded latency, tokens in / out and cost in
USD per ok sample (:meth:`workbench.cache.join.TeacherView.cost_per_sample`). A cache that
is absent or does not match the data is reported as ``available: false`` with the reason,
never as zeros.

Comparison: the teacher is the soft-label job when there is one, else the description job
(of the run or of its prompted network). ``latency_ratio`` is the student's p50 latency at
batch 1 over the teacher's mean latency per request, ``speedup`` its inverse. The student's
cost per sample needs a price for the machine (``device_cost_per_hour`` USD): price / 3600 /
throughput; ``cost_ratio`` is that over the teacher's cost per sample. Ratios that cannot
be computed are ``null`` with a ``*_note`` saying why.
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from eval.protocol import iter_jobs
from students.collate import StudentItem
from students.inference import predict
from students.model import StudentModel
from workbench.cache.join import teacher_view
from workbench.cache.store import DB_FILE, CacheError
from workbench.data import MSADataset
from workbench.data.schema import Sample

log = logging.getLogger(__name__)

MB = 1024.0 * 1024.0


# ------------------------------------------------------------------------------ static


def parameter_summary(model: StudentModel, recorded: Mapping[str, Any] | None = None
                      ) -> dict[str, Any]:
    """Total / trainable parameters (overall and per component) and in-memory bytes.

    ``recorded`` is ``student.json``'s ``parameters`` (counted when the run trained):
    trainable counts come from there when given, since a rebuilt model's
    ``requires_grad`` flags do not show which parts training froze.
    """
    counts = {k: {"total": v.total, "trainable": v.trainable}
              for k, v in model.parameter_counts().items()}
    source = "model"
    if recorded and isinstance(recorded.get("all"), Mapping):
        counts = {k: {"total": int(v["total"]), "trainable": int(v["trainable"])}
                  for k, v in recorded.items()}
        source = "student.json (as trained)"
    tensors = [*model.parameters(), *model.buffers()]
    nbytes = int(sum(t.numel() * t.element_size() for t in tensors))
    return {
        "total": counts["all"]["total"],
        "trainable": counts["all"]["trainable"],
        "components": {k: v for k, v in counts.items() if k != "all"},
        "counted_from": source,
        "in_memory_bytes": nbytes,
        "in_memory_mb": nbytes / MB,
    }


def checkpoint_size(path: str | Path, text_mode: str | None = None,
                    frozen_encoders: Sequence[str] = ()) -> dict[str, Any]:
    """Bytes on disk of every file under the checkpoint directory ``path``.

    ``frozen_encoders`` are the encoders the checkpoint does not hold (rebuilt from their
    package when it is loaded); they are listed under ``excludes``.
    """
    root = Path(path)
    files = {str(p.relative_to(root)): p.stat().st_size
             for p in sorted(root.rglob("*")) if p.is_file()}
    total = int(sum(files.values()))
    out: dict[str, Any] = {"bytes": total, "mb": total / MB, "files": files}
    if frozen_encoders:
        out["excludes"] = [f"{name}: base weights, rebuilt from its package"
                           for name in frozen_encoders]
    if text_mode is not None:
        out["text_mode"] = text_mode
    return out


# ------------------------------------------------------------------------------- speed


def rss_bytes() -> int:
    """Resident-set size of this process now."""
    return int(psutil.Process().memory_info().rss)


def maxrss_bytes() -> int:
    """Peak resident-set size of this process so far (``getrusage``)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB


def _timed_predict(model: StudentModel, items: Sequence[Sample | StudentItem],
                   batch_size: int) -> float:
    start = time.perf_counter()
    predict(model, items, batch_size)
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    return time.perf_counter() - start


def spread(items: Sequence[Sample | StudentItem], n: int) -> list[Sample | StudentItem]:
    """At most ``n`` of ``items``, evenly spaced from the first to the last, in order (0:
    all of them)."""
    if n <= 0 or n >= len(items):
        return list(items)
    picks = np.unique(np.linspace(0, len(items) - 1, n).round().astype(int))
    return [items[int(i)] for i in picks]


def measure_speed(model: StudentModel, items: Sequence[Sample | StudentItem], *,
                  batch_size: int = 64, latency_samples: int = 50, speed_samples: int = 0,
                  min_seconds: float = 1.0, max_passes: int = 5,
                  rss_baseline: int | None = None) -> dict[str, Any]:
    """Throughput at ``batch_size``, latency at batch 1, and memory, on ``items``, or on
    ``speed_samples`` of them (:func:`spread`; 0: all) when that is fewer.

    Throughput: after one warm-up batch, whole passes over the timed samples until
    ``min_seconds`` have passed or ``max_passes`` were made; samples/s over all passes.
    Latency: after two warm-up calls, ``latency_samples`` single-sample calls (cycling
    through the timed samples); p50 / p95 / mean in milliseconds. ``rss_baseline`` is the
    RSS (bytes) before the model was loaded, for ``memory.rss_delta_mb``.
    """
    if not items:
        raise ValueError("measure_speed needs at least one item to run the student on")
    if batch_size < 1 or latency_samples < 1:
        raise ValueError(f"batch_size={batch_size}, latency_samples={latency_samples}: "
                         "use at least 1 for both")
    split_samples = len(items)
    items = spread(items, speed_samples)
    cuda = model.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(model.device)
    predict(model, items[:batch_size], batch_size)  # warm-up: allocator, kernels, caches
    elapsed, passes = 0.0, 0
    while passes < max(1, max_passes) and (passes == 0 or elapsed < min_seconds):
        elapsed += _timed_predict(model, items, batch_size)
        passes += 1
    n = passes * len(items)
    for item in items[:2]:
        predict(model, [item], 1)
    lat = np.array([_timed_predict(model, [items[i % len(items)]], 1)
                    for i in range(latency_samples)]) * 1000.0
    speed: dict[str, Any] = {
        "device": str(model.device),
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "throughput_samples_per_s": n / elapsed if elapsed > 0 else float("inf"),
        "throughput_samples": n,
        "throughput_seconds": elapsed,
        "timed_samples": len(items),
        "split_samples": split_samples,
        "latency_batch1_ms": {"p50": float(np.percentile(lat, 50)),
                              "p95": float(np.percentile(lat, 95)),
                              "mean": float(lat.mean()), "n": int(lat.size)},
    }
    rss_now = rss_bytes()
    memory: dict[str, Any] = {"rss_after_mb": rss_now / MB, "maxrss_mb": maxrss_bytes() / MB}
    if rss_baseline is not None:
        memory["rss_before_load_mb"] = rss_baseline / MB
        memory["rss_delta_mb"] = (rss_now - rss_baseline) / MB
    if cuda:
        memory["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(model.device) / MB
    speed["memory"] = memory
    log.info("student speed on %s: %.1f samples/s at batch %d, p50 %.2f ms at batch 1 "
             "(timed on %d of %d samples)", model.device, speed["throughput_samples_per_s"],
             batch_size, speed["latency_batch1_ms"]["p50"], len(items), split_samples)
    return speed


# ----------------------------------------------------------------------------- teacher


def teacher_costs(manifest: Mapping[str, Any], ds: MSADataset) -> dict[str, Any]:
    """Per-sample latency, tokens and cost of every cache job a checkpoint trained on.

    Returns ``{"jobs": {where: entry}, "available": bool, "note": str}``. Each entry holds
    the job id, template, teacher, cache dir and the splits it covered, and either
    ``available: true`` with ``per_sample`` (``latency_s``, ``tokens_in``, ``tokens_out``,
    ``cost_usd``) and ``ok_samples``, or ``available: false`` with ``reason``.
    """
    jobs: dict[str, Any] = {}
    for where, entry in iter_jobs(manifest):
        job = entry.get("job") or {}
        cache_dir = entry.get("cache_dir") or ""
        splits = [s for s in (entry.get("splits") or ["train"]) if s in ds.splits]
        rec: dict[str, Any] = {"job": job.get("job"), "template": job.get("template"),
                               "teacher": job.get("teacher"), "cache_dir": cache_dir,
                               "splits": splits}
        if not cache_dir or not (Path(cache_dir) / DB_FILE).is_file():
            rec.update(available=False,
                       reason=f"teacher cache {cache_dir!r} is not here (no {DB_FILE}); copy "
                              "or mount it at that path to compare against the teacher")
            log.warning("teacher side of %s unavailable: %s", where, rec["reason"])
            jobs[where] = rec
            continue
        sample_splits = {s.id: sp for sp in splits for s in ds.iter_samples(sp)}
        try:
            view = teacher_view(cache_dir, sample_splits, ds.fingerprint,
                                template=str(job.get("template", "")), job=str(job.get("job", "")),
                                whole_fingerprint=ds.info.whole_fingerprint)
        except CacheError as e:
            rec.update(available=False, reason=str(e))
            log.warning("teacher side of %s unavailable: %s", where, e)
            jobs[where] = rec
            continue
        if not view.outputs:
            rec.update(available=False, reason=f"cache {cache_dir} job {job.get('job')} has no "
                                               f"ok answers for the {splits} samples")
        else:
            rec.update(available=True, ok_samples=len(view.outputs),
                       per_sample=view.cost_per_sample())
        jobs[where] = rec
    if not jobs:
        return {"available": False, "jobs": {},
                "note": "the checkpoint trained on gold labels only: teacher_manifest.json "
                        "names no teacher cache job, so there is no teacher to compare with"}
    ok = [w for w, r in jobs.items() if r["available"]]
    note = "" if ok else "no teacher cache named in teacher_manifest.json is readable here"
    return {"available": bool(ok), "jobs": jobs, "note": note}


def _reference_job(teacher: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]] | None:
    """The job that stands for "the teacher": soft labels first, then descriptions."""
    jobs = teacher.get("jobs", {})
    order = sorted(jobs, key=lambda w: (0 if w.endswith("soft_labels") else 1, w.count("."), w))
    for where in order:
        if jobs[where].get("available"):
            return where, jobs[where]
    return None


def compare(speed: Mapping[str, Any] | None, teacher: Mapping[str, Any],
            device_cost_per_hour: float = 0.0) -> dict[str, Any]:
    """Student vs teacher: latency ratio, speedup, student cost per sample, cost ratio."""
    out: dict[str, Any] = {"teacher_job": None, "latency_ratio": None, "speedup": None,
                           "student_cost_usd_per_sample": None, "cost_ratio": None}
    if speed is not None and device_cost_per_hour > 0:
        tput = float(speed["throughput_samples_per_s"])
        out["student_cost_usd_per_sample"] = device_cost_per_hour / 3600.0 / tput
    elif speed is not None:
        out["student_cost_note"] = ("no price for this machine: pass --device-cost-per-hour "
                                    "(USD) to turn the student's throughput into a cost")
    ref = _reference_job(teacher)
    if ref is None:
        note = teacher.get("note") or "the teacher side is unavailable"
        out["latency_note"] = out["cost_note"] = f"teacher side unavailable: {note}"
        return out
    where, job = ref
    per = job["per_sample"]
    out["teacher_job"] = where
    if speed is None:
        out["latency_note"] = "student speed was not measured (--no-cost)"
    elif per["latency_s"] > 0:
        student_s = float(speed["latency_batch1_ms"]["p50"]) / 1000.0
        out["latency_ratio"] = student_s / per["latency_s"]
        out["speedup"] = per["latency_s"] / student_s if student_s > 0 else None
    else:
        out["latency_note"] = f"the cache records no latency for {where} (0 s per sample)"
    if speed is not None and per["latency_s"] > 0:
        # machine-seconds per sample: the student at its throughput batch, the teacher as
        # the cache timed it (batched backends record batch time / batch size)
        student_machine_s = 1.0 / float(speed["throughput_samples_per_s"])
        out["compute_ratio"] = student_machine_s / per["latency_s"]
    if per["cost_usd"] > 0 and out["student_cost_usd_per_sample"] is not None:
        out["cost_ratio"] = out["student_cost_usd_per_sample"] / per["cost_usd"]
        out["cost_basis"] = "usd"
    elif per["cost_usd"] <= 0 and out.get("compute_ratio") is not None:
        # a local or self-hosted teacher costs machine time: on machines of one hourly
        # price the dollar ratio is the machine-time ratio, whatever the price
        out["cost_ratio"] = out["compute_ratio"]
        out["cost_basis"] = "machine_time"
        out["cost_note"] = (f"the cache records $0 per sample for {where} (a local or "
                            "self-hosted teacher), so the ratio is of machine-seconds per "
                            "sample, assuming the teacher ran on hardware of the same price")
    elif out["student_cost_usd_per_sample"] is None:
        out["cost_note"] = out.get("student_cost_note", "student cost unknown")
    else:
        out["cost_note"] = f"the teacher's cost per sample for {where} is unknown"
    return out


def cost_report(model: StudentModel, checkpoint: str | Path, items: Sequence[Sample | StudentItem],
                manifest: Mapping[str, Any], ds: MSADataset, *, batch_size: int,
                recorded_parameters: Mapping[str, Any] | None = None,
                latency_samples: int = 50, speed_samples: int = 0,
                device_cost_per_hour: float = 0.0, rss_baseline: int | None = None,
                measure: bool = True) -> dict[str, Any]:
    """The whole ``cost`` section of ``results.json`` for one checkpoint.

    ``recorded_parameters`` is ``student.json``'s ``parameters`` (see
    :func:`parameter_summary`). ``speed_samples`` bounds the samples timed
    (:func:`measure_speed`). With ``measure=False`` only the static part (parameters,
    size) is filled and ``speed``, ``teacher`` and ``comparison`` are left out.
    """
    cfg = model.cfg
    # lora keeps only the adapter, frozen nothing of the encoder: its base weights come
    # from the encoder's package when the checkpoint is loaded.
    frozen = [cfg.text_encoder] if cfg.text_mode != "full" else []
    if model.prompt is not None:
        frozen.append(f"{cfg.prompt_encoder or cfg.text_encoder} (description branch)")
    out: dict[str, Any] = {
        "parameters": parameter_summary(model, recorded_parameters),
        "size": checkpoint_size(checkpoint, cfg.text_mode, frozen),
    }
    if not measure:
        out["note"] = "speed, memory and teacher comparison skipped (--no-cost)"
        return out
    out["speed"] = measure_speed(model, items, batch_size=batch_size,
                                 latency_samples=latency_samples, speed_samples=speed_samples,
                                 rss_baseline=rss_baseline)
    out["teacher"] = teacher_costs(manifest, ds)
    out["comparison"] = compare(out["speed"], out["teacher"], device_cost_per_hour)
    return out
