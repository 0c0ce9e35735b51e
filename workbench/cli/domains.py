"""``workbench eval-domains`` and ``workbench eval-cross``: MIDG's domain-generalization
protocols (leave one domain out; a checkpoint reported on another dataset)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from workbench.cli.common import console


def eval_domains(
    config: Annotated[Path, typer.Option(help="Distillation recipe whose data declares "
                                               "domains (data.domain).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory of the runs and tables.")],
    split: Annotated[str, typer.Option(help="Split reported on each held-out domain.")] = "test",
    overrides: Annotated[list[str] | None, typer.Argument(help="section.key=value overrides")] = None,
) -> None:
    """Leave one domain out: per domain, train without it and report on it (MIDG's protocol)."""
    from eval.domains import leave_one_domain_out
    from eval.options import EvalOptions
    from workbench.config import DistillConfig, load_config

    cfg = load_config(DistillConfig, config, overrides or [])
    res = leave_one_domain_out(cfg, out, EvalOptions(split=split, cost=False, patterns=[]),
                               progress=lambda msg: console.print(escape(msg)))
    for d, metrics in res["domains"].items():
        shown = ", ".join(f"{k}={v:.3f}" for k, v in list(metrics.items())[:6])
        console.print(f"held out {escape(d)} ({res['n_samples'][d]}): {escape(shown)}")
    console.print(f"wrote {escape(str(out / 'lodo.md'))} and lodo.json")


def eval_cross(
    checkpoint: Annotated[Path, typer.Argument(help="Student checkpoint (checkpoint-best/).")],
    data: Annotated[Path, typer.Option(help="Data YAML of the other dataset.")],
    score_classes: Annotated[str, typer.Option(
        help="Thresholds mapping scores to classes, e.g. -0.5,0.5 (negative / neutral / "
             "positive); needed when one side is regression and the other classification.")
    ] = "",
    split: Annotated[str, typer.Option(help="Split of the other dataset to report.")] = "test",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write cross.json here.")] = None,
) -> None:
    """Cross-dataset evaluation: report a checkpoint on another dataset (MIDG's protocol)."""
    import json

    from eval.cross import evaluate_cross
    from eval.options import EvalError
    from workbench.cli.common import data_config

    try:
        thresholds = [float(t) for t in score_classes.split(",") if t.strip()]
    except ValueError:
        raise EvalError(f"--score-classes={score_classes!r}: give comma-separated numbers, "
                        "e.g. -0.5,0.5") from None
    res = evaluate_cross(checkpoint, data_config(str(data), []), split, thresholds)
    shown = ", ".join(f"{k}={v:.4f}" for k, v in res.metrics.items())
    console.print(f"{escape(res.trained_on)} -> {escape(res.reported_on)} ({res.split}, "
                  f"{res.n_samples}; mapping {escape(res.mapping)}): {escape(shown)}")
    if out is not None:
        from workbench.io import atomic_write_text

        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "cross.json", json.dumps(res.as_dict(), indent=2) + "\n")
