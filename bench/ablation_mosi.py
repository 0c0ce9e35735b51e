"""The MOSI ablation: every method of the workbench as one row, 3 seeds each.

Each variant is the recipe ``configs/distill/mosi_text_audio.yaml`` (or the gold-label
one) plus overrides, trained with ``accelerate launch distill.py`` on the standard split
(text + audio), then evaluated on the test split by ``workbench eval`` with the LNLN
sweep (rates 0..0.9; a run's masks are drawn with its own training seed, so the spread
over seeds covers both the training and the masking noise). The table gives, per
variant, the mean ± std over training seeds of non0 Acc-2, non0 F1, Acc-7, MAE, Corr,
the average over missing rates of non0 Acc-2 and MAE, and the training wall time.

Rows: the teacher ladder is cumulative (gold -> + soft labels -> + prompted network ->
+ quality weights). Each method row adds one method to "+ soft-label KD" (one training
stage, so the method's effect is not mixed with the prompted network's); enhancement
needs samples with a missing modality to learn from, so it comes with LNLN
missing-modality training, which has its own row; "all together" is quality weights +
prompted network + every method.

Resumable: a finished run is not trained again (its wall time is kept in
``train_time.json``) and a run's evaluation is reused while it is newer than its
checkpoint, so the script can be stopped and rerun.

    python bench/ablation_mosi.py --cache /path/to/teacher_cache/mosi [--runs runs/ablation]
        [--seeds 1111,1112,1113] [--variants baseline,soft,...] [--augment-data DIR]
        [--list] [--table-only] [--no-teacher] [--set KEY=VALUE ...]

``--no-teacher`` trains every row on the gold-label recipe without a teacher cache (the
"+ soft-label KD" row then equals the baseline): the method rows' differences still pair
seed by seed against it, where no MOSI teacher cache exists. The CyIN row and its
reference are also evaluated with CyIN's protocol (fixed subsets, dataset-level missing
rates and instance-level missing probabilities 0.1..0.7), tabulated after the others.
``--set`` adds overrides to every row (a reduced run, e.g. ``--set train.epochs=4``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import run_finished

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "configs/distill/mosi_text_audio.yaml"
GOLD = "configs/distill/mosi_text_audio_gold.yaml"
SOFT = ["train.privileged.enabled=false", "train.weighting.enabled=false"]

# name -> (label, recipe, overrides); "{aug}" is replaced by --augment-data
VARIANTS: dict[str, tuple[str, str, list[str]]] = {
    "baseline": ("baseline (gold labels)", GOLD, []),
    "soft": ("+ soft-label KD", RECIPE, SOFT),
    "prompted": ("+ prompted-network KD", RECIPE, ["train.weighting.enabled=false"]),
    "quality": ("+ quality weights", RECIPE, []),
    "augment": ("soft + paraphrase augmentation", RECIPE,
                [*SOFT, "train.augment.data={aug}"]),
    "msmix": ("soft + MS-Mix", RECIPE, [*SOFT, "train.msmix.enabled=true"]),
    "cpsl": ("soft + CP/SL", RECIPE, [*SOFT, "train.conflict.enabled=true"]),
    "missing": ("soft + missing-modality training", RECIPE,
                [*SOFT, "train.missing.enabled=true"]),
    # enhancement learns its gate only from samples with a missing / masked modality
    "enhance": ("soft + missing training + enhancement", RECIPE,
                [*SOFT, "train.missing.enabled=true", "student.enhance.enabled=true"]),
    # the architecture methods (each a student switch, off by default)
    "dashfusion": ("soft + DashFusion", RECIPE, [*SOFT, "student.dashfusion.enabled=true"]),
    "cyin": ("soft + CyIN", RECIPE, [*SOFT, "student.cyin.enabled=true"]),
    # MOSI declares no domains: the videos hashed into 4 groups are the domains
    "midg": ("soft + MIDG", RECIPE, [*SOFT, "student.midg.enabled=true",
                                     "student.midg.adapter=true", "data.domain=source:4"]),
    "all": ("all together", RECIPE,
            ["train.augment.data={aug}", "train.msmix.enabled=true", "train.conflict.enabled=true",
             "train.missing.enabled=true", "student.enhance.enabled=true"]),
}
# what each row is compared with, seed by seed, in the paired table: the rung below it on
# the teacher ladder, "+ soft-label KD" for a single method, missing-modality training for
# enhancement, and the shipped recipe (quality weights) for "all together"
REFERENCE = {"soft": "baseline", "prompted": "soft", "quality": "prompted", "augment": "soft",
             "msmix": "soft", "cpsl": "soft", "missing": "soft", "enhance": "missing",
             "all": "quality", "dashfusion": "soft", "cyin": "soft",
             "midg": "soft"}
# rows evaluated with CyIN's protocol too (the CyIN row and its reference)
CYIN_ROWS = ("cyin", "soft")
CYIN_VALUES = "0.1:0.7:0.1"
CYIN_SUBSETS = [("t", "text only"), ("a", "audio only"), ("t+a", "text + audio")]
METRICS = [("acc2_non0", "non0 Acc-2", 100), ("f1_non0", "non0 F1", 100),
           ("acc7", "Acc-7", 100), ("mae", "MAE", 1), ("corr", "Corr", 1)]
LNLN = [("acc2_non0", "LNLN avg Acc-2", 100), ("mae", "LNLN avg MAE", 1)]


def run_dir(runs: Path, variant: str, seed: int) -> Path:
    return runs / variant / f"seed{seed}"


def epoch_seconds(out: Path) -> float:
    """Training time as the sum of the epochs' wall times of every stage (what a resumed
    run spent in all its attempts, without start-up)."""
    total = 0.0
    for state in (out / "last" / "trainer_state.json",
                  out / "prompted" / "last" / "trainer_state.json"):
        if state.is_file():
            total += sum(e.get("seconds", 0.0) for e in json.loads(state.read_text())["history"])
    return total


def train(variant: str, seed: int, out: Path, cache: str, aug: str,
          no_teacher: bool = False, extra: list[str] | None = None) -> dict:
    _, recipe, overrides = VARIANTS[variant]
    overrides = [*overrides, *(extra or [])]
    if no_teacher:
        recipe, cache = GOLD, ""
    if "{aug}" in " ".join(overrides) and not aug:
        raise SystemExit(f"variant {variant!r} needs --augment-data (a dataset written by "
                         "`workbench data augment`)")
    overrides = [o.replace("{aug}", aug) for o in overrides]
    timing = out / "train_time.json"
    if run_finished(out) and timing.is_file():
        return json.loads(timing.read_text())
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           "configs/accelerate/cpu.yaml", "distill.py", "--config", recipe,
           f"signals.cache_dir={cache}", f"train.output_dir={out}", f"train.seed={seed}",
           *overrides]
    if (out / "config.yaml").is_file():
        cmd.append("--resume")
    print(f"== {variant} seed {seed}: {' '.join(cmd[3:])}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(out / "train.log", "a") as logf:
        rc = subprocess.call(cmd, cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"{variant} seed {seed} failed (exit {rc}); see {out / 'train.log'}")
    rec = {"seconds": seconds, "epoch_seconds": epoch_seconds(out), "load": os.getloadavg()[0],
           "max_child_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}
    timing.write_text(json.dumps(rec, indent=2))
    return rec


def evaluate(out: Path, seed: int, cyin: bool = False) -> dict:
    ckpt = out / "checkpoint-best"
    res = out / "eval-test" / "results.json"
    results = None
    if res.is_file() and res.stat().st_mtime > (ckpt / "selection.json").stat().st_mtime:
        results = json.loads(res.read_text())
    if results is None or results["meta"].get("seeds") != [seed] or (
            cyin and "cyin_protocol" not in results):
        cmd = [str(Path(sys.executable).parent / "workbench"), "eval", str(ckpt), "--split",
               "test", "--missing-rates", "0:0.9:0.1", "--seeds", str(seed), "--no-cost",
               "--out", str(out / "eval-test")]
        cmd += (["--dataset-missing-rates", CYIN_VALUES, "--instance-missing-probs", CYIN_VALUES]
                if cyin else ["--missing-modality", "none"])
        with open(out / "eval.log", "w") as logf:
            rc = subprocess.call(cmd, cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT)
        if rc != 0:
            raise SystemExit(f"evaluating {ckpt} failed (exit {rc}); see {out / 'eval.log'}")
        results = json.loads(res.read_text())
    return results


def cell(values: list[float], scale: float, digits: int, signed: bool = False) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values) * scale
    text = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    if len(values) < 2:
        return text
    return f"{text} ± {statistics.stdev(values) * scale:.{digits}f}"


Run = tuple[int, dict, dict]  # (training seed, results.json, train_time.json)


def complete_metric(res: dict, key: str) -> float:
    return res["leaderboard"]["complete"][key]


def lnln_average(res: dict, key: str) -> float:
    return next(iter(res["robustness"].values()))["average"][key]


def table(rows: dict[str, list[Run]]) -> tuple[str, str]:
    head = ["variant", "seeds"] + [m[1] for m in METRICS] + [m[1] for m in LNLN] + ["train min (epochs)"]
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    csv = [",".join(head)]
    for variant, runs in rows.items():
        if not runs:
            continue
        cells = [VARIANTS[variant][0], str(len(runs))]
        for key, _, scale in METRICS:
            cells.append(cell([complete_metric(r, key) for _, r, _ in runs], scale,
                              1 if scale == 100 else 3))
        for key, _, scale in LNLN:
            cells.append(cell([lnln_average(r, key) for _, r, _ in runs], scale,
                              1 if scale == 100 else 3))
        cells.append(cell([t["epoch_seconds"] / 60 for _, _, t in runs], 1, 1))
        md.append("| " + " | ".join(cells) + " |")
        csv.append(",".join(f'"{c}"' for c in cells))
    return "\n".join(md) + "\n", "\n".join(csv) + "\n"


PAIRED = [("acc2_non0", "Δ non0 Acc-2", 100, complete_metric),
          ("mae", "Δ MAE", 1, complete_metric), ("corr", "Δ Corr", 1, complete_metric),
          ("acc2_non0", "Δ LNLN avg Acc-2", 100, lnln_average),
          ("mae", "Δ LNLN avg MAE", 1, lnln_average)]


def paired_table(rows: dict[str, list[Run]]) -> str:
    """Each variant minus its reference row (``REFERENCE``), seed by seed: the seed's
    shared initialisation and data order cancel, so a difference is easier to see than
    in the two rows' means. Mean ± std over the seeds both rows have."""
    head = ["variant", "against", "seeds"] + [p[1] for p in PAIRED]
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant, runs in rows.items():
        ref = REFERENCE.get(variant)
        if ref is None or ref not in rows:
            continue
        ref_by_seed = {seed: res for seed, res, _ in rows[ref]}
        pairs = [(res, ref_by_seed[seed]) for seed, res, _ in runs if seed in ref_by_seed]
        if not pairs:
            continue
        cells = [VARIANTS[variant][0], VARIANTS[ref][0], str(len(pairs))]
        for key, _, scale, read in PAIRED:
            cells.append(cell([read(a, key) - read(b, key) for a, b in pairs], scale,
                              1 if scale == 100 else 3, signed=True))
        md.append("| " + " | ".join(cells) + " |")
    return "\n".join(md) + "\n"


def cyin_table(rows: dict[str, list[Run]]) -> str:
    """CyIN's protocol for the rows that have it: non0 Acc-2 / MAE per fixed subset of
    modalities, and averaged over the dataset-level missing rates and over the
    instance-level missing probabilities; mean ± std over training seeds."""
    head = ["variant", "seeds"] + [f"{name} Acc-2 / MAE" for _, name in CYIN_SUBSETS] + [
        "dataset-rate avg Acc-2 / MAE", "instance-prob avg Acc-2 / MAE"]
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant, runs in rows.items():
        have = [r for _, r, _ in runs if "cyin_protocol" in r]
        if not have:
            continue
        cells = [VARIANTS[variant][0], str(len(have))]
        for key, _ in CYIN_SUBSETS:
            fixed = [r["cyin_protocol"]["fixed_subsets"][key] for r in have]
            cells.append(cell([f["acc2_non0"] for f in fixed], 100, 1) + " / "
                         + cell([f["mae"] for f in fixed], 1, 3))
        for kind in ("dataset_rate", "instance_prob"):
            avg = [r["cyin_protocol"][kind]["average"] for r in have]
            cells.append(cell([a["acc2_non0"] for a in avg], 100, 1) + " / "
                         + cell([a["mae"] for a in avg], 1, 3))
        md.append("| " + " | ".join(cells) + " |")
    return "\n".join(md) + "\n" if len(md) > 2 else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default="runs/teacher_cache/mosi", help="MOSI teacher cache")
    ap.add_argument("--runs", default="runs/ablation", type=Path)
    ap.add_argument("--seeds", default="1111,1112,1113")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--augment-data", default="", help="dataset from `workbench data augment`")
    ap.add_argument("--no-teacher", action="store_true",
                    help="train every row on the gold-label recipe (no teacher cache)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="an override added to every row (repeatable)")
    ap.add_argument("--list", action="store_true", help="print the runs and exit")
    ap.add_argument("--table-only", action="store_true",
                    help="only tabulate the runs that are finished and evaluated")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    if args.list:
        for v in variants:
            print(f"{v:10s} {VARIANTS[v][0]:34s} {VARIANTS[v][1]} {' '.join(VARIANTS[v][2])}")
        return
    rows: dict[str, list[Run]] = {v: [] for v in variants}
    for seed in seeds:  # seed-major: a stopped run still leaves every variant with a seed
        for v in variants:
            out = args.runs / v / f"seed{seed}"
            if args.table_only:
                res, timing = out / "eval-test" / "results.json", out / "train_time.json"
                if run_finished(out) and res.is_file() and timing.is_file():
                    rec = {**json.loads(timing.read_text()), "epoch_seconds": epoch_seconds(out)}
                    rows[v].append((seed, json.loads(res.read_text()), rec))
                continue
            timing = train(v, seed, out, args.cache, args.augment_data, args.no_teacher,
                           args.set)
            timing["epoch_seconds"] = epoch_seconds(out)
            rows[v].append((seed, evaluate(out, seed, cyin=v in CYIN_ROWS), timing))
            md, _ = table(rows)
            print(md, flush=True)
    md, csv = table(rows)
    md += "\nPaired differences (same training seed):\n\n" + paired_table(rows)
    cy = cyin_table(rows)
    if cy:
        md += f"\nCyIN's protocol (rates / probabilities {CYIN_VALUES}):\n\n" + cy
    args.runs.mkdir(parents=True, exist_ok=True)
    (args.runs / "ablation.md").write_text(md)
    (args.runs / "ablation.csv").write_text(csv)
    print(md)
    print(f"wrote {args.runs / 'ablation.md'} and {args.runs / 'ablation.csv'}")


if __name__ == "__main__":
    main()
