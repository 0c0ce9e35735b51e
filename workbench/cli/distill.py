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

