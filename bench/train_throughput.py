"""Training throughput of the shipped MOSI recipe: samples/s per stage.

Trains ``configs/distill/mosi_text_audio.yaml`` (stage 1: the prompted network reading
the teacher's descriptions; stage 2: the student, with soft labels and the frozen prompted
network's targets) for --epochs epochs (no early stop) into a temporary directory, and
prints per stage and epoch the train samples, the epoch's seconds (optimisation plus
validation, as the trainer records them) and samples/s. The shipped recipe needs its
teacher cache (``--cache DIR``, the recipe's ``signals.cache_dir``); without one the bench
trains the gold-label recipe (``mosi_text_audio_gold.yaml``: the student stage alone, same
student) and says so. Thread count as the recipe sets it (``train.num_threads: 1``).

    python bench/train_throughput.py [--cache DIR] [--epochs 1] [override ...]
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
            "stages": stage_figures(run_dir, n_train)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default="", help="the shipped recipe's teacher cache directory")
    ap.add_argument("--epochs", type=int, default=1, help="epochs per stage")
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
    print(f"{res['recipe']}: {res['n_train']} train samples, {res['threads']} thread(s), "
          f"{loadavg()}; total {res['wall_s']:.0f}s")
    for stage, epochs in res["stages"].items():
        for e in epochs:
            print(f"  {stage:9} epoch {e['epoch']}: {e['seconds']:.1f}s (train + validation) "
                  f"-> {e['samples_per_s']:.1f} train samples/s")
    return res


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
