"""The ``workbench`` command: one module per command group, each a thin layer over the
library entries.

======================  ===============================================================
``common``              consoles, logging set-up, the one error handler, data sources,
                        ``--threads`` / ``--device``
``logs``                other libraries quiet unless ``-v`` (shared with ``distill.py``)
``data``                ``data validate / import / synth / augment / stats``
``cache``               ``cache run / status / retry / export / merge``
``evaluate``            ``eval`` (and the 80-column metric tables)
``references``          ``baselines``, ``eval-teacher`` (reference rows for ``eval``)
``predict``             ``predict``, ``export``
``distill``             ``distill``
``demo``                ``demo`` (prints :func:`eval.demo.run_demo`)
``doctor``              ``doctor``
======================  ===============================================================

Every :class:`~workbench.errors.WorkbenchError` a command raises reaches the terminal as
one ``error: ...`` line and the error's exit code (:class:`~workbench.cli.common.WorkbenchGroup`).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from workbench.cli import (
    cache,
    data,
    demo,
    distill,
    doctor,
    domains,
    evaluate,
    predict,
    references,
)
from workbench.cli.common import WorkbenchGroup, err_console, setup_logging

app = typer.Typer(
    cls=WorkbenchGroup,
    help="Distil multimodal LLM teachers into compact multimodal sentiment students.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data.app, name="data")
app.add_typer(cache.app, name="cache")
app.command("eval")(evaluate.eval_checkpoints)
app.command("predict")(predict.predict_cmd)
app.command("export")(predict.export_cmd)
app.command("distill")(distill.distill)
app.command("eval-domains")(domains.eval_domains)
app.command("eval-cross")(domains.eval_cross)
app.command("baselines")(references.baselines)
app.command("eval-teacher")(references.eval_teacher)
app.command("demo")(demo.demo)
app.command("doctor")(doctor.doctor)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Debug logging, and other libraries' logs, warnings and "
                                "progress bars.")] = False,
) -> None:
    setup_logging(verbose)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


__all__ = ["app", "main"]
