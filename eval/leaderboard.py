"""Compare several evaluated checkpoints: one leaderboard across them.

:func:`leaderboard`: one row per checkpoint plus, per recipe (:func:`recipe_groups`: the
resolved config minus seed, output dir and runtime knobs), the mean ± std across its
checkpoints with complete inputs, and the LNLN average per checkpoint (mean ± std over
its seeds) plus per recipe across checkpoints × seeds. Runs of different recipes are
never pooled. The checkpoints must share a metric set and a split, and a
sweep must use the same rates and seeds for all of them. Reference rows
(:mod:`eval.references`: majority class, linear probe, teacher) come first, named
``ref: ...``, in no recipe group; they must be on the same split and metric set and,
where recorded, the same evaluated data (the split's fingerprint).

Files (:func:`write_leaderboard`): ``leaderboard.md`` and ``leaderboard.csv`` (and
``leaderboard_lnln.csv`` with a sweep), the combined ``results.json`` / ``results.md``
(:func:`eval.report.write_results`), ``runs.csv`` (every prediction pass of every
checkpoint, unrounded) and, with a sweep, ``robustness.png``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from eval.evaluate import CheckpointEval, plot_metrics, runs_csv
from eval.options import EvalError
from eval.plots import robustness_curve
from eval.references import ReferenceTable, check_references, reference_rows
from eval.report import csv_table, markdown_table, order_metrics, summarize, write_results
from students.checkpoint import CONFIG_FILE
from students.rundir import flatten_config
from workbench.config import ConfigError
from workbench.config.loader import load_yaml_text

NOT_RECIPE = ("train.seed", "train.fold", "train.output_dir", "train.overwrite",
              "train.num_threads", "train.num_workers", "eval.")
"""Resolved-config keys (or prefixes, ending in ``.``) that do not make a different recipe:
the seed, the cross-validation fold (a recipe's folds pool like its seeds), where the run
was written, runtime knobs and the evaluation options."""
LABEL_KEYS = 3
"""Differing keys shown in a group's name (then ``…``)."""


def _recipe(path: Path) -> dict[str, Any]:
    """The checkpoint's resolved config (``config.yaml``), flattened, minus NOT_RECIPE."""
    cfg_file = Path(path) / CONFIG_FILE
    try:
        raw = load_yaml_text(cfg_file.read_text(encoding="utf-8"), str(cfg_file)) or {}
    except (OSError, ConfigError) as e:
        raise EvalError(f"checkpoint {path}: cannot read {CONFIG_FILE} to group it by recipe "
                        f"({e})") from None
    flat = flatten_config(raw)
    return {k: v for k, v in flat.items()
            if not any(k == n or (n.endswith(".") and k.startswith(n)) for n in NOT_RECIPE)}


def _short(v: Any) -> str:
    text = json.dumps(v, default=str) if not isinstance(v, str) else (v or "''")
    return text if len(text) <= 24 else "…" + text[-23:]


def recipe_groups(evals: Sequence[CheckpointEval]) -> dict[str, list[str]]:
    """Checkpoints grouped by recipe (the resolved config minus seed, output dir and
    runtime knobs, :data:`NOT_RECIPE`), in first-seen order: ``{group name: checkpoint
    names}``. A group is named by the keys in which the recipes differ (``recipe`` when
    there is one)."""
    recipes = [_recipe(ev.path) for ev in evals]
    keys: list[str] = []
    for r in recipes:
        keys += [k for k in r if k not in keys]
    frozen = [json.dumps([r.get(k) for k in keys], sort_keys=True, default=str) for r in recipes]
    order = list(dict.fromkeys(frozen))
    if len(order) == 1:
        return {"recipe": [ev.name for ev in evals]}
    first = {f: recipes[frozen.index(f)] for f in order}
    differ = [k for k in keys if len({json.dumps(first[f].get(k), default=str) for f in order}) > 1]
    groups: dict[str, list[str]] = {}
    for i, f in enumerate(order):
        shown = ", ".join(f"{k}={_short(first[f].get(k))}" for k in differ[:LABEL_KEYS])
        name = f"recipe {i + 1}: {shown}{', …' if len(differ) > LABEL_KEYS else ''}"
        groups[name] = [ev.name for ev, g in zip(evals, frozen, strict=True) if g == f]
    return groups


def _group_rows(groups: dict[str, list[str]], per_name: dict[str, list[dict[str, float]]],
                unit: str) -> dict[str, Any]:
    """One ``mean ± std`` row per group (its checkpoints' runs pooled); a group of one run
    shows its values without a spread."""
    rows: dict[str, Any] = {}
    for group, names in groups.items():
        runs = [r for n in names for r in per_name[n]]
        label = unit.format(n=len(names))
        title = f"mean ± std ({label})" if len(groups) == 1 else f"mean ± std ({group}; {label})"
        rows[title] = summarize(runs) if len(runs) > 1 else dict(runs[0])
    return rows


def leaderboard(evals: Sequence[CheckpointEval],
                references: Sequence[ReferenceTable] = ()) -> dict[str, Any]:
    """Rows across checkpoints: complete-input metrics and, with a sweep, LNLN averages.

    Returns ``{"metric_set", "split", "complete": rows, "lnln": rows or {}, "groups",
    "references"}`` where rows map a checkpoint name to ``{metric: value or (mean, std)}``
    and end with an aggregate row ``mean ± std (N checkpoints)`` (complete) /
    ``mean ± std (N checkpoints × S seeds)`` (LNLN: each checkpoint's per-seed averages over
    rates, pooled). ``references``' rows open the complete rows (``ref: ...``; their kind
    and source in ``"references"``); they are in no group and have no LNLN row.
    """
    if not evals:
        raise ValueError("leaderboard needs at least one evaluation")
    sets = {ev.metric_set for ev in evals}
    if len(sets) > 1:
        raise EvalError(f"the checkpoints use different metric sets {sorted(sets)}; a "
                        "leaderboard compares checkpoints of one dataset")
    splits = {ev.split for ev in evals}
    if len(splits) > 1:
        raise EvalError(f"the evaluations are on different splits {sorted(splits)}")
    names = [ev.name for ev in evals]
    if len(set(names)) != len(names):
        raise EvalError(f"two checkpoints share a name ({names}); name each run directory "
                        "differently")
    groups = recipe_groups(evals)
    check_references(references, split=evals[0].split, metric_set=evals[0].metric_set,
                     split_fingerprints={ev.data["split_fingerprint"] for ev in evals
                                         if ev.data.get("split_fingerprint")})
    ref_rows, ref_about = reference_rows(references)
    complete: dict[str, Any] = {**ref_rows, **{ev.name: ev.metrics for ev in evals}}
    complete.update(_group_rows(groups, {ev.name: [ev.metrics] for ev in evals},
                                "{n} checkpoints"))
    lnln: dict[str, Any] = {}
    swept = [ev for ev in evals if ev.sweep]
    if swept:
        grids = {(tuple(sorted(ev.sweep)), tuple(ev.seeds)) for ev in swept}
        if len(grids) > 1 or len(swept) != len(evals):
            raise EvalError("the checkpoints were swept over different rates or seeds; "
                            "evaluate them in one call with the same --missing-rates/--seeds")
        per_name: dict[str, list[dict[str, float]]] = {}
        for ev in swept:
            per_name[ev.name] = ev.seed_averages()
            lnln[ev.name] = summarize(per_name[ev.name])
        n_seeds = len(swept[0].seeds)
        lnln.update(_group_rows(groups, per_name, f"{{n}} checkpoints × {n_seeds} seeds"))
    return {"metric_set": evals[0].metric_set, "split": evals[0].split, "complete": complete,
            "lnln": lnln, "groups": groups, "references": ref_about}


def leaderboard_markdown(board: Mapping[str, Any]) -> str:
    """The leaderboard as Markdown: complete inputs, then the LNLN averages."""
    metric_set = board["metric_set"]
    cols = order_metrics((m for row in board["complete"].values() for m in row), metric_set)
    lines = [f"# Leaderboard ({board['split']} split, metric set `{metric_set}`)", "",
             "Accuracies and F1 ×100; MAE and Corr as is. Checkpoints are grouped by recipe "
             "(the resolved config minus seed, output dir and runtime knobs); each group gets "
             "its own mean ± std.", "", *group_lines(board["groups"]),
             *reference_lines(board.get("references") or {}), "",
             "## Complete inputs", "", markdown_table(board["complete"], cols, name_header="checkpoint")]
    if board["lnln"]:
        lines += ["## LNLN average over missing rates (mean ± std over seeds)", "",
                  markdown_table(board["lnln"], cols, name_header="checkpoint")]
    return "\n".join(lines)


def group_lines(groups: Mapping[str, Sequence[str]]) -> list[str]:
    """One line per recipe group: its name and its checkpoints."""
    return [f"- {name}: {', '.join(names)}" for name, names in groups.items()]


def reference_lines(about: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per reference row: its name, kind and source (none without references)."""
    if not about:
        return []
    return ["", "Reference rows (not checkpoints; in no recipe group):",
            *(f"- {name}: {a.get('kind')}, from {a.get('source')}" for name, a in about.items())]


def write_leaderboard(evals: Sequence[CheckpointEval], out_dir: str | Path,
                      references: Sequence[ReferenceTable] = ()) -> list[Path]:
    """``leaderboard.md``, ``leaderboard.csv`` (+ ``leaderboard_lnln.csv``), the combined
    ``results.json`` / ``results.md``, ``runs.csv`` and (with a sweep) ``robustness.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    board = leaderboard(evals, references)
    cols = order_metrics((m for row in board["complete"].values() for m in row),
                         board["metric_set"])
    paths = [out / "leaderboard.md", out / "leaderboard.csv"]
    paths[0].write_text(leaderboard_markdown(board), encoding="utf-8")
    paths[1].write_text(csv_table(board["complete"], cols, name_header="checkpoint",
                                  split_std=True), encoding="utf-8")
    if board["lnln"]:
        lnln_path = out / "leaderboard_lnln.csv"
        lnln_path.write_text(csv_table(board["lnln"], cols, name_header="checkpoint",
                                       split_std=True), encoding="utf-8")
        paths.append(lnln_path)
    results: dict[str, Any] = {
        "metric_set": board["metric_set"],
        "leaderboard": board["complete"],
        "meta": {"split": board["split"], "groups": board["groups"], "checkpoints": {ev.name: str(ev.path) for ev in evals},
                 "seeds": evals[0].seeds if evals[0].sweep else [],
                 "missing_rates": sorted(evals[0].sweep), "references": board["references"]},
    }
    if board["lnln"]:
        results["lnln_leaderboard"] = board["lnln"]
        results["robustness"] = {ev.name: ev.robustness() for ev in evals}
    paths += list(write_results(out, results, row_header="checkpoint"))
    runs = out / "runs.csv"
    runs.write_text(runs_csv(evals), encoding="utf-8")
    paths.append(runs)
    if board["lnln"]:
        paths.append(robustness_curve(results["robustness"],
                                      plot_metrics(board["metric_set"], cols),
                                      out_path=out / "robustness.png"))
    return paths
