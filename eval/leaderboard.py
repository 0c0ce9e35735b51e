"""Compare several evaluated checkpoints: one leaderboard across them.

:func:`leaderboard`: one row per checkpoint plus the mean ± std across checkpoints with
complete inputs, and the LNLN average per checkpoint (mean ± std over its seeds) plus
across checkpoints × seeds. The checkpoints must share a metric set and a split, and a
sweep must use the same rates and seeds for all of them.

Files (:func:`write_leaderboard`): ``leaderboard.md`` and ``leaderboard.csv`` (and
``leaderboard_lnln.csv`` with a sweep), the combined ``results.json`` / ``results.md``
(:func:`eval.report.write_results`), ``runs.csv`` (every prediction pass of every
checkpoint, unrounded) and, with a sweep, ``robustness.png``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from eval.evaluate import CheckpointEval, plot_metrics, runs_csv
from eval.options import EvalError
from eval.plots import robustness_curve
from eval.report import csv_table, markdown_table, order_metrics, summarize, write_results


def leaderboard(evals: Sequence[CheckpointEval]) -> dict[str, Any]:
    """Rows across checkpoints: complete-input metrics and, with a sweep, LNLN averages.

    Returns ``{"metric_set", "complete": rows, "lnln": rows or {}}`` where rows map a
    checkpoint name to ``{metric: value or (mean, std)}`` and end with an aggregate row
    ``mean ± std (N checkpoints)`` (complete) / ``mean ± std (N checkpoints × S seeds)``
    (LNLN: each checkpoint's per-seed averages over rates, pooled).
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
    complete: dict[str, Any] = {ev.name: ev.metrics for ev in evals}
    complete[f"mean ± std ({len(evals)} checkpoints)"] = summarize([ev.metrics for ev in evals])
    lnln: dict[str, Any] = {}
    swept = [ev for ev in evals if ev.sweep]
    if swept:
        grids = {(tuple(sorted(ev.sweep)), tuple(ev.seeds)) for ev in swept}
        if len(grids) > 1 or len(swept) != len(evals):
            raise EvalError("the checkpoints were swept over different rates or seeds; "
                            "evaluate them in one call with the same --missing-rates/--seeds")
        pooled: list[dict[str, float]] = []
        for ev in swept:
            per_seed = ev.seed_averages()
            lnln[ev.name] = summarize(per_seed)
            pooled += per_seed
        n_seeds = len(swept[0].seeds)
        lnln[f"mean ± std ({len(swept)} checkpoints × {n_seeds} seeds)"] = summarize(pooled)
    return {"metric_set": evals[0].metric_set, "split": evals[0].split, "complete": complete,
            "lnln": lnln}


def leaderboard_markdown(board: Mapping[str, Any]) -> str:
    """The leaderboard as Markdown: complete inputs, then the LNLN averages."""
    metric_set = board["metric_set"]
    cols = order_metrics((m for row in board["complete"].values() for m in row), metric_set)
    lines = [f"# Leaderboard ({board['split']} split, metric set `{metric_set}`)", "",
             "Accuracies and F1 ×100; MAE and Corr as is.", "",
             "## Complete inputs", "", markdown_table(board["complete"], cols, name_header="checkpoint")]
    if board["lnln"]:
        lines += ["## LNLN average over missing rates (mean ± std over seeds)", "",
                  markdown_table(board["lnln"], cols, name_header="checkpoint")]
    return "\n".join(lines)


def write_leaderboard(evals: Sequence[CheckpointEval], out_dir: str | Path) -> list[Path]:
    """``leaderboard.md``, ``leaderboard.csv`` (+ ``leaderboard_lnln.csv``), the combined
    ``results.json`` / ``results.md``, ``runs.csv`` and (with a sweep) ``robustness.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    board = leaderboard(evals)
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
        "meta": {"split": board["split"], "checkpoints": {ev.name: str(ev.path) for ev in evals},
                 "seeds": evals[0].seeds if evals[0].sweep else [],
                 "missing_rates": sorted(evals[0].sweep)},
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
