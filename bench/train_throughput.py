"""Training throughput of the shipped MOSI recipe: samples/s per stage.

Trains ``configs/distill/mosi_text_audio.yaml`` (stage 1: the prompted network reading
the teacher's descriptions; stage 2: the student, with soft labels and the frozen prompted
network's targets) for --epochs epochs (no early stop) into a temporary directory, and
prints per stage and epoch the train samples, the epoch's seconds (optimisation plus
validation, as the trainer records them) and samples/s. The shipped recipe needs its
teacher cache (``--cache DIR``, the recipe's ``signals.cache_dir``); without one the bench
trains the gold-label recipe (``mosi_text_audio_gold.yaml``: the student stage alone, same
student) and says so. Thread count as the recipe sets it (``train.num_threads: 1``).

It also prints the padding of the first epoch's training batches and of the validation
batches (real / padded text tokens, :func:`students.batching.padding_report`), as the
run's sampler cuts them. With ``--batch-tokens N`` it trains twice in one run, as the
recipe says and then with ``train.group_by_length=true train.batch_tokens=N``, and prints
the ratio of their samples/s (issue 26's goal: >= 1.4).

    python bench/train_throughput.py [--cache DIR] [--epochs 1] [--batch-tokens N] [override ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from common import MOSI_DIR, REPO, loadavg

SHIPPED = REPO / "configs/distill/mosi_text_audio.yaml"
GOLD = REPO / "configs/distill/mosi_text_audio_gold.yaml"


def stage_figures(run_dir: Path, n_train: int) -> dict[str, list[dict[str, float]]]:
    """Per stage (``prompted``, ``student``), per epoch: seconds and samples/s."""
    from students.rundir import LAST_DIR, PROMPTED_DIR, STATE_FILE

    out: dict[str, list[dict[str, float]]] = {}
    for name, d in (("prompted", run_dir / PROMPTED_DIR), ("student", run_dir)):
        state = d / LAST_DIR / STATE_FILE
        if not state.is_file():
            continue
        history = json.loads(state.read_text())["history"]
        out[name] = [{"epoch": h["epoch"], "seconds": h["seconds"],
                      "samples_per_s": n_train / h["seconds"]} for h in history]
    return out


def padding(cfg: Any) -> dict[str, dict[str, float]]:
    """Real / padded text tokens of epoch 0's training batches and of the validation
    batches, cut as the trainer cuts them for ``cfg``."""
    from transformers import AutoTokenizer

    from students.batching import EpochSampler, length_batches, padding_report
    from students.encoders import resolve_text_encoder
    from workbench.data import load_dataset

    tok = AutoTokenizer.from_pretrained(resolve_text_encoder(cfg.student.text_encoder))
    ds, tc = load_dataset(cfg.data), cfg.train

    def counts(split: str) -> list[int]:
        enc = tok([s.text or "" for s in ds.samples(split)], truncation=True,
                  max_length=cfg.student.max_text_len)
        return [len(ids) for ids in enc["input_ids"]]

    train, valid = counts("train"), counts("valid")
    sampler = EpochSampler(len(train), tc.seed, train if tc.group_by_length else None,
                           tc.batch_size, batch_tokens=tc.batch_tokens)
    return {"train": padding_report([[train[i] for i in b] for b in sampler.batches(0)]),
            "valid": padding_report([[valid[i] for i in b]
                                     for b in length_batches(valid, cfg.eval.batch_size)])}


def measure(cache: str, epochs: int, overrides: list[str], work: Path) -> dict[str, Any]:
    from students.trainer import train
    from workbench.config import DistillConfig, load_config
    from workbench.data import load_dataset

    recipe = SHIPPED if cache else GOLD
    run_dir = work / "run"
    cfg = load_config(DistillConfig, recipe, [
        f"train.epochs={epochs}", "train.early_stop_patience=0", f"train.output_dir={run_dir}",
        "train.overwrite=true", *([f"signals.cache_dir={cache}"] if cache else []),
        *([f"train.privileged.epochs={epochs}"] if cache else []), *overrides])
    n_train = load_dataset(cfg.data).num_rows("train")
    t0 = time.perf_counter()
    train(cfg)
    return {"recipe": str(recipe.relative_to(REPO)), "n_train": n_train,
            "threads": cfg.train.num_threads, "wall_s": time.perf_counter() - t0,
            "stages": stage_figures(run_dir, n_train), "padding": padding(cfg),
            "batch_tokens": cfg.train.batch_tokens}


def show(res: dict[str, Any]) -> None:
    print(f"{res['recipe']} (train.batch_tokens={res['batch_tokens']}): {res['n_train']} "
          f"train samples, {res['threads']} thread(s), {loadavg()}; total {res['wall_s']:.0f}s")
    for split, p in res["padding"].items():
        print(f"  {split} batches: {p['batches']} of {p['mean_batch']:.1f} samples, "
              f"{p['real_tokens']} real / {p['padded_tokens']} padded tokens = "
              f"{p['real_share']:.3f} real")
    for stage, epochs in res["stages"].items():
        for e in epochs:
            print(f"  {stage:9} epoch {e['epoch']}: {e['seconds']:.1f}s (train + validation) "
                  f"-> {e['samples_per_s']:.1f} train samples/s")


def mean_rate(res: dict[str, Any]) -> float:
    """Train samples/s of the student stage over all its epochs."""
    epochs = res["stages"]["student"]
    return res["n_train"] * len(epochs) / sum(e["seconds"] for e in epochs)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default="", help="the shipped recipe's teacher cache directory")
    ap.add_argument("--epochs", type=int, default=1, help="epochs per stage")
    ap.add_argument("--batch-tokens", type=int, default=0,
                    help="also train with this token budget and compare (0: only the recipe)")
    ap.add_argument("overrides", nargs="*", help="recipe overrides, e.g. train.batch_size=64")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    if not (MOSI_DIR / "mosi_label.csv").is_file():
        print(f"skipped: no MOSI data at {MOSI_DIR}")
        return {"skipped": True}
    if not args.cache:
        print(f"no --cache: the shipped recipe's two stages need its teacher cache; timing "
              f"the gold-label recipe ({GOLD.name}: the student stage alone)")
    with tempfile.TemporaryDirectory() as tmp:
        res = measure(args.cache, args.epochs, args.overrides, Path(tmp))
    show(res)
    if args.batch_tokens:
        with tempfile.TemporaryDirectory() as tmp:
            tok = measure(args.cache, args.epochs, [*args.overrides, "train.group_by_length=true",
                                                    f"train.batch_tokens={args.batch_tokens}"],
                          Path(tmp))
        show(tok)
        ratio = mean_rate(tok) / mean_rate(res)
        print(f"student stage: {mean_rate(tok):.1f} / {mean_rate(res):.1f} train samples/s = "
              f"x{ratio:.2f} with train.batch_tokens={args.batch_tokens} (goal >= 1.4): "
              f"{'met' if ratio >= 1.4 else 'NOT met'}")
        res = {"recipe": res, "batch_tokens": tok, "ratio": ratio}
    return res


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
