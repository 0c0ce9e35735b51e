"""The served ONNX student fused at the kernel level (issue 26, item 2), against the same
graph unfused and the bare MiniLM encoder in ONNX Runtime.

Exports a checkpoint with ``--onnx`` (``model.onnx``: the text encoder fused by ONNX
Runtime's transformer optimizer, :mod:`students.export.fuse`) and once more with
``export_onnx(fuse=False)`` (the same TorchScript graph unfused), then times, in one run with
the models alternating batch by batch (bench/student_speed.py's ``time_models``):

* ``ort-fused`` / ``ort-unfused``: the whole student through :class:`OrtStudent`;
* ``*-tok``: the same models on the same clips cut as ``predict()`` cuts them (sorted by
  token count; batch throughput only, ratio to ``ort-unfused-tok``);
* ``bare-ort``: MiniLM alone (dynamo export, as bench/student_speed.py writes it);
  ``bare-ort-fused``: MiniLM alone, TorchScript + eager attention + the same optimizer.

It prints the fused node counts, samples/s at ``--batch-size`` (clips in split order),
batch-1 p50 / p95, and the largest |prediction - checkpoint| of the fused model on the
split (goal <= 1e-4). Ratios are measured in one run; other jobs' load moves absolute
figures, so compare only within a run.

    .venv/bin/python bench/onnx_fusion.py --checkpoint RUN/checkpoint-best --threads 1
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import loadavg  # noqa: E402
from student_speed import bench_samples, export_bare, ort_session, time_models  # noqa: E402


def export_bare_fused(encoder: torch.nn.Module, keys: list[str], batch: dict[str, Any],
                      path: Path) -> dict[str, int]:
    """MiniLM alone, exported as model.onnx is (TorchScript, eager attention) and fused by
    ONNX Runtime's optimizer; returns the fused op counts."""
    from onnxruntime.transformers.optimizer import optimize_model
    from student_speed import BareEncoder

    from students.export.fuse import FUSED_OPS, op_counts

    encoder.set_attn_implementation("eager")
    raw = path.with_suffix(".raw.onnx")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings of transformers' mask code
        torch.onnx.export(BareEncoder(encoder, keys).eval(), tuple(batch[k] for k in keys),
                          str(raw), input_names=keys, output_names=["last_hidden_state"],
                          dynamic_axes={k: {0: "batch", 1: "tokens"} for k in keys},
                          opset_version=17, dynamo=False)
    cfg = encoder.config
    om = optimize_model(str(raw), model_type="bert", num_heads=cfg.num_attention_heads,
                        hidden_size=cfg.hidden_size, opt_level=0)
    om.save_model_to_file(str(path))
    return {k: v for k, v in op_counts(om.model).items() if k in FUSED_OPS}


def measure(checkpoint: Path, *, n: int, runs: int, threads: int, batch_size: int,
            work: Path) -> dict[str, Any]:
    import onnx

    from students.checkpoint import load_checkpoint
    from students.collate import Collator
    from students.export import export_checkpoint, export_onnx, load_exported, read_export
    from students.export.fuse import op_counts
    from students.inference import predict, predict_batches
    from students.serving import OrtStudent

    torch.set_num_threads(threads)
    fused_dir = export_checkpoint(checkpoint, work / "fused", onnx=True)
    plain_dir = work / "unfused"
    shutil.copytree(fused_dir, plain_dir)
    export_onnx(plain_dir, fuse=False)
    fusion = read_export(fused_dir)["onnx"]["fusion"]
    samples = bench_samples(checkpoint)[:n]
    fused, plain = OrtStudent(fused_dir, threads=threads), OrtStudent(plain_dir, threads=threads)
    model, _, _ = load_checkpoint(checkpoint)
    model.eval()
    want = predict(model, samples, batch_size)
    got = predict(fused, samples, batch_size)
    max_diff = float(np.abs(got - want).max())

    collate = Collator.for_model(fused)
    batches = [collate(samples[i:i + batch_size]) for i in range(0, len(samples), batch_size)]
    singles = [collate([s]) for s in samples[:max(runs, 1)]]
    enc_keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in fused.inputs]
    bare_path, bare_fused_path = work / "bare.onnx", work / "bare_fused.onnx"
    export_bare(load_exported(fused_dir, int8=False).text.model, enc_keys, batches[0], bare_path)
    bare_ops = export_bare_fused(load_exported(fused_dir, int8=False).text.model, enc_keys,
                                 batches[0], bare_fused_path)
    sessions = {"bare-ort": ort_session(bare_path, threads),
                "bare-ort-fused": ort_session(bare_fused_path, threads)}

    def bare(name: str) -> Any:
        sess = sessions[name]
        return lambda b: sess.run(None, {k: b[k].numpy() for k in enc_keys})

    models = {"ort-fused": fused.predict_batch, "ort-unfused": plain.predict_batch,
              "bare-ort": bare("bare-ort"), "bare-ort-fused": bare("bare-ort-fused")}
    # the same clips cut as predict() cuts them (students.inference.predict_batches:
    # sorted by token count, by token budget), batch throughput only
    tok_batches = [collate([samples[i] for i in idx])
                   for idx in predict_batches(fused, samples, batch_size)]
    tok_models = {f"{n}-tok": models[n] for n in ("ort-fused", "ort-unfused", "bare-ort-fused")}
    results = time_models(models, batches, singles, runs, tok_models, tok_batches)
    mask = [b["attention_mask"] for b in batches]
    tok_mask = [b["attention_mask"] for b in tok_batches]
    return {"results": results, "fusion": fusion, "bare_fused_ops": bare_ops,
            "max_abs_diff": max_diff, "clips": len(samples), "threads": threads,
            "batch_size": batch_size,
            "real_tokens": float(sum(m.sum() for m in mask)) / len(samples),
            "padded_tokens": float(sum(m.numel() for m in mask)) / len(samples),
            "tok_padded_tokens": float(sum(m.numel() for m in tok_mask)) / len(samples),
            "unfused_ops": dict(collections.Counter(
                n.op_type for n in onnx.load(str(plain_dir / "model.onnx")).graph.node)),
            "fused_ops": op_counts(onnx.load(str(fused_dir / "model.onnx")))}


def report(res: dict[str, Any]) -> str:
    r = res["results"]
    fused = res["fusion"]["fused"]
    lines = [f"clips {res['clips']}, threads {res['threads']}, batch {res['batch_size']}: "
             f"{res['real_tokens']:.1f} real / {res['padded_tokens']:.1f} padded tokens per "
             f"clip in split order, {res['tok_padded_tokens']:.1f} padded as predict() cuts "
             f"them (*-tok rows); {loadavg()}",
             "model.onnx fused: " + (", ".join(f"{v} {k}" for k, v in fused.items())
                                    or f"nothing ({res['fusion'].get('reason')})"),
             "bare MiniLM fused: " + ", ".join(f"{v} {k}" for k, v in res["bare_fused_ops"].items()),
             f"nodes: fused {sum(res['fused_ops'].values())}, "
             f"unfused {sum(res['unfused_ops'].values())}",
             f"{'':16}{'clips/s':>10}{'p50 ms':>9}{'p95 ms':>9}{'x unfused':>11}"
             f"{'p50 x bare-ort':>16}"]
    for name, m in r.items():
        if name.endswith("-tok"):
            lines.append(f"{name:16}{m['samples_per_s']:10.1f}{'':18}"
                         f"{m['samples_per_s'] / r['ort-unfused-tok']['samples_per_s']:11.2f}")
            continue
        lines.append(f"{name:16}{m['samples_per_s']:10.1f}{m['p50_ms']:9.2f}{m['p95_ms']:9.2f}"
                     f"{m['samples_per_s'] / r['ort-unfused']['samples_per_s']:11.2f}"
                     f"{m['p50_ms'] / r['bare-ort']['p50_ms']:16.2f}")
    d = res["max_abs_diff"]
    lines.append(f"fused vs checkpoint: max |pred diff| {d:.2e} (goal <= 1e-4: "
                 f"{'met' if d <= 1e-4 else 'NOT met'})")
    p50 = r["ort-fused"]["p50_ms"] / r["ort-unfused"]["p50_ms"]
    lines.append(f"fused b1 p50 = {p50:.2f} x unfused; b1 p50 = "
                 f"{r['ort-fused']['p50_ms'] / r['bare-ort']['p50_ms']:.2f} x bare-ort (goal <= 1)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--n", type=int, default=256, help="clips of the test split")
    ap.add_argument("--runs", type=int, default=100, help="single clips timed at batch 1")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        res = measure(args.checkpoint, n=args.n, runs=args.runs, threads=args.threads,
                      batch_size=args.batch_size, work=Path(tmp))
    print(report(res))
    return res


if __name__ == "__main__":
    main()
