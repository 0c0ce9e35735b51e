"""The small-data table: a few hundred labelled samples, as a new user with a small
dataset has them. Per dataset (MELD: classes, text only; CMU-MOSI: scores, text + audio),
each **draw** is a seeded subset (``data.subset``: 300 train, 40 valid and a test sample;
``data.subset_seed`` = the draw), and every row is computed on every draw:

- ``workbench baselines``: the majority class of train (train mean) and the frozen-encoder
  probe (the student's MiniLM, mean-pooled, logistic / ridge regression),
- ``workbench eval-teacher``: the teacher alone (Gemma 3 270M through the dataset's
  template; its cache holds the draw's train, valid and test samples),
- students (``configs/distill/*_small_*.yaml``, ``--seeds`` training seeds per draw):
  gold only; + the teacher's soft labels; the controls that tell distillation from
  regularisation: gold + label smoothing (classes), + uniform soft labels, + shuffled soft
  labels (``signals.control``); on request (``--variants ...,gold_cv``) the gold-only
  student with 5-fold cross-validation (``train.folds``, one run per fold on the draw's
  pooled train + valid).

The student recipes train 15 epochs and keep the mean of the last 5 epochs' weights
(``train.average_epochs``): no epoch is picked on 40 validation samples.

Cells are mean ± std over draws × seeds (folds for the CV row); below each table the
paired differences (same draw and seed) say whether soft labels beat gold only, and
whether they beat their own controls. Every step is resumable: a filled cache, a finished
run, a written result are skipped, so the script can be stopped and rerun.

    python bench/small_data.py [--datasets meld,mosi] [--draws 0,1,2] [--seeds 1111,1112]
        [--jobs 2] [--variants gold,soft,...] [--runs runs/small_data] [--table-only]

Needs the shared data (../shared/data/{meld,mosi}) and the models extra; a dataset whose
folder is absent is skipped with a note. On two CPU cores a MELD draw's teacher cache
takes about 2 minutes and each student run about 6 (excluded from ``make bench``).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import run_finished  # noqa: E402
from scheduler import Task, cell, schedule, workbench  # noqa: E402


@dataclass(frozen=True)
class Dataset:
    """One dataset of the table: its data config, teacher cache recipe, student recipes."""

    name: str
    data: str
    cache: str
    template: str
    gold: str
    soft: str
    marker: str
    """A file of the shared data that must exist."""
    test: int
    """Test samples per draw (0: the whole test split)."""
    metrics: tuple[tuple[str, str, float], ...]
    """(key, column, scale) of the table's metrics; the first is the headline."""
    classification: bool
    data_overrides: tuple[str, ...] = ()


DATASETS = {
    "meld": Dataset(
        "meld", "configs/data/meld.yaml", "configs/cache/meld_dialogue_polarity.yaml",
        "dialogue_polarity", "configs/distill/meld_small_gold.yaml",
        "configs/distill/meld_small_soft.yaml", "meld/train_sent_emo.csv", 1000,
        (("f1_weighted", "weighted F1", 100), ("acc", "acc", 100), ("f1_macro", "macro F1", 100)),
        True, ("context_turns=0",)),
    "mosi": Dataset(
        "mosi", "configs/data/mosi.yaml", "configs/cache/mosi_sentiment_polarity.yaml",
        "sentiment_polarity", "configs/distill/mosi_small_gold.yaml",
        "configs/distill/mosi_small_soft.yaml", "mosi/mosi_label.csv", 0,
        (("mae", "MAE", 1), ("corr", "corr", 1), ("acc2_non0", "acc2 (non0)", 100),
         ("f1_non0", "F1 (non0)", 100)),
        False),
}
# variant -> (row label, which recipe, extra overrides, classification only)
VARIANTS = {
    "gold": ("student, gold only", "gold", [], False),
    "soft": ("+ teacher soft labels", "soft", [], False),
    "smooth": ("gold + label smoothing 0.1 (control)", "gold", ["loss.label_smoothing=0.1"],
               True),
    "uniform": ("+ uniform soft labels (control)", "soft", ["signals.control=uniform"], False),
    "shuffled": ("+ shuffled soft labels (control)", "soft", ["signals.control=shuffled"], False),
    "gold_cv": ("student, gold only, 5-fold CV (mean of folds)", "gold", ["train.folds=5"],
                False),
}
DEFAULT_VARIANTS = [v for v in VARIANTS if v != "gold_cv"]
"""Cross-validation is five runs per draw and seed: asked for, not run by default."""
FOLDS = 5
TRAIN, VALID = 300, 40


def subset(ds: Dataset, draw: int) -> list[str]:
    """The data overrides of one draw (subset and its seed, plus the dataset's own)."""
    sizes = f"train: {TRAIN}, valid: {VALID}" + (f", test: {ds.test}" if ds.test else "")
    return [f"subset={{{sizes}}}", f"subset_seed={draw}", *ds.data_overrides]


def as_recipe(overrides: list[str]) -> list[str]:
    return [f"data.{o}" for o in overrides]


def results_done(path: Path, after: Path | None = None) -> bool:
    """Whether ``path`` exists (and is newer than ``after`` when given)."""
    return path.is_file() and (after is None or path.stat().st_mtime > after.stat().st_mtime)


def cache_done(out: Path) -> bool:
    from workbench.cache.store import DB_FILE, CacheStore

    if not (out / DB_FILE).is_file():
        return False
    with CacheStore(out, create=False) as store:
        st = store.status()
    return st["keys"] > 0 and st["pending"] == 0


def draw_tasks(ds: Dataset, runs: Path, draw: int) -> list[Task]:
    """The draw's teacher cache, baselines and teacher-alone rows."""
    base = runs / ds.name / f"draw{draw}"
    over = subset(ds, draw)
    cache = base / "cache"
    wb = workbench()
    return [
        Task(f"{ds.name} d{draw} cache", [wb, "cache", "run", "--config", ds.cache, "--splits",
                                          "train,valid,test", f"cache.dir={cache}",
                                          "teacher.num_threads=1", *as_recipe(over)],
             base / "logs" / "cache.log", lambda: cache_done(cache)),
        Task(f"{ds.name} d{draw} baselines", [wb, "baselines", ds.data, *over, "--split", "test",
                                              "--threads", "1", "--out", str(base / "baselines")],
             base / "logs" / "baselines.log",
             lambda: results_done(base / "baselines" / "results.json")),
        Task(f"{ds.name} d{draw} teacher", [wb, "eval-teacher", str(cache), "--data", ds.data,
                                            *over, "--split", "test", "--template", ds.template,
                                            "--out", str(base / "teacher")],
             base / "logs" / "teacher.log",
             lambda: results_done(base / "teacher" / "results.json"),
             (f"{ds.name} d{draw} cache",)),
    ]


def run_dirs(ds: Dataset, runs: Path, variant: str, draw: int, seeds: list[int]) -> list[Path]:
    base = runs / ds.name / f"draw{draw}" / variant
    if variant == "gold_cv":
        return [base / f"fold{f}" for f in range(FOLDS)]
    return [base / f"seed{s}" for s in seeds]


def student_tasks(ds: Dataset, runs: Path, variant: str, draw: int, seeds: list[int]
                  ) -> list[Task]:
    """Train and evaluate one variant's runs of one draw."""
    _, which, extra, _ = VARIANTS[variant]
    recipe = ds.gold if which == "gold" else ds.soft
    cache = runs / ds.name / f"draw{draw}" / "cache"
    tasks = []
    for out in run_dirs(ds, runs, variant, draw, seeds):
        seed = seeds[0] if variant == "gold_cv" else int(out.name.removeprefix("seed"))
        fold = [f"train.fold={out.name.removeprefix('fold')}"] if variant == "gold_cv" else []
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               "configs/accelerate/cpu.yaml", "distill.py", "--config", recipe,
               *as_recipe(subset(ds, draw)), f"train.output_dir={out}", f"train.seed={seed}",
               "train.num_threads=1", *extra, *fold,
               *([f"signals.cache_dir={cache}"] if which == "soft" else [])]
        if (out / "config.yaml").is_file() and not run_finished(out):
            cmd.append("--resume")
        name = f"{ds.name} d{draw} {variant} {out.name}"
        needs = (f"{ds.name} d{draw} cache",) if which == "soft" else ()
        tasks.append(Task(name, cmd, out / "train.log", lambda o=out: run_finished(o), needs))
        res = out / "eval-test"
        tasks.append(Task(f"eval {name}", [workbench(), "eval", str(out / "checkpoint-best"),
                                           "--split", "test", "--no-cost", "--out", str(res)],
                          out / "eval.log",
                          lambda r=res, o=out: results_done(
                              r / "results.json", o / "checkpoint-best" / "selection.json"),
                          (name,)))
    return tasks


# ---------------------------------------------------------------------------- the table


def read_rows(path: Path) -> dict[str, dict[str, float]]:
    """The ``leaderboard`` rows of a ``results.json`` ({} when it is not there)."""
    return json.loads(path.read_text())["leaderboard"] if path.is_file() else {}


def reference(runs: Path, ds: Dataset, draws: list[int], what: str, kind: str,
              features: bool = False) -> dict[tuple[int, int], dict[str, float]]:
    """One reference row per draw: the row of ``what`` (baselines / teacher) whose name
    starts with ``kind`` (a probe: over text only, or with ``features`` over text + the
    audio/vision features, named ``probe (minilm+audio)``)."""
    out = {}
    for d in draws:
        rows = read_rows(runs / ds.name / f"draw{d}" / what / "results.json")
        hit = [m for name, m in rows.items()
               if name.startswith(kind) and ("+" in name) == features]
        if hit:
            out[(d, 0)] = hit[0]
    return out


def students(runs: Path, ds: Dataset, variant: str, draws: list[int], seeds: list[int]
             ) -> dict[tuple[int, int], dict[str, float]]:
    """(draw, seed or fold) -> test metrics of each evaluated run of ``variant``."""
    out = {}
    for d in draws:
        for i, r in enumerate(run_dirs(ds, runs, variant, d, seeds)):
            rows = read_rows(r / "eval-test" / "results.json")
            if rows:
                out[(d, seeds[i] if variant != "gold_cv" else i)] = rows["complete"]
    return out


def digits(scale: float) -> int:
    """Decimals of a cell: 1 for percentages, 3 for raw scores (MAE, correlation)."""
    return 1 if scale == 100 else 3


def row(label: str, got: dict, ds: Dataset) -> str:
    cells = [cell([m[k] for m in got.values()], scale, digits(scale))
             for k, _, scale in ds.metrics]
    return f"| {label} | {len(got)} | " + " | ".join(cells) + " |"


def paired(a: dict, b: dict, key: str, scale: float, by_draw: bool = False) -> str:
    """``mean ± std`` of a - b over the keys both have (by draw: b's one row per draw)."""
    pairs = [(k, (d, 0) if by_draw else k) for k in a for d in [k[0]]]
    diffs = [a[k][key] - b[j][key] for k, j in pairs if j in b]
    return f"{cell(diffs, scale, digits(scale))} (n={len(diffs)})"


def table(runs: Path, ds: Dataset, draws: list[int], seeds: list[int], variants: list[str]
          ) -> str:
    head, _, scale = ds.metrics[0]
    test = f"{ds.test} test samples" if ds.test else "the whole test split"
    lines = [f"{ds.name}: {TRAIN} train / {VALID} valid per draw, {test}; draws "
             f"{','.join(map(str, draws))}, seeds {','.join(map(str, seeds))}", "",
             "| system | runs | " + " | ".join(c for _, c, _ in ds.metrics) + " |",
             "|---|---|" + "---|" * len(ds.metrics)]
    refs = {
        "majority": reference(runs, ds, draws, "baselines", "majority class"
                              if ds.classification else "train mean"),
        "probe": reference(runs, ds, draws, "baselines", "probe"),
        "probe_features": reference(runs, ds, draws, "baselines", "probe", features=True),
        "teacher": reference(runs, ds, draws, "teacher", "teacher (unanswered"),
    }
    labels = {"majority": "majority class of train" if ds.classification else "train mean",
              "probe": "frozen MiniLM probe (`workbench baselines`)",
              "probe_features": "frozen MiniLM + features probe (`workbench baselines`)",
              "teacher": "Gemma 3 270M alone (`workbench eval-teacher`)"}
    for k, got in refs.items():
        if got or k != "probe_features":
            lines.append(row(labels[k], got, ds))
    got = {v: students(runs, ds, v, draws, seeds) for v in variants}
    for v in variants:
        lines.append(row(VARIANTS[v][0], got[v], ds))
    lines += ["", f"Paired differences in {head} (same draw and seed):"]
    gold = got.get("gold", {})
    for v in variants:
        if v in ("gold",):
            continue
        if v != "gold_cv":
            lines.append(f"- {v} − gold only: {paired(got[v], gold, head, scale)}")
    for v in ("uniform", "shuffled"):
        if v in got and "soft" in got:
            lines.append(f"- soft − {v}: {paired(got['soft'], got[v], head, scale)}")
    if "smooth" in got and "soft" in got:
        lines.append(f"- soft − smoothing: {paired(got['soft'], got['smooth'], head, scale)}")
    for v in ("gold", "soft", "gold_cv"):
        for k in ("probe", "probe_features"):
            if v in got and refs[k]:
                lines.append(f"- {v} − {k.replace('_', ' + ')} (same draw): "
                             f"{paired(got[v], refs[k], head, scale, by_draw=True)}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "small_data")
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--draws", default="0,1,2")
    ap.add_argument("--seeds", default="1111,1112")
    ap.add_argument("--jobs", type=int, default=2, help="processes at once (one thread each)")
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                    help=f"of {','.join(VARIANTS)}")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    draws = [int(d) for d in args.draws.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    runs = args.runs.resolve()
    chosen = []
    for name in args.datasets.split(","):
        ds = DATASETS[name]
        if not (ROOT.parent / "shared" / "data" / ds.marker).is_file():
            print(f"skipped {name}: ../shared/data/{ds.marker} is absent")
            continue
        chosen.append(ds)
    for ds in chosen:
        vs = [v for v in variants if ds.classification or not VARIANTS[v][3]]
        if not args.table_only:
            refs = [t for d in draws for t in draw_tasks(ds, runs, d)]
            # caches first, then the students, then the reference rows
            tasks = [t for t in refs if t.name.endswith("cache")]
            tasks += [t for d in draws for v in vs for t in student_tasks(ds, runs, v, d, seeds)]
            tasks += [t for t in refs if not t.name.endswith("cache")]
            schedule(tasks, args.jobs)
        print(table(runs, ds, draws, seeds, vs), "\n", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
