"""Summaries, leaderboard tables and results files for evaluation runs (pure; no printing).

Formatting (decided by metric name, see ``is_percent_metric``):

- accuracies and F1 scores (names starting with ``acc`` or ``f1``) are shown ×100 with one
  decimal: 0.8254 -> ``82.5``;
- every other metric (``mae``, ``corr``, ...) is shown as is with three decimals: ``0.712``;
- a cell holding (mean, std) reads ``"mean ± std"`` in the same unit; a missing cell ``n/a``.

Stored numbers (``results.json``) are never scaled or rounded.

``results.json`` schema (written by ``write_results``; keys sorted, floats as computed, NaN
written as the ``NaN`` token Python's ``json`` reads back)::

    {
      "metric_set":  "mosi" | "sims" | "classification",      # optional; orders columns
      "leaderboard": {                                         # optional
        "<run or variant name>": {"<metric>": [mean, std] | value, ...}, ...
      },
      "robustness": {           # optional; a missing-rate sweep (one summary given alone is
                                # written under the name "model")
        "<checkpoint or variant name>": {
          "rates":    [0.0, 0.1, ..., 0.9],                    # ascending
          "n_runs":   {"<rate>": int, ...},                    # seeds per rate
          "per_rate": {"<rate>": {"<metric>": [mean, std], ...}, ...},
          "average":  {"<metric>": mean over rates of the per-rate means, ...}
        }, ...
      },
      "meta": {"<key>": <any JSON value>, ...},                # optional: checkpoint, seeds, ...
      "<anything else>": <any JSON value>                      # kept; shown as a JSON block
    }

Rate keys are written as ``repr(float(rate))`` (``"0.0"``, ``"0.1"``, ...). Tuples become
lists, numpy scalars and arrays become plain numbers and lists, paths become strings.
``results.md`` renders the same content as Markdown tables.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from workbench.io import atomic_write_text
from workbench.metrics import METRIC_NAMES

log = logging.getLogger(__name__)

MeanStd = tuple[float, float]
Cell = float | int | Sequence[float] | None
"""A table cell: a single value, a (mean, std) pair (tuple or list), or None when missing."""

MISSING = "n/a"
PERCENT_PREFIXES: tuple[str, ...] = ("acc", "f1")


class RobustnessSummary(TypedDict):
    """Per-rate summary of a missing-rate sweep (see ``robustness_summary``)."""

    rates: list[float]
    n_runs: dict[float, int]
    per_rate: dict[float, dict[str, MeanStd]]
    average: dict[str, float]


# --------------------------------------------------------------------------- summaries


def summarize(runs: Sequence[Mapping[str, float]]) -> dict[str, MeanStd]:
    """Mean and sample standard deviation (ddof=1) of each metric over ``runs``.

    Each run is ``{metric: value}`` (e.g. one seed); all runs must have the same metrics.
    With a single run, or runs that agree exactly, the std is 0.0 and the mean the value
    itself (not float noise of the summation). Metric order follows the first run.
    """
    if not runs:
        raise ValueError("summarize needs at least one run; got an empty list")
    names = list(runs[0])
    expected = set(names)
    for i, run in enumerate(runs[1:], start=1):
        if set(run) != expected:
            missing = sorted(expected - set(run))
            extra = sorted(set(run) - expected)
            raise ValueError(
                f"run {i} has different metrics from run 0: missing {missing}, extra {extra}"
            )
    out: dict[str, MeanStd] = {}
    for name in names:
        values = np.array([float(run[name]) for run in runs], dtype=np.float64)
        if len(values) == 1 or bool(np.all(values == values[0])):
            out[name] = (float(values[0]), 0.0)
            continue
        out[name] = (float(np.mean(values)), float(np.std(values, ddof=1)))
    return out


def robustness_summary(per_rate: Mapping[float, Sequence[Mapping[str, float]]]) -> RobustnessSummary:
    """Summary of a missing-rate sweep (e.g. LNLN's rates 0.0, 0.1, ..., 0.9).

    ``per_rate`` maps each missing rate in ``[0, 1]`` to the metrics of its runs (one dict per
    seed). Returns the ascending rates, the number of runs per rate, the per-rate
    (mean, sample std) of each metric (``summarize``), and ``average``: for each metric the
    mean over rates of the per-rate means (each rate counts once, whatever its number of runs).
    Every rate must report the same metrics.
    """
    if not per_rate:
        raise ValueError("robustness_summary needs at least one missing rate; got none")
    rates = sorted(float(r) for r in per_rate)
    if len(set(rates)) != len(rates):
        raise ValueError(f"duplicate missing rates after conversion to float: {rates}")
    bad = [r for r in rates if not (0.0 <= r <= 1.0) or math.isnan(r)]
    if bad:
        raise ValueError(f"missing rates must lie in [0, 1]; got {bad}")
    by_float = {float(r): runs for r, runs in per_rate.items()}
    summaries: dict[float, dict[str, MeanStd]] = {}
    n_runs: dict[float, int] = {}
    for rate in rates:
        runs = by_float[rate]
        if not runs:
            raise ValueError(f"missing rate {rate} has no runs")
        summaries[rate] = summarize(runs)
        n_runs[rate] = len(runs)
    names = list(summaries[rates[0]])
    for rate in rates[1:]:
        if set(summaries[rate]) != set(names):
            raise ValueError(
                f"missing rate {rate} reports metrics {sorted(summaries[rate])}, "
                f"but rate {rates[0]} reports {sorted(names)}"
            )
    average = {
        name: float(np.mean([summaries[rate][name][0] for rate in rates])) for name in names
    }
    return {"rates": rates, "n_runs": n_runs, "per_rate": summaries, "average": average}


def robustness_variants(obj: Mapping[str, Any]) -> dict[str, RobustnessSummary]:
    """Normalize robustness summaries to ``{variant name: RobustnessSummary}``.

    Accepts one summary (as returned by ``robustness_summary``; named ``"model"``), a mapping
    of variant name to summaries, or either form read back from ``results.json`` (string rate
    keys, lists for (mean, std)).
    """
    if "per_rate" in obj:
        return {"model": _normalize_summary(obj, "model")}
    if not obj:
        raise ValueError("no robustness summaries given")
    return {str(name): _normalize_summary(s, str(name)) for name, s in obj.items()}


def _normalize_summary(obj: Any, name: str) -> RobustnessSummary:
    if not isinstance(obj, Mapping) or "per_rate" not in obj:
        raise ValueError(
            f"robustness summary {name!r} must be a mapping with 'per_rate' "
            "(the output of robustness_summary)"
        )
    per_rate = {
        float(r): {m: _mean_std(v, f"{name}/{r}/{m}") for m, v in metrics.items()}
        for r, metrics in obj["per_rate"].items()
    }
    rates = sorted(per_rate)
    n_runs = {float(r): int(n) for r, n in obj.get("n_runs", {}).items()}
    if "average" in obj:
        average = {m: float(v) for m, v in obj["average"].items()}
    else:
        names = list(per_rate[rates[0]]) if rates else []
        average = {m: float(np.mean([per_rate[r][m][0] for r in rates])) for m in names}
    return {"rates": rates, "n_runs": n_runs, "per_rate": per_rate, "average": average}


def _mean_std(value: Cell, where: str) -> MeanStd:
    if isinstance(value, (int, float, np.floating, np.integer)):
        return float(value), 0.0
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        return float(value[0]), float(value[1])
    raise ValueError(f"{where}: expected a value or a (mean, std) pair, got {value!r}")


# --------------------------------------------------------------------------- formatting


def is_percent_metric(metric: str) -> bool:
    """True for accuracies and F1 scores (names starting with ``acc`` or ``f1``), shown ×100."""
    return metric.startswith(PERCENT_PREFIXES)


def format_value(metric: str, value: float) -> str:
    """One number in the unit of ``metric``: ×100 with 1 decimal, or as is with 3 decimals."""
    v = float(value)
    if math.isnan(v):
        return "nan"
    if is_percent_metric(metric):
        return f"{100.0 * v:.1f}"
    return f"{v:.3f}"


def format_cell(metric: str, cell: Cell) -> str:
    """A table cell for ``metric``: ``"mean ± std"`` for a pair, one number for a value."""
    if cell is None:
        return MISSING
    if isinstance(cell, (int, float, np.floating, np.integer)):
        return format_value(metric, float(cell))
    mean, std = _mean_std(cell, metric)
    return f"{format_value(metric, mean)} ± {format_value(metric, std)}"


def order_metrics(names: Iterable[str], metric_set: str | None = None) -> list[str]:
    """Metric names in display order: those of ``metric_set`` (or of any known set) in their
    documented order first, then the others alphabetically; duplicates dropped."""
    present = list(dict.fromkeys(names))
    if metric_set is not None and metric_set in METRIC_NAMES:
        canonical = list(METRIC_NAMES[metric_set])
    else:
        canonical = list(dict.fromkeys(n for names_ in METRIC_NAMES.values() for n in names_))
    known = [n for n in canonical if n in present]
    rest = sorted(n for n in present if n not in canonical)
    return known + rest


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(
    rows: Mapping[str, Mapping[str, Cell]],
    columns: Sequence[str],
    *,
    name_header: str = "run",
) -> str:
    """A Markdown leaderboard: one line per named row, one column per metric in ``columns``.

    ``rows`` maps a run / variant name to ``{metric: (mean, std) or value}`` (e.g. the output
    of ``summarize``). Cells are formatted by ``format_cell``; metrics a row lacks read
    ``n/a``. Returns the table text ending with a newline.
    """
    if not columns:
        raise ValueError("markdown_table needs at least one column")
    header = "| " + " | ".join([_md_escape(name_header), *map(_md_escape, columns)]) + " |"
    rule = "|" + "|".join(["---"] + ["---:"] * len(columns)) + "|"
    lines = [header, rule]
    for name, metrics in rows.items():
        cells = [format_cell(c, metrics.get(c)) for c in columns]
        lines.append("| " + " | ".join([_md_escape(name), *cells]) + " |")
    return "\n".join(lines) + "\n"


def csv_table(
    rows: Mapping[str, Mapping[str, Cell]],
    columns: Sequence[str],
    *,
    name_header: str = "run",
    split_std: bool = False,
) -> str:
    """The same leaderboard as ``markdown_table`` as CSV text (comma-separated, quoted as needed).

    Cells read ``"mean ± std"`` in display units. With ``split_std=True`` each metric gets two
    columns, ``<metric>`` and ``<metric>_std``, each holding one formatted number.
    """
    if not columns:
        raise ValueError("csv_table needs at least one column")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if split_std:
        writer.writerow([name_header, *[h for c in columns for h in (c, f"{c}_std")]])
    else:
        writer.writerow([name_header, *columns])
    for name, metrics in rows.items():
        if split_std:
            cells: list[str] = []
            for c in columns:
                cell = metrics.get(c)
                if cell is None:
                    cells += [MISSING, MISSING]
                else:
                    mean, std = _mean_std(cell, c)
                    cells += [format_value(c, mean), format_value(c, std)]
        else:
            cells = [format_cell(c, metrics.get(c)) for c in columns]
        writer.writerow([name, *cells])
    return buf.getvalue()


def robustness_table(summary: RobustnessSummary, columns: Sequence[str] | None = None) -> str:
    """A Markdown table of one sweep: one line per missing rate (mean ± std over its runs)
    and a last line ``average`` (mean over rates of the per-rate means)."""
    names = columns if columns is not None else order_metrics(summary["average"])
    rows: dict[str, Mapping[str, Cell]] = {
        f"{rate:g}": summary["per_rate"][rate] for rate in summary["rates"]
    }
    rows["average"] = summary["average"]
    if all(n == 1 for n in summary.get("n_runs", {0: 2}).values()):
        rows = means_only(rows)  # one seed: no spread to show
    return markdown_table(rows, names, name_header="missing rate")


# --------------------------------------------------------------------------- results files


def to_jsonable(obj: Any, where: str = "results") -> Any:
    """``obj`` with tuples -> lists, numpy -> Python numbers/lists, paths -> strings, and
    float mapping keys -> ``repr(float(key))``; raises ``TypeError`` naming where it failed."""
    if obj is None or isinstance(obj, (bool, str, int, float)):
        return obj
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            skey = _json_key(key, where)
            if skey in out:
                raise TypeError(f"{where}: two keys map to the JSON key {skey!r}")
            out[skey] = to_jsonable(value, f"{where}.{skey}")
        return out
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    raise TypeError(f"{where}: cannot write a {type(obj).__name__} to JSON")


def _json_key(key: Any, where: str) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, (bool, np.bool_)):
        raise TypeError(f"{where}: boolean mapping key {key!r} is not allowed")
    if isinstance(key, (float, np.floating)):
        return repr(float(key))
    if isinstance(key, (int, np.integer)):
        return str(int(key))
    raise TypeError(f"{where}: mapping key {key!r} of type {type(key).__name__} is not allowed")


def means_only(rows: Mapping[str, Mapping[str, Cell]]) -> dict[str, dict[str, Cell]]:
    """``rows`` with each (mean, std) pair replaced by its mean: a summary over one run has
    no spread to show (no "± 0.0")."""
    return {name: {m: (c[0] if isinstance(c, Sequence) and not isinstance(c, str) else c)
                   for m, c in row.items()} for name, row in rows.items()}


def results_markdown(results: Mapping[str, Any], row_header: str = "condition") -> str:
    """Human-readable Markdown for a results dict (schema in the module docstring);
    ``row_header`` names the leaderboard's rows (a checkpoint's input conditions, or
    checkpoints)."""
    metric_set = results.get("metric_set")
    lines = ["# Results", ""]
    if metric_set is not None:
        lines.append(f"Metric set: `{metric_set}`.")
    lines += [
        "Accuracies and F1 scores are ×100; MAE and Corr as is. "
        "Cells read mean ± sample std over runs.",
        "",
    ]
    board = results.get("leaderboard")
    if board:
        cols = order_metrics((m for row in board.values() for m in row), metric_set)
        lines += ["## Leaderboard", "", markdown_table(board, cols, name_header=row_header)]
    robust = results.get("robustness")
    if robust:
        lines += ["## Robustness to missing modalities", ""]
        for name, summary in robustness_variants(robust).items():
            cols = order_metrics(summary["average"], metric_set)
            lines += [f"### {_md_escape(name)}", "", robustness_table(summary, cols)]
    cyin = results.get("cyin_protocol")
    if cyin:
        lines += ["## CyIN protocol", "", "### Fixed subsets of available modalities", ""]
        fixed = cyin["fixed_subsets"]
        lines.append(markdown_table(fixed, order_metrics(
            (m for row in fixed.values() for m in row), metric_set)))
        for kind, title in (("dataset_rate", "Dataset-level missing rate"),
                            ("instance_prob", "Instance-level missing probability")):
            if cyin.get(kind):
                cols = order_metrics(cyin[kind]["average"], metric_set)
                lines += [f"### {title} (mean ± std over seeds)", "",
                          robustness_table(cyin[kind], cols)]
    meta = results.get("meta")
    if meta:
        lines += ["## Meta", ""]
        for key in sorted(meta):
            value = meta[key]
            shown = value if isinstance(value, (str, int, float)) else json.dumps(
                to_jsonable(value, f"meta.{key}"), sort_keys=True
            )
            lines.append(f"- **{_md_escape(key)}**: {shown}")
        lines.append("")
    known = {"metric_set", "leaderboard", "robustness", "meta"}
    for key in sorted(k for k in results if k not in known):
        body = json.dumps(to_jsonable(results[key], key), sort_keys=True, indent=2)
        lines += [f"## {_md_escape(key)}", "", "```json", body, "```", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def write_results(out_dir: str | os.PathLike[str], results: Mapping[str, Any],
                  row_header: str = "condition") -> tuple[Path, Path]:
    """Write ``results.json`` (sorted keys, floats unrounded) and ``results.md`` to ``out_dir``.

    The directory is created if needed; each file is written atomically
    (:func:`workbench.io.atomic_write_text`). Returns ``(json_path, markdown_path)``.
    """
    if not isinstance(results, Mapping):
        raise TypeError(f"results must be a mapping; got {type(results).__name__}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    normalized = dict(results)
    if normalized.get("robustness"):
        normalized["robustness"] = robustness_variants(normalized["robustness"])
    payload = to_jsonable(normalized)
    json_text = json.dumps(payload, sort_keys=True, indent=2, allow_nan=True) + "\n"
    md_text = results_markdown(results, row_header)
    json_path, md_path = out / "results.json", out / "results.md"
    atomic_write_text(json_path, json_text)
    atomic_write_text(md_path, md_text)
    log.info("wrote %s and %s", json_path, md_path)
    return json_path, md_path
