"""``workbench eval``: metrics, missing-modality robustness and cost of checkpoints; with
several, a leaderboard.

Result tables stay whole at 80 columns (and in a log file, where rich assumes 80): a
table wider than the console is split into several, each with the row names and at most
:data:`MAX_METRIC_COLUMNS` metric columns; no header or cell is ever cut.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from workbench.cli.common import DeviceOpt, ThreadsOpt, console, err_console, set_threads

MAX_METRIC_COLUMNS = 6
FIRST_COLUMN_MAX = 24
"""Row names longer than this fold onto several lines."""


def _fits(first: int, cols: list[int], width: int) -> bool:
    # SIMPLE_HEAD box: one space of padding either side of every column, one separator
    return first + 2 + sum(c + 3 for c in cols) <= width


def metric_tables(rows: dict[str, Any], metric_set: str, first: str,
                  width: int | None = None) -> list[Table]:
    """``rows`` (name -> {metric: value or (mean, std)}) as tables fitting ``width``
    columns: the metrics in display order, split evenly over as few tables as fit."""
    from eval.report import format_cell, order_metrics

    width = width or console.width
    cols = order_metrics((m for r in rows.values() for m in r), metric_set)
    cells = {c: [format_cell(c, m.get(c)) for m in rows.values()] for c in cols}
    widths = [max(len(c), *(len(v) for v in cells[c])) for c in cols]
    names = [str(n) for n in rows]
    first_w = min(FIRST_COLUMN_MAX, max(len(first), *(len(n) for n in names)))
    per = min(MAX_METRIC_COLUMNS, len(cols)) or 1
    while per > 1 and not all(_fits(first_w, widths[i:i + per], width)
                              for i in range(0, len(cols), per)):
        per -= 1
    n_tables = math.ceil(len(cols) / per) if cols else 1
    per = math.ceil(len(cols) / n_tables) if cols else 0  # even split: 3+3+3, not 4+4+1
    tables = []
    for t in range(n_tables):
        chunk = cols[t * per:(t + 1) * per]
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
        table.add_column(first, overflow="fold", max_width=FIRST_COLUMN_MAX)
        for c in chunk:
            table.add_column(c, justify="right", no_wrap=True, min_width=len(c))
        for r, name in enumerate(names):
            table.add_row(escape(name), *[cells[c][r] for c in chunk])
        tables.append(table)
    return tables


def print_metric_tables(title: str, rows: dict[str, Any], metric_set: str, first: str) -> None:
    console.print(f"[bold]{escape(title)}[/]")
    for table in metric_tables(rows, metric_set, first):
        console.print(table)


def print_eval(ev, paths: list[Path]) -> None:
    """One checkpoint's evaluation: the tables, the cost lines, the files written."""
    from eval.cost_text import cost_lines

    console.print(f"\n[bold]{escape(ev.name)}[/] ({escape(str(ev.path))}), {ev.split} split, "
                  f"{ev.n_samples} samples, {ev.meta.kind}; {escape(ev.protocol['selection'])}")
    print_metric_tables(f"{ev.split} metrics", ev.conditions, ev.metric_set, "condition")
    rob = ev.robustness()
    if rob is not None:
        rows: dict[str, Any] = {f"{r:g}": rob["per_rate"][r] for r in rob["rates"]}
        rows["average"] = rob["average"]
        if len(ev.seeds) == 1:  # one seed: no spread to show
            from eval.report import means_only

            title, rows = f"missing-rate sweep (seed {ev.seeds[0]})", means_only(rows)
        else:
            title = f"missing-rate sweep (mean ± std over seeds {','.join(map(str, ev.seeds))})"
        print_metric_tables(title, rows, ev.metric_set, "missing rate")
    if ev.cost is not None:
        for line in cost_lines(ev.cost):
            console.print(line, markup=False, highlight=False)
    console.print("wrote " + ", ".join(escape(str(p)) for p in paths))


def eval_progress(bar, task):
    """A ``progress(label, done, total)`` callback updating ``task`` of a rich ``bar``."""

    def progress(label: str, done: int, total: int) -> None:
        bar.update(task, description=escape(label), completed=done, total=total)

    return progress


def evaluate_one(path: Path, opts, data_cfg, *, data_source: str, datasets: dict, name: str,
                 out: Path):
    """Evaluate one checkpoint behind a transient progress bar, write its files, print it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from eval.evaluate import evaluate_checkpoint, write_checkpoint_results

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=err_console, transient=True) as bar:
        task = bar.add_task(escape(name), total=None)
        ev = evaluate_checkpoint(path, opts, data_cfg, data_source=data_source,
                                 datasets=datasets, name=name, progress=eval_progress(bar, task))
        written = write_checkpoint_results(ev, out)
    print_eval(ev, written)
    return ev


def eval_checkpoints(
    checkpoints: Annotated[list[str], typer.Argument(
        help="Checkpoint dirs, run dirs holding checkpoint-best/, dirs of runs, or globs.")],
    data: Annotated[str | None, typer.Option(
        help="Data YAML or dataset path (default: the checkpoint's own data config).")] = None,
    split: Annotated[str | None, typer.Option(
        help="Split to report (default: the checkpoint's eval.split, test).")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Output dir (default: <run>/eval-<split> beside checkpoint-best).")
    ] = None,
    missing_rates: Annotated[str | None, typer.Option(
        help="LNLN sweep start:stop:step (inclusive), e.g. 0:0.9:0.1, a comma list, or none "
             "(default: the checkpoint's eval.missing_rates).")] = None,
    seeds: Annotated[str | None, typer.Option(
        help="Comma-separated mask seeds (default: the checkpoint's eval.seeds).")] = None,
    missing_modality: Annotated[list[str] | None, typer.Option(
        help="Remove whole modalities: text, audio, vision or e.g. audio,vision; repeat for "
             "several patterns; none for no patterns (default: every pattern).")] = None,
    dataset_missing_rates: Annotated[str | None, typer.Option(
        help="CyIN protocol: dataset-level missing rates (whole modalities per sample, each "
             "keeping one), e.g. 0.1:0.7:0.1 or a comma list.")] = None,
    instance_missing_probs: Annotated[str | None, typer.Option(
        help="CyIN protocol: instance-level missing probabilities, e.g. 0.1:0.7:0.1.")] = None,
    batch_size: Annotated[int | None, typer.Option(
        help="Batch size (default: the checkpoint's eval.batch_size).")] = None,
    no_cost: Annotated[bool, typer.Option(
        "--no-cost", help="Skip speed, memory and the teacher comparison.")] = False,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = 0,
    latency_samples: Annotated[int, typer.Option(
        help="Batch-1 calls timed for the latency percentiles.")] = 50,
    speed_samples: Annotated[int | None, typer.Option(
        help="Samples the throughput is timed on, spread over the split; 0: all (default: "
             "the checkpoint's eval.speed_samples, 128).")] = None,
    device_cost_per_hour: Annotated[float, typer.Option(
        help="USD per hour of this machine, for the student/teacher cost ratio.")] = 0.0,
    reference: Annotated[list[Path] | None, typer.Option(
        "--reference", "-r",
        help="Reference rows for the leaderboard: a results.json (or its dir) written by "
             "`workbench baselines` or `workbench eval-teacher` on the same split; repeat for "
             "several. Shown as 'ref: ...' rows, never pooled into a recipe group.")] = None,
) -> None:
    """Evaluate checkpoints: metrics, missing-modality robustness, cost; several (or any with
    --reference) -> leaderboard."""
    from eval.evaluate import default_out_dir
    from eval.options import options_for, parse_patterns, parse_rates, parse_seeds
    from eval.references import check_references, read_references
    from students.checkpoint import find_checkpoints, unique_names
    from workbench.cli.common import data_config

    set_threads(threads)
    refs = read_references(reference or [])
    paths = find_checkpoints(checkpoints)
    names = unique_names(paths)
    dcfg = data_config(data, []) if data else None
    common = dict(
        split=split, batch_size=batch_size, cost=not no_cost, device=device,
        missing_rates=parse_rates(missing_rates) if missing_rates is not None else None,
        seeds=parse_seeds(seeds) if seeds is not None else None,
        patterns=parse_patterns(missing_modality) if missing_modality else None,
        latency_samples=latency_samples, speed_samples=speed_samples,
        device_cost_per_hour=device_cost_per_hour,
        dataset_rates=parse_rates(dataset_missing_rates) if dataset_missing_rates else [],
        instance_probs=parse_rates(instance_missing_probs) if instance_missing_probs else [])
    options = [options_for(p, **common) for p in paths]
    check_references(refs, split=options[0].split)  # before the checkpoints run
    board_too = len(paths) > 1 or bool(refs)
    evals, datasets = [], {}
    for path, name, opts in zip(paths, names, options, strict=True):
        target = (out / name if board_too else out) if out else \
            default_out_dir(path, opts.split)
        evals.append(evaluate_one(path, opts, dcfg, data_source=data or "", datasets=datasets,
                                  name=name, out=target))
    if board_too:
        print_leaderboard(evals, refs, out or Path(os.path.commonpath(
            [p.resolve().parent for p in paths])) / f"leaderboard-{evals[0].split}")


def print_leaderboard(evals: list, refs: list, board_dir: Path) -> None:
    """Write the leaderboard of ``evals`` (and reference rows) and print it."""
    from eval.leaderboard import group_lines, leaderboard, reference_lines, write_leaderboard

    board = leaderboard(evals, refs)
    written = write_leaderboard(evals, board_dir, refs)
    console.print()
    console.print(f"{len(board['groups'])} recipe group(s):", highlight=False)
    for line in group_lines(board["groups"]):
        console.print("  " + escape(line), highlight=False)
    for line in reference_lines(board["references"])[1:]:
        console.print(("  " if line.startswith("-") else "") + escape(line), highlight=False)
    print_metric_tables(f"leaderboard, {board['split']} split, complete inputs",
                        board["complete"], board["metric_set"], "checkpoint")
    if board["lnln"]:
        print_metric_tables("LNLN average over missing rates (mean ± std over seeds)",
                            board["lnln"], board["metric_set"], "checkpoint")
    console.print("wrote " + ", ".join(escape(str(p)) for p in written))
