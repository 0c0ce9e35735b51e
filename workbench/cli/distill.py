"""``workbench distill``: train a student in this process (the same ``train(cfg)`` as
``accelerate launch distill.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from workbench.cli.common import console


def distill(
    config: Annotated[Path, typer.Option(help="Distillation recipe (configs/distill/...).")],
    resume: Annotated[bool, typer.Option(help="Continue the run in train.output_dir.")] = False,
    overrides: Annotated[list[str] | None, typer.Argument(help="section.key=value overrides")] = None,
) -> None:
    """Train a student in this process (multi-GPU: `accelerate launch distill.py ...`)."""
    from students.trainer import train
    from workbench.config import DistillConfig, load_config

    cfg = load_config(DistillConfig, config, overrides or [])
    best = train(cfg, resume=resume)
    console.print(f"best checkpoint: {escape(str(best))}")


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
