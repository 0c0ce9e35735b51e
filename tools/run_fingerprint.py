"""A run's numbers, to check that a change of structure changed no result.

    python tools/run_fingerprint.py run RECIPE OUT.npz [section.key=value ...]
    python tools/run_fingerprint.py compare BEFORE.npz AFTER.npz

``run`` trains RECIPE for 2 epochs (no early stop; override with ``train.epochs=N``) into
``OUT/`` beside OUT.npz, then stores every epoch's train losses and validation metrics and
the selected checkpoint's predictions on the valid and test splits. ``compare`` prints the
largest absolute differences between two such files and exits 1 when they differ by more
than ``--tol`` (1e-6). Run both sides with the same recipe, overrides and thread count.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def run(recipe: str, out_npz: Path, overrides: list[str]) -> None:
    from students.checkpoint import load_checkpoint
    from students.trainer import train

    try:
        from students.inference import predict
    except ImportError:  # a tree from before predict had its own module (main at 6aa3201)
        from students.trainer import predict
    from workbench.config import DistillConfig, load_config
    from workbench.data import load_dataset

    run_dir = out_npz.with_suffix("")
    cfg = load_config(DistillConfig, recipe, ["train.epochs=2", "train.early_stop_patience=0",
                                              f"train.output_dir={run_dir}",
                                              "train.overwrite=true", *overrides])
    best = train(cfg)
    history = json.loads((run_dir / "last" / "trainer_state.json").read_text())["history"]
    model, _, _ = load_checkpoint(best, device="cpu")
    ds = load_dataset(cfg.data)
    values = {f"{h['epoch']}:{k}": v for h in history for k, v in h["valid"].items()}
    values.update({f"{h['epoch']}:train_{k}": v for h in history for k, v in h["train"].items()})
    preds = {f"pred_{s}": predict(model, ds.samples(s), cfg.eval.batch_size)
             for s in ("valid", "test") if s in ds.splits}
    np.savez(out_npz, keys=np.array(list(values)), values=np.array(list(values.values())),
             **preds)
    print(f"wrote {out_npz}: {len(values)} values, "
          + ", ".join(f"{k} {len(v)}" for k, v in preds.items()))


def compare(a_path: Path, b_path: Path, tol: float) -> int:
    a, b = np.load(a_path), np.load(b_path)
    if list(a["keys"]) != list(b["keys"]):
        print(f"different values recorded: {sorted(set(a['keys']) ^ set(b['keys']))}")
        return 1
    worst = float(np.abs(a["values"] - b["values"]).max())
    print(f"{len(a['keys'])} losses and metrics: max |d| = {worst:.3g}")
    for k in sorted(k for k in a.files if k.startswith("pred_")):
        d = float(np.abs(a[k] - b[k]).max())
        worst = max(worst, d)
        print(f"{k[5:]} predictions ({len(a[k])}): max |d| = {d:.3g}")
    return 0 if worst <= tol else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("recipe")
    r.add_argument("out", type=Path)
    r.add_argument("overrides", nargs="*")
    c = sub.add_parser("compare")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    c.add_argument("--tol", type=float, default=1e-6)
    args = ap.parse_args()
    if args.cmd == "run":
        run(args.recipe, args.out, args.overrides)
        return 0
    return compare(args.before, args.after, args.tol)


if __name__ == "__main__":
    sys.exit(main())
