"""Latency of a LoRA student with its adapter (PEFT, unmerged) against the same student
exported with the adapter merged into the text encoder (``students.export``).

Both models come from one checkpoint and run the same pre-collated batches (tokenisation
excluded) under ``torch.inference_mode``: batch 1 (p50 / p95 over RUNS calls, one sample
after another, the two models alternating call by call so drift hits both) and batch 64
(median ms per batch over BATCH_RUNS calls, and samples/s). Before timing, the two models'
outputs on the batch are compared (the export must give the checkpoint's predictions).
Prints a table and the merged/adapter ratios.

Without CHECKPOINT, a tiny-but-real student is trained first: MiniLM-L6 + LoRA (r=8 on
query and value, the default student) for one epoch on synthetic utterances.

    python bench/merged_latency.py [CHECKPOINT] [--runs 200] [--warmup 20]
        [--batch-runs 20] [--batch-size 64] [--device cpu|cuda] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import loadavg

from students.collate import Collator
from students.export import export_model, load_exported


def build_default_checkpoint(root: Path, n: int = 160) -> Path:
    """Train the default student (MiniLM-L6 + LoRA) for one epoch on ``n`` synthetic
    utterances (gold labels only); return its checkpoint directory."""
    import yaml

    from students.trainer import train
    from workbench.config import DistillConfig, load_config
    from workbench.data.synth import SynthSpec, write

    manifest = write(root / "data", SynthSpec(n=n, seed=0))
    recipe = {
        "data": {"name": "synth", "path": str(manifest),
                 "features": str(root / "data" / "features.npz"),
                 "feature_keys": {"audio": "audio", "vision": "vision"},
                 "modalities": ["text", "audio", "vision"]},
        "signals": {"cache_dir": ""},
        "train": {"output_dir": str(root / "run"), "epochs": 1, "batch_size": 16,
                  "early_stop_patience": 0, "num_threads": torch.get_num_threads()},
    }
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    cfg = load_config(DistillConfig, path)
    return train(cfg)


def bench_samples(checkpoint: Path, k: int) -> list[Any]:
    """``k`` samples of the checkpoint's own data (test split first), cycled if fewer."""
    from eval.data import load_data
    from eval.options import run_config

    ds = load_data(run_config(checkpoint).data, "checkpoint", checkpoint)
    order = ["test", *[s for s in ds.splits if s != "test"]]
    samples: list[Any] = []
    for split in order:
        if split in ds.splits:
            samples += ds.samples(split)
        if len(samples) >= k:
            break
    if not samples:
        raise SystemExit(f"the data of {checkpoint} has no samples")
    return [samples[i % len(samples)] for i in range(k)]


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _timer(device: torch.device) -> Callable[[Callable[[], Any]], float]:
    def run(fn: Callable[[], Any]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - t0) * 1000.0

    return run


def measure(checkpoint: Path, *, runs: int = 200, warmup: int = 20, batch_runs: int = 20,
            batch_size: int = 64, device: str = "cpu") -> dict[str, Any]:
    """Load, export, check and time both models; return the figures."""
    from students.checkpoint import load_checkpoint

    dev = torch.device(device)
    adapter, _, meta = load_checkpoint(checkpoint, device=dev)
    if meta.student.get("text_mode") != "lora":
        raise SystemExit(f"{checkpoint} has text_mode={meta.student.get('text_mode')!r}: "
                         "there is no adapter to merge; pass a LoRA checkpoint")
    with tempfile.TemporaryDirectory() as tmp:
        export_model(adapter, Path(tmp) / "export")
        merged = load_exported(Path(tmp) / "export", device=dev)
    collate = Collator.for_model(adapter)
    samples = bench_samples(checkpoint, max(batch_size, 1))
    big = _to(collate(samples[:batch_size]), dev)
    singles = [_to(collate([s]), dev) for s in samples]
    models = {"adapter": adapter, "merged": merged}
    with torch.inference_mode():
        outs = {name: m(big).pred.float() for name, m in models.items()}
        max_diff = float((outs["adapter"] - outs["merged"]).abs().max())
        timer = _timer(dev)
        for i in range(warmup):
            for m in models.values():
                m(singles[i % len(singles)])
        lat: dict[str, list[float]] = {name: [] for name in models}
        for i in range(runs):
            names = list(models) if i % 2 == 0 else list(models)[::-1]
            for name in names:
                b = singles[i % len(singles)]
                lat[name].append(timer(lambda m=models[name], b=b: m(b)))
        for _ in range(max(1, warmup // 10)):
            for m in models.values():
                m(big)
        per_batch: dict[str, list[float]] = {name: [] for name in models}
        for i in range(batch_runs):
            names = list(models) if i % 2 == 0 else list(models)[::-1]
            for name in names:
                per_batch[name].append(timer(lambda m=models[name]: m(big)))
    res: dict[str, Any] = {"checkpoint": str(checkpoint), "device": str(dev),
                           "threads": torch.get_num_threads(), "runs": runs,
                           "batch_runs": batch_runs, "batch_size": batch_size,
                           "max_abs_diff": max_diff, "models": {}}
    for name in models:
        ms = statistics.median(per_batch[name])
        res["models"][name] = {
            "b1_p50_ms": float(np.percentile(lat[name], 50)),
            "b1_p95_ms": float(np.percentile(lat[name], 95)),
            "batch_ms": ms,
            "samples_per_s": batch_size / (ms / 1000.0),
        }
    a, m = res["models"]["adapter"], res["models"]["merged"]
    res["ratio"] = {k: m[k] / a[k] for k in a}
    return res


def format_table(res: dict[str, Any]) -> str:
    bs = res["batch_size"]
    lines = [f"{'':15}{'b1 p50 ms':>11}{'b1 p95 ms':>11}{f'b{bs} ms':>11}{f'b{bs} samples/s':>16}"]
    for name, r in res["models"].items():
        lines.append(f"{name:15}{r['b1_p50_ms']:>11.2f}{r['b1_p95_ms']:>11.2f}"
                     f"{r['batch_ms']:>11.2f}{r['samples_per_s']:>16.1f}")
    r = res["ratio"]
    lines.append(f"{'merged/adapter':15}{r['b1_p50_ms']:>11.3f}{r['b1_p95_ms']:>11.3f}"
                 f"{r['batch_ms']:>11.3f}{r['samples_per_s']:>16.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", nargs="?", default="",
                    help="a LoRA checkpoint (default: train a tiny MiniLM + LoRA student)")
    ap.add_argument("--runs", type=int, default=200, help="timed batch-1 calls per model")
    ap.add_argument("--warmup", type=int, default=20, help="untimed batch-1 calls per model")
    ap.add_argument("--batch-runs", type=int, default=20, help="timed batch calls per model")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.checkpoint:
            ck = Path(args.checkpoint)
            if (ck / "checkpoint-best").is_dir():
                ck = ck / "checkpoint-best"
        else:
            t0 = time.perf_counter()
            ck = build_default_checkpoint(Path(tmp))
            print(f"trained a tiny MiniLM + LoRA student in {time.perf_counter() - t0:.1f}s: {ck}")
        res = measure(ck, runs=args.runs, warmup=args.warmup, batch_runs=args.batch_runs,
                      batch_size=args.batch_size, device=args.device)
    print(f"checkpoint {res['checkpoint']} on {res['device']} ({res['threads']} threads, "
          f"{loadavg()}, {os.cpu_count()} CPUs); {res['runs']} batch-1 calls and "
          f"{res['batch_runs']} batch-{res['batch_size']} calls per model")
    print(f"max |adapter - merged| on the batch: {res['max_abs_diff']:.2e}")
    print(format_table(res))
    r = res["ratio"]
    print(f"merged/adapter: batch-1 p50 {r['b1_p50_ms']:.3f}, batch-{res['batch_size']} "
          f"time {r['batch_ms']:.3f} (throughput x{r['samples_per_s']:.3f})")
    return res


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
