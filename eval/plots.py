"""Plots of evaluation results, drawn with matplotlib's Agg canvas (no display, no pyplot state).

Units follow ``eval.report``: accuracies and F1 scores are drawn ×100, other metrics as is.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from eval.report import is_percent_metric, robustness_variants

log = logging.getLogger(__name__)

DEFAULT_ROBUSTNESS_METRICS: tuple[str, ...] = ("acc2_non0", "f1_non0", "mae")


def robustness_curve(
    per_rate_summary: Mapping[str, Any],
    metrics: Sequence[str] = DEFAULT_ROBUSTNESS_METRICS,
    *,
    out_path: str | os.PathLike[str],
    dpi: int = 120,
) -> Path:
    """Draw metric vs missing rate and save it as a PNG at ``out_path``; returns the path.

    ``per_rate_summary`` is one ``robustness_summary`` result, a mapping of checkpoint /
    variant name to such results (one line each), or the ``"robustness"`` section read back
    from ``results.json``. One panel per metric: x is the missing rate, y the mean over runs
    at that rate, with a shaded band of ± one sample std. The parent directory is created.
    """
    if not metrics:
        raise ValueError("robustness_curve needs at least one metric to plot")
    variants = robustness_variants(per_rate_summary)
    for name, summary in variants.items():
        for rate in summary["rates"]:
            missing = [m for m in metrics if m not in summary["per_rate"][rate]]
            if missing:
                have = sorted(summary["per_rate"][rate])
                raise ValueError(
                    f"variant {name!r} at missing rate {rate} lacks metric(s) {missing}; "
                    f"it has {have}"
                )

    fig = Figure(figsize=(4.2 * len(metrics), 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics, strict=True):
        scale = 100.0 if is_percent_metric(metric) else 1.0
        for name, summary in variants.items():
            rates = np.asarray(summary["rates"], dtype=np.float64)
            mean = scale * np.array([summary["per_rate"][r][metric][0] for r in summary["rates"]])
            std = scale * np.array([summary["per_rate"][r][metric][1] for r in summary["rates"]])
            (line,) = ax.plot(rates, mean, marker="o", markersize=3, label=name)
            ax.fill_between(rates, mean - std, mean + std, color=line.get_color(), alpha=0.2,
                            linewidth=0)
        ax.set_title(metric)
        ax.set_xlabel("missing rate")
        ax.set_ylabel(f"{metric} (×100)" if scale != 1.0 else metric)
        ax.grid(True, alpha=0.3)
    if len(variants) > 1:
        axes[0].legend(fontsize="small")

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=dpi)
    log.info("wrote robustness curve for %d variant(s) to %s", len(variants), out)
    return out
