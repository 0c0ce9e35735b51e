"""``workbench doctor``: versions, devices, and which optional backends work here."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from workbench.cli.common import console


def doctor() -> None:
    """Versions, devices, and which optional backends work here (and why not)."""
    from workbench.doctor import report

    rows = report()
    table = Table(title="workbench doctor", title_justify="left")
    table.add_column("check", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("detail", overflow="fold")
    for name, ok, detail in rows:
        mark = {True: "[green]ok[/]", False: "[red]no[/]", None: "[yellow]info[/]"}[ok]
        table.add_row(escape(name), mark, escape(detail))
    console.print(table)
