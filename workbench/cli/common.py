"""What every command group shares: the consoles, logging set-up, the one error handler,
data sources, and the ``--threads`` / ``--device`` options."""

from __future__ import annotations

import logging
import os
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from workbench.config import ConfigError, DataConfig, load_config
from workbench.errors import WorkbenchError

console = Console(emoji=False)  # ":b:" in a message stays ":b:"
err_console = Console(stderr=True, emoji=False)
log = logging.getLogger("workbench")


def setup_logging(verbose: bool) -> None:
    """The workbench's own INFO lines on stderr; other libraries quiet unless ``verbose``.

    Also takes the console width from ``COLUMNS`` as it is now (rich reads it once, when a
    console is made; a process may run several commands, e.g. tests)."""
    from rich.logging import RichHandler

    from workbench.cli.logs import quiet_libraries

    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        console.width = err_console.width = int(columns)

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, show_time=False)],
        force=True,
    )
    quiet_libraries(verbose)


def print_error(e: WorkbenchError) -> None:
    """``error: <message>`` on stderr, no traceback (with ``-v`` the traceback is logged)."""
    log.debug("traceback of the error below", exc_info=e)
    err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)


class WorkbenchGroup(TyperGroup):
    """The command group: every :class:`WorkbenchError` a command raises becomes one message
    and the exit code the error names (2; a failed teacher job 1)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except WorkbenchError as e:
            print_error(e)
            raise typer.Exit(e.exit_code) from None


def new_app(help: str, **kw: Any) -> typer.Typer:
    """A command group with the workbench's defaults (help without arguments)."""
    return typer.Typer(help=help, no_args_is_help=True, **kw)


# --------------------------------------------------------------------------- data


def data_config(source: str, overrides: list[str]) -> DataConfig:
    """A :class:`DataConfig` from a YAML file or a dataset path, plus overrides."""
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"expected key=value overrides after SOURCE, got {bad}")
    if source.endswith((".yaml", ".yml")):
        return load_config(DataConfig, source, overrides, section="data")
    from workbench.data import imported_info

    info = imported_info(source)
    seeded = []
    if info is not None:  # an imported dataset describes itself; overrides still win
        seeded = [f"name={info.name}", f"task={info.task}", f"metric_set={info.metric_set}",
                  f"label_range={list(info.label_range)}", f"class_names={info.class_names}"]
    return load_config(DataConfig, None, [f"path={source}", *seeded, *overrides], section="data")


def load_data(source: str, overrides: list[str] | None):
    """``(DataConfig, MSADataset)`` of a SOURCE argument and its overrides."""
    from workbench.data import load_dataset

    cfg = data_config(source, overrides or [])
    return cfg, load_dataset(cfg)


SourceArg = Annotated[str, typer.Argument(help="Data YAML config, or a dataset path.")]
OverridesArg = Annotated[
    list[str] | None, typer.Argument(help="DataConfig overrides, e.g. modalities=[text,audio].")
]


# ------------------------------------------------------------------ threads, device

ThreadsOpt = Annotated[int, typer.Option(help="Torch CPU threads (0: torch's default).")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]


def set_threads(threads: int) -> None:
    """Apply a ``--threads`` option: 0 keeps torch's default."""
    if threads < 0:
        raise ConfigError(f"--threads={threads}: use 0 (torch's default) or a positive count")
    if threads:
        import torch

        torch.set_num_threads(threads)


def check_empty_out(out, force: bool) -> None:
    """Refuse a non-empty output directory unless ``--force``."""
    if out.exists() and any(out.iterdir()) and not force:
        raise ConfigError(f"{out} exists and is not empty: choose another --out or pass --force")
