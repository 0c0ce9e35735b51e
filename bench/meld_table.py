"""The MELD table: baselines, gold-only student, + teacher soft labels, + dialogue context
in the teacher's prompt, on the full train split, 3 seeds each.

Rows (test split, 2,610 lines; accuracy, weighted F1, macro F1, mean ± std over seeds):

- majority class and the frozen-encoder probe (``workbench baselines
  configs/data/meld.yaml``: :func:`eval.baselines.run_baselines`, whole train split; both
  deterministic, so one run),
- the teacher itself (Gemma 3 270M, ``dialogue_polarity``) scored on the train lines it
  labelled, without and with the 3 previous lines of the dialogue (its argmax against gold;
  the few-shot examples it sees are 6 of those lines),
- ``configs/distill/meld_text_gold.yaml`` (gold labels only),
- ``configs/distill/meld_text_soft.yaml`` over a cache made without context
  (``data.context_turns=0``) and over one made with the recipe's 3 previous lines.

Two teacher caches (train split only: what distillation reads) are filled first by
``workbench cache run --config configs/cache/meld_dialogue_polarity.yaml``, then the nine
students are trained by ``accelerate launch distill.py`` and evaluated by ``workbench eval``;
``--jobs`` processes run at once, one CPU thread each. Everything is resumable: a filled
cache is reused, a finished run is not trained again and its evaluation is kept while it
is newer than the checkpoint, so the script can be stopped and rerun.

    python bench/meld_table.py [--runs runs/meld_table] [--seeds 1111,1112,1113] [--jobs 2]
        [--variants gold,soft,soft_context] [--set KEY=VALUE ...] [--table-only]

Needs the shared MELD folder (../shared/data/meld) and the models extra; exits 0 with a
note when MELD is absent. About an hour and a half on two CPU cores (excluded from
``make bench``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench/ itself is on the path: the script's folder

from common import run_finished  # noqa: E402
from scheduler import Task, cell, schedule, workbench  # noqa: E402

from eval.options import EvalError  # noqa: E402
from workbench.cache.store import DB_FILE  # noqa: E402

MELD = ROOT / "configs" / "data" / "meld.yaml"
CACHE_RECIPE = "configs/cache/meld_dialogue_polarity.yaml"
GOLD = "configs/distill/meld_text_gold.yaml"
SOFT = "configs/distill/meld_text_soft.yaml"
NO_CONTEXT = ["data.context_turns=0"]
CACHES = {"no_context": NO_CONTEXT, "context": []}
# variant -> (row label, recipe, teacher cache or None, extra overrides)
VARIANTS = {
    "gold": ("student, gold only (`meld_text_gold.yaml`)", GOLD, None, []),
    "soft": ("+ soft labels, teacher without context (`meld_text_soft.yaml data.context_turns=0`)",
             SOFT, "no_context", NO_CONTEXT),
    "soft_context": ("+ dialogue context in the teacher's prompt (`meld_text_soft.yaml`)",
                     SOFT, "context", []),
}
METRICS = [("acc", "acc"), ("f1_weighted", "weighted F1"), ("f1_macro", "macro F1")]


def cache_dir(runs: Path, name: str) -> Path:
    return runs / f"cache_{name}"


def cache_filled(out: Path) -> bool:
    """Whether the cache in ``out`` has a job with nothing left pending."""
    from workbench.cache.store import CacheStore

    if not (out / DB_FILE).is_file():
        return False
    with CacheStore(out, create=False) as store:
        st = store.status()
    return st["keys"] > 0 and st["pending"] == 0


def cache_task(runs: Path, name: str) -> Task:
    """Fill one teacher cache (a rerun resumes it); done once nothing is pending."""
    out = cache_dir(runs, name)
    cmd = [workbench(), "cache", "run", "--config", CACHE_RECIPE, "--splits", "train",
           f"cache.dir={out}", "teacher.num_threads=1", *CACHES[name]]
    return Task(f"teacher cache ({name})", cmd, runs / "logs" / f"cache_{name}.log",
                lambda: cache_filled(out))


def evaluated(out: Path) -> bool:
    res, sel = out / "eval-test" / "results.json", out / "checkpoint-best" / "selection.json"
    return res.is_file() and sel.is_file() and res.stat().st_mtime > sel.stat().st_mtime


def train_task(runs: Path, variant: str, seed: int, extra: list[str]) -> Task:
    _, recipe, cache, overrides = VARIANTS[variant]
    out = runs / variant / f"seed{seed}"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           "configs/accelerate/cpu.yaml", "distill.py", "--config", recipe,
           f"train.output_dir={out}", f"train.seed={seed}", "train.num_threads=1", *overrides,
           *([f"signals.cache_dir={cache_dir(runs, cache)}"] if cache else []), *extra]
    if (out / "config.yaml").is_file() and not run_finished(out):
        cmd.append("--resume")
    needs = (f"teacher cache ({cache})",) if cache else ()
    return Task(f"{variant} seed {seed}", cmd, out / "train.log", lambda: run_finished(out), needs)


def eval_task(runs: Path, variant: str, seed: int) -> Task:
    out = runs / variant / f"seed{seed}"
    cmd = [workbench(), "eval", str(out / "checkpoint-best"), "--split", "test", "--no-cost",
           "--out", str(out / "eval-test")]
    return Task(f"eval {variant} seed {seed}", cmd, out / "eval.log", lambda: evaluated(out),
                (f"{variant} seed {seed}",))


def meld_config(overrides: list[str] | None = None):
    from workbench.config import DataConfig, load_config

    return load_config(DataConfig, MELD, [o.removeprefix("data.") for o in overrides or []])


def teacher_scores(runs: Path, name: str) -> dict[str, float]:
    """The cached teacher's argmax against gold on the train lines it answered
    (:func:`eval.teacher_eval.score_teacher`, the answered-only row)."""
    from eval.teacher_eval import TeacherEvalOptions, score_teacher

    res = score_teacher(cache_dir(runs, name), meld_config(CACHES[name]),
                        TeacherEvalOptions(split="train", template="dialogue_polarity"))
    answered = next(r for r, a in res.about.items() if a["samples"] == "answered only")
    return {**res.rows[answered], "n": res.meta["answered"], "of": res.meta["samples"]}


def table(runs: Path, seeds: list[int]) -> str:
    import torch

    from eval.baselines import BaselineOptions, run_baselines

    lines = ["| system (MELD test, 2,610 lines) | seeds | acc | weighted F1 | macro F1 |",
             "|---|---|---|---|---|"]
    torch.set_num_threads(1)
    base = run_baselines(meld_config(), BaselineOptions(device="cpu"))
    for name, m in base.rows.items():
        lines.append(f"| {name} (`workbench baselines configs/data/meld.yaml`) | - | "
                     + " | ".join(cell([m[k]]) for k, _ in METRICS) + " |")
    for name in CACHES:
        try:
            m = teacher_scores(runs, name)
        except EvalError as e:  # a missing or unfinished cache is a note, not a crash
            lines.append(f"| teacher ({name}) | - | not available: {e} | | |")
            continue
        lines.append(f"| Gemma 3 270M teacher, {name.replace('_', ' ')}, on the train lines it "
                     f"answered ({m['n']:,} of {m['of']:,}) | - | "
                     + " | ".join(cell([m[k]]) for k, _ in METRICS) + " |")
    per_seed: dict[str, dict[int, dict]] = {}
    for variant, (label, *_) in VARIANTS.items():
        got = {}
        for seed in seeds:
            res = runs / variant / f"seed{seed}" / "eval-test" / "results.json"
            if res.is_file():
                got[seed] = json.loads(res.read_text())["leaderboard"]["complete"]
        per_seed[variant] = got
        vals = {k: [r[k] for r in got.values()] for k, _ in METRICS}
        lines.append(f"| {label} | {len(got)} | " + " | ".join(cell(vals[k]) for k, _ in METRICS)
                     + " |")
    lines += ["", "Paired (same seed) against the gold-only student, Δ acc / Δ weighted F1:"]
    gold = per_seed["gold"]
    for variant in ("soft", "soft_context"):
        both = [s for s in seeds if s in gold and s in per_seed[variant]]
        deltas = {k: [per_seed[variant][s][k] - gold[s][k] for s in both] for k in ("acc", "f1_weighted")}
        lines.append(f"- {variant}: " + " / ".join(cell(deltas[k]) for k in ("acc", "f1_weighted"))
                     + f" ({len(both)} seeds)")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "meld_table")
    ap.add_argument("--seeds", default="1111,1112,1113")
    ap.add_argument("--jobs", type=int, default=2, help="processes at once (one thread each)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="an override for every student run (e.g. train.epochs=2)")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help=f"the student rows to train ({', '.join(VARIANTS)}); their caches come along")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    if not (ROOT.parent / "shared" / "data" / "meld" / "train_sent_emo.csv").is_file():
        print("skipped: MELD is not at ../shared/data/meld (see configs/data/meld.yaml)")
        return 0
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = args.runs.resolve()
    if not args.table_only:
        variants = [v for v in args.variants.split(",") if v]
        unknown = sorted(set(variants) - set(VARIANTS))
        if unknown:
            raise SystemExit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
        caches = [c for c in CACHES if any(VARIANTS[v][2] == c for v in variants)]
        tasks = [cache_task(runs, name) for name in caches]
        tasks += [train_task(runs, v, s, args.set) for s in seeds for v in variants]
        tasks += [eval_task(runs, v, s) for s in seeds for v in variants]
        schedule(tasks, args.jobs)
    print(table(runs, seeds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
