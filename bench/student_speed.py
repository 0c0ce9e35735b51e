"""How fast the MOSI student serves, against the bare text encoder and the compute bound.

One checkpoint is exported (``students.export``: adapter merged, ``model.onnx``, int8) and
timed on the same pre-collated batches of MOSI test clips (tokenisation excluded; the
collated batch goes in, ``pred`` comes out), per thread count:

* ``adapter``: the checkpoint as trained (PEFT LoRA, unmerged) in PyTorch;
* ``merged``: the same model with its merged encoder, what ``predict`` runs;
* ``int8``: the export with dynamic int8 linear layers in PyTorch;
* ``ort``: ``model.onnx`` in ONNX Runtime; ``ort-int8``: ``model.int8.onnx``;
* ``bare-pt`` / ``bare-ort``: the MiniLM encoder alone (its forward to the last hidden
  state, no pooling, no fusion, no heads) in PyTorch and in ONNX Runtime: the peer a
  deployment would pick; ``bare-ort-split``: the same with the session setting the
  student's ONNX session uses (``students.export.fuse.DISABLED_OPTIMIZERS``: ORT's
  SkipLayerNormalization kernel is slower on CPU than the Add + LayerNormalization it
  fuses);
* ``merged-tok`` / ``ort-tok`` / ``bare-ort-tok``: the same models on the same clips cut
  the way ``predict`` now cuts them (``students.inference.predict_batches``: sorted by
  token count, batches up to ``batch_size`` x the mean count, cut where under 90 % of a
  batch would be real tokens); the padding of both batchings is printed (real / padded
  tokens).

Batch 64: samples/s over every batch of the N clips (sorted by length, the same batches
for every model, models alternating batch by batch). Batch 1: p50 / p95 latency over RUNS
single clips, models alternating call by call. Before timing, every path's predictions are
compared with the adapter's. The compute bound is the encoder's non-embedding FLOPs per
clip (2 x linear weights x tokens + attention scores) at the mean token count, against the
measured fp32 matmul rate of a (64 x mean tokens, 384) x (384, 1536) product (measured
between the rounds of batches, under the load they ran under; the median is used). Int8's
accuracy change is measured on the whole MOSI test split (non-0 Acc-2). Goals (issue 15):
best fp32 path >= bare-ort at batch 64; best fp32 batch-1 p50 <= 1.2 x bare-ort's; int8 >=
1.6 x its fp32 throughput with |delta non0 Acc-2| <= 0.5. Goals (issue 26): the best
token-batch path >= 1.6 x ``merged`` at batch 64 and >= 0.6 of the compute bound on real
tokens; best fp32 batch-1 p50 <= bare-ort's.

    python bench/student_speed.py [--checkpoint CKPT] [--n 192] [--runs 80]
        [--threads 1,2] [--train-epochs 1]

Without --checkpoint it uses runs/mosi_text_audio/checkpoint-best (the shipped recipe's
output), else runs/bench/mosi_student (trained once with the gold-label MOSI recipe for
--train-epochs epochs, about a minute an epoch on one idle thread); without the shared MOSI
data, a tiny synthetic student.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import MOSI_DIR, REPO, loadavg

from students.collate import Collator
from students.export.fuse import DISABLED_OPTIMIZERS

SHIPPED = REPO / "runs/mosi_text_audio/checkpoint-best"
BENCH_RUN = REPO / "runs/bench/mosi_student"
GOLD_RECIPE = REPO / "configs/distill/mosi_text_audio_gold.yaml"


def default_checkpoint(epochs: int, tmp: Path) -> Path:
    """The shipped recipe's checkpoint, else the bench's own MOSI student (trained once),
    else a tiny synthetic one (no MOSI here)."""
    from students.trainer import train
    from workbench.config import DistillConfig, load_config

    if (SHIPPED / "model.safetensors").is_file():
        return SHIPPED
    if (BENCH_RUN / "checkpoint-best" / "model.safetensors").is_file():
        return BENCH_RUN / "checkpoint-best"
    if (MOSI_DIR / "mosi_label.csv").is_file():
        t0 = time.perf_counter()
        cfg = load_config(DistillConfig, GOLD_RECIPE, [
            f"train.epochs={epochs}", f"train.output_dir={BENCH_RUN}", "train.overwrite=true"])
        best = train(cfg)
        print(f"trained the MOSI student (gold recipe, {epochs} epoch(s)) in "
              f"{time.perf_counter() - t0:.0f}s: {best}")
        return best
    return build_synthetic_checkpoint(tmp)


def build_synthetic_checkpoint(root: Path, n: int = 160) -> Path:
    """Without MOSI: the default student (MiniLM-L6 + LoRA) trained for one epoch on ``n``
    synthetic utterances (gold labels only)."""
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
    return train(load_config(DistillConfig, path))


def bench_samples(checkpoint: Path, split: str = "test") -> list[Any]:
    from eval.data import load_data
    from eval.options import run_config

    ds = load_data(run_config(checkpoint).data, "checkpoint", checkpoint)
    use = split if split in ds.splits and ds.num_rows(split) else ds.splits[0]
    return ds.samples(use)


class BareEncoder(torch.nn.Module):
    """The text encoder alone: token ids in, last hidden state out."""

    def __init__(self, encoder: torch.nn.Module, keys: list[str]) -> None:
        super().__init__()
        self.encoder = encoder
        self.keys = keys

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.encoder(**dict(zip(self.keys, tensors, strict=True))).last_hidden_state


def export_bare(encoder: torch.nn.Module, keys: list[str], batch: dict[str, Any],
                path: Path) -> None:
    from students.export import quiet_loggers

    wrapper = BareEncoder(encoder, keys).eval()
    auto = torch.export.Dim.AUTO
    with torch.no_grad(), quiet_loggers("onnxscript", "onnx_ir", "torch.onnx"):
        torch.onnx.export(wrapper, tuple(batch[k] for k in keys), str(path), input_names=keys,
                          output_names=["last_hidden_state"],
                          dynamic_shapes=(tuple({0: auto, 1: auto} for _ in keys),),
                          opset_version=18, dynamo=True, external_data=False, verbose=False)


def ort_session(path: Path, threads: int, disabled: list[str] | None = None) -> Any:
    """An ONNX Runtime session at ``threads`` threads, all graph optimizations but the
    ``disabled`` ones (the default: ORT's own defaults, as a deployment would run it)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=disabled or [])


def matmul_rate(rows: int, threads: int, reps: int = 20) -> float:
    """Measured fp32 GFLOP/s of a (rows, 384) x (384, 1536) product (MiniLM's FFN shape):
    the median of ``reps`` products."""
    torch.set_num_threads(threads)
    a, b = torch.randn(rows, 384), torch.randn(384, 1536)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * rows * 384 * 1536 / statistics.median(times) / 1e9


def encoder_flops(config: Any, tokens: float) -> float:
    """Non-embedding FLOPs of one clip of ``tokens`` tokens through a BERT-style encoder."""
    d, ff, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    linear = layers * (4 * d * d + 2 * d * ff)
    return 2 * linear * tokens + layers * 4 * d * tokens * tokens


def time_models(models: dict[str, Callable[[dict[str, Any]], Any]], batches: list[dict],
                singles: list[dict], runs: int,
                token_models: dict[str, Callable[[dict[str, Any]], Any]] | None = None,
                token_batches: list[dict] | None = None,
                probe: Callable[[], object] | None = None) -> dict[str, dict[str, float]]:
    """Samples/s of each model over ``batches`` (and of each of ``token_models`` over
    ``token_batches``: the same clips cut by token count), models alternating batch by
    batch; batch-1 p50 / p95 over ``runs`` single clips (``models`` only). ``probe`` (a
    measurement, e.g. of the compute bound's matmul rate, that keeps its own values) runs
    once per round of batches, under the same load as the models."""
    names = list(models)
    plan = [(n, models[n], batches) for n in names] + [
        (n, fn, token_batches or []) for n, fn in (token_models or {}).items()]
    n_big = sum(int(b["input_ids"].shape[0]) for b in batches)
    for _, fn, bs in plan:  # warm-up: allocator, kernels, session caches
        fn(bs[0])
        for s in singles[:3]:
            fn(s)
    big = {n: 0.0 for n, _, _ in plan}
    for i in range(max(len(bs) for _, _, bs in plan)):
        for n, fn, bs in (plan if i % 2 == 0 else plan[::-1]):
            if i < len(bs):
                t0 = time.perf_counter()
                fn(bs[i])
                big[n] += time.perf_counter() - t0
        if probe is not None:
            probe()
    lat: dict[str, list[float]] = {n: [] for n in names}
    for i in range(runs):
        s = singles[i % len(singles)]
        for n in (names if i % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            models[n](s)
            lat[n].append((time.perf_counter() - t0) * 1000)
    out = {n: {"samples_per_s": n_big / big[n], "p50_ms": float(np.percentile(lat[n], 50)),
               "p95_ms": float(np.percentile(lat[n], 95))} for n in names}
    for n in token_models or {}:
        out[n] = {"samples_per_s": n_big / big[n], "p50_ms": float("nan"),
                  "p95_ms": float("nan")}
    return out


def batch_padding(batches: list[dict]) -> dict[str, float]:
    """:func:`students.batching.padding_report` of collated batches."""
    from students.batching import padding_report

    return padding_report([b["attention_mask"].sum(1).tolist() for b in batches])


def measure(checkpoint: Path, *, n: int = 256, runs: int = 100, threads: tuple[int, ...] = (1, 2),
            batch_size: int = 64, work: Path) -> dict[str, Any]:
    from eval.export_check import measure_int8
    from students.checkpoint import load_checkpoint
    from students.export import batch_keys, export_model, export_onnx, load_exported
    from students.inference import predict_batches, to_device
    from students.serving import OrtStudent

    adapter, _, _ = load_checkpoint(checkpoint, device="cpu")
    adapter.eval()
    exp = work / "export"
    export_model(adapter, exp)
    export_onnx(exp)
    section = measure_int8(checkpoint, exp, split="test")
    fp32 = load_exported(exp, int8=False)
    int8 = load_exported(exp, int8=True)
    samples = bench_samples(checkpoint)
    pool = [samples[i % len(samples)] for i in range(max(n, batch_size))]
    pool.sort(key=lambda s: -len(s.text or ""))
    collate = Collator.for_model(adapter, inputs_only=True)
    batches = [collate(pool[i:i + batch_size]) for i in range(0, len(pool), batch_size)]
    # what predict() runs now: sorted by tokens, cut at batch_size x the mean token count
    # and where under 90 % of a batch would be real tokens
    tok_batches = [collate([pool[j] for j in idx])
                   for idx in predict_batches(adapter, pool, batch_size)]
    rng = np.random.default_rng(0)
    singles = [collate([pool[int(i)]]) for i in rng.permutation(len(pool))[:max(1, runs)]]
    real_tokens = float(np.mean(np.concatenate([b["attention_mask"].sum(1).numpy()
                                                for b in batches])))
    padded_tokens = float(np.mean([b["input_ids"].shape[1] for b in batches]))
    enc_keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in batches[0]]
    bare = fp32.text.model
    bare_path = work / "bare.onnx"
    export_bare(bare, enc_keys, batches[0], bare_path)
    merged = adapter

    def torch_fn(model: Any, serve_merged: bool = False) -> Callable[[dict], Any]:
        def run(b: dict) -> Any:
            model.serve_merged = serve_merged
            with torch.inference_mode():
                return model(b).pred
        return run

    def bare_fn(b: dict) -> Any:
        with torch.inference_mode():
            return bare(**{k: b[k] for k in enc_keys}).last_hidden_state

    # every path against the adapter, on one batch
    with torch.inference_mode():
        ref = adapter(batches[0]).pred.numpy()
        diffs = {"merged": torch_fn(merged, True)(batches[0]).numpy(),
                 "int8": int8(batches[0]).pred.numpy(),
                 "ort": OrtStudent(exp, threads=1).predict_batch(batches[0]),
                 "ort-int8": OrtStudent(exp, threads=1, int8=True).predict_batch(batches[0])}
    diffs = {k: float(np.abs(v - ref).max()) for k, v in diffs.items()}
    per_threads: dict[int, dict[str, dict[str, float]]] = {}
    rates: dict[int, float] = {}
    for t in threads:
        torch.set_num_threads(t)
        ort32, ort8 = OrtStudent(exp, threads=t), OrtStudent(exp, threads=t, int8=True)
        bare_sess = ort_session(bare_path, t)
        bare_split = ort_session(bare_path, t, DISABLED_OPTIMIZERS)

        def bare_ort(b: dict, sess: Any = bare_sess) -> Any:
            return sess.run(None, {k: b[k].numpy() for k in enc_keys})

        models = {"adapter": torch_fn(adapter), "merged": torch_fn(merged, True),
                  "int8": torch_fn(int8), "ort": ort32.predict_batch,
                  "ort-int8": ort8.predict_batch, "bare-pt": bare_fn, "bare-ort": bare_ort,
                  "bare-ort-split": functools.partial(bare_ort, sess=bare_split)}
        token_models = {"merged-tok": models["merged"], "ort-tok": models["ort"],
                        "bare-ort-tok": models["bare-ort"]}
        probes: list[float] = []  # the bound's matmul rate, measured between rounds of batches

        def probe(rows: int = int(batch_size * real_tokens), t: int = t, out: list = probes) -> None:
            out.append(matmul_rate(rows, t, reps=5))

        per_threads[t] = time_models(models, [to_device(b, torch.device("cpu"))
                                              for b in batches], singles, runs,
                                     token_models, tok_batches, probe=probe)
        rates[t] = statistics.median(probes)  # under the load the models' rounds ran under
    adapter.serve_merged = False
    flops = encoder_flops(bare.config, real_tokens)
    flops_padded = encoder_flops(bare.config, padded_tokens)
    return {"checkpoint": str(checkpoint), "n": len(pool), "runs": runs,
            "batch_size": batch_size, "real_tokens": real_tokens,
            "padded_tokens": padded_tokens, "flops": flops, "flops_padded": flops_padded,
            "padding": {"fixed": batch_padding(batches), "tok": batch_padding(tok_batches)},
            "rates_gflops": rates, "results": per_threads, "max_abs_diff": diffs,
            "int8_accuracy": section["accuracy"], "ort_int8_accuracy": section["onnx_accuracy"],
            "batch_keys": batch_keys(fp32)}


FP32 = ("adapter", "merged", "ort")


def goals(res: dict[str, Any], t: int) -> list[str]:
    r = res["results"][t]
    best = max(FP32, key=lambda k: r[k]["samples_per_s"])
    fast1 = min(FP32, key=lambda k: r[k]["p50_ms"])
    out = []
    ratio = r[best]["samples_per_s"] / r["bare-ort"]["samples_per_s"]
    out.append(f"best fp32 at b{res['batch_size']}: {best} {r[best]['samples_per_s']:.1f}/s = "
               f"{ratio:.2f} x bare-ort (goal >= 1): {'met' if ratio >= 1 else 'NOT met'}")
    ratio = r[fast1]["p50_ms"] / r["bare-ort"]["p50_ms"]
    out.append(f"best fp32 b1 p50: {fast1} {r[fast1]['p50_ms']:.2f} ms = {ratio:.2f} x bare-ort "
               f"(goal <= 1.2): {'met' if ratio <= 1.2 else 'NOT met'}")
    tok = max(("merged-tok", "ort-tok"), key=lambda k: r[k]["samples_per_s"])
    bound = res["rates_gflops"][t] * 1e9 / res["flops"]
    sp = r[tok]["samples_per_s"] / r["merged"]["samples_per_s"]
    out.append(f"token batches (issue 26): {tok} {r[tok]['samples_per_s']:.1f}/s = x{sp:.2f} "
               f"the merged path at b{res['batch_size']} (goal >= 1.6): "
               f"{'met' if sp >= 1.6 else 'NOT met'}; "
               f"{r[tok]['samples_per_s'] / bound:.2f} of the compute bound on real tokens "
               f"(goal >= 0.6): {'met' if r[tok]['samples_per_s'] >= 0.6 * bound else 'NOT met'}")
    ratio = r[fast1]["p50_ms"] / r["bare-ort"]["p50_ms"]
    split = r[fast1]["p50_ms"] / r["bare-ort-split"]["p50_ms"]
    out.append(f"b1 p50 (issue 26): {fast1} {r[fast1]['p50_ms']:.2f} ms = {ratio:.2f} x bare-ort "
               f"(goal <= 1): {'met' if ratio <= 1 else 'NOT met'}; {split:.2f} x bare-ort-split "
               "(the bare encoder with the student's session setting: no SkipLayerNorm fusion)")
    for q, base, acc in (("int8", "merged", res["int8_accuracy"]),
                         ("ort-int8", "ort", res["ort_int8_accuracy"])):
        sp = r[q]["samples_per_s"] / r[base]["samples_per_s"]
        d = 100 * acc["delta"].get("acc2_non0", float("nan"))
        ok = sp >= 1.6 and abs(d) <= 0.5
        out.append(f"{q} / {base} at b{res['batch_size']}: x{sp:.2f}, non0 Acc-2 "
                   f"{100 * acc['float32'].get('acc2_non0', float('nan')):.2f} -> "
                   f"{100 * acc['int8'].get('acc2_non0', float('nan')):.2f} (delta {d:+.2f} "
                   f"on {acc['samples']} test clips) (goal x1.6, |delta| <= 0.5): "
                   f"{'met' if ok else 'NOT met'}")
    return out


def report(res: dict[str, Any]) -> str:
    bs = res["batch_size"]
    lines = [f"checkpoint {res['checkpoint']}; {res['n']} clips, {res['runs']} batch-1 calls, "
             f"{loadavg()}, {os.cpu_count()} CPUs",
             f"tokens per clip: {res['real_tokens']:.1f} real, {res['padded_tokens']:.1f} "
             f"padded (batch {bs}); encoder non-embedding FLOPs per clip "
             f"{res['flops'] / 1e6:.1f} M",
             *(f"padding, {name}: {p['batches']} batches of {p['mean_batch']:.1f} clips, "
               f"{p['real_tokens']} real / {p['padded_tokens']} padded tokens = "
               f"{p['real_share']:.3f} real"
               for name, p in (("fixed b" + str(bs) + " (sorted)", res["padding"]["fixed"]),
                               ("token batches (*-tok)", res["padding"]["tok"]))),
             "max |path - adapter| on a batch: " + ", ".join(
                 f"{k} {v:.1e}" for k, v in res["max_abs_diff"].items())]
    for t, r in res["results"].items():
        bound = res["rates_gflops"][t] * 1e9 / res["flops"]
        lines.append(f"-- {t} thread(s): matmul {res['rates_gflops'][t]:.1f} GFLOP/s -> "
                     f"compute bound {bound:.0f} clips/s")
        lines.append(f"{'':13}{f'b{bs} clips/s':>14}{'x bare-ort':>12}{'x bound':>9}"
                     f"{'b1 p50 ms':>11}{'b1 p95 ms':>11}")
        ref = r["bare-ort"]
        for name, m in r.items():
            lines.append(f"{name:13}{m['samples_per_s']:>14.1f}"
                         f"{m['samples_per_s'] / ref['samples_per_s']:>12.2f}"
                         f"{m['samples_per_s'] / bound:>9.2f}{m['p50_ms']:>11.2f}"
                         f"{m['p95_ms']:>11.2f}")
        lines += ["   " + g for g in goals(res, t)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="", help="a student checkpoint (default: see above)")
    ap.add_argument("--n", type=int, default=192, help="clips timed at batch 64")
    ap.add_argument("--runs", type=int, default=80, help="timed batch-1 calls per path")
    ap.add_argument("--threads", default="1,2", help="thread counts, comma separated")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--train-epochs", type=int, default=1,
                    help="epochs for the bench's own MOSI student when none exists")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        ck = Path(args.checkpoint) if args.checkpoint else default_checkpoint(
            args.train_epochs, Path(tmp))
        if (ck / "checkpoint-best").is_dir():
            ck = ck / "checkpoint-best"
        res = measure(ck, n=args.n, runs=args.runs, batch_size=args.batch_size,
                      threads=tuple(int(t) for t in args.threads.split(",")), work=Path(tmp))
    print(report(res))
    return res


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
