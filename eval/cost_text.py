"""The cost report of one checkpoint (:func:`eval.cost.cost_report`) as plain text lines:
size, the student's speed and memory, the teacher per sample, and their ratios."""

from __future__ import annotations

from typing import Any


def _size_line(cost: dict[str, Any]) -> str:
    p, size = cost["parameters"], cost["size"]
    line = (f"parameters {p['total']:,} total, {p['trainable']:,} trainable; checkpoint "
            f"{size['mb']:.2f} MB on disk")
    if size.get("excludes"):
        line += f" (without {'; '.join(size['excludes'])})"
    return line


def _speed_line(speed: dict[str, Any]) -> str:
    lat, mem = speed["latency_batch1_ms"], speed["memory"]
    mem_text = f"maxrss {mem['maxrss_mb']:.0f} MB"
    if "rss_delta_mb" in mem:
        mem_text = f"RSS +{mem['rss_delta_mb']:.0f} MB since load, " + mem_text
    if "cuda_max_allocated_mb" in mem:
        mem_text += f", CUDA peak {mem['cuda_max_allocated_mb']:.0f} MB"
    timed = f" (timed on {speed['timed_samples']} of {speed['split_samples']} samples)"
    return (f"student on {speed['device']} ({speed['threads']} threads): "
            f"{speed['throughput_samples_per_s']:.1f} samples/s at batch "
            f"{speed['batch_size']}; batch-1 latency p50 {lat['p50']:.1f} ms, p95 "
            f"{lat['p95']:.1f} ms{timed}; {mem_text}")


def _ratio_line(cmp_: dict[str, Any]) -> str:
    if cmp_["latency_ratio"] is not None:
        ratio = (f"student/teacher latency {cmp_['latency_ratio']:.3g} "
                 f"(speedup {cmp_['speedup']:.3g}x)")
    else:
        ratio = f"latency ratio n/a: {cmp_.get('latency_note', '')}"
    if cmp_["cost_ratio"] is None:
        cost_r = f"cost ratio n/a: {cmp_.get('cost_note', '')}"
    elif cmp_.get("cost_basis") == "machine_time":
        cost_r = (f"student/teacher cost ratio {cmp_['cost_ratio']:.3g} in machine-seconds "
                  "per sample (a $0 local teacher; same-price hardware assumed)")
    else:
        cost_r = f"student/teacher cost ratio {cmp_['cost_ratio']:.3g} (USD per sample)"
    return f"{ratio}; {cost_r}"


def cost_lines(cost: dict[str, Any]) -> list[str]:
    """Plain text lines (no markup) describing ``cost``, in reading order."""
    lines = [_size_line(cost)]
    speed = cost.get("speed")
    if speed is None:
        return lines
    lines.append(_speed_line(speed))
    teacher, cmp_ = cost["teacher"], cost["comparison"]
    if cmp_["teacher_job"] is None:
        lines.append(f"teacher side unavailable: {teacher.get('note') or ''}")
        lines.extend(f"  {job}: {info.get('reason', '')}"
                     for job, info in teacher.get("jobs", {}).items()
                     if not info.get("available"))
        return lines
    job = teacher["jobs"][cmp_["teacher_job"]]
    per = job["per_sample"]
    lines.append(f"teacher {job['teacher']} ({cmp_['teacher_job']}, {job['ok_samples']} cached "
                 f"samples): {per['latency_s'] * 1000:.1f} ms, {per['tokens_in']:.0f}+"
                 f"{per['tokens_out']:.0f} tokens, ${per['cost_usd']:.6f} per sample")
    lines.append(_ratio_line(cmp_))
    return lines
