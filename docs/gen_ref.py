"""Generated references, so they cannot drift from the code.

An MkDocs hook (``hooks:`` in ``mkdocs.yml``): at every build it writes two pages into the
site without putting them in ``docs/``:

* ``reference/config.md`` -- every config section as users write it (``teacher``,
  ``train.msmix``, ...), each field with its type, its default and its attribute
  docstring (the string literal right after the field in ``workbench/config/*.py``, read
  with :mod:`ast`);
* ``reference/cli.md`` -- every ``workbench`` command and subcommand from the Typer app:
  usage, help, arguments and options with their defaults.

``python docs/gen_ref.py OUT_DIR`` writes the same two files to ``OUT_DIR`` to read them
without building the site.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import json
import re
import sys
import typing
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the hook is loaded from its path, not as a package
    sys.path.insert(0, str(REPO))

CONFIG_PAGE = "reference/config.md"
CLI_PAGE = "reference/cli.md"

# The files a user writes, the class each holds, and where those files live.
ROOTS = (
    ("DistillConfig", "a distillation recipe (`configs/distill/`; "
                      "`accelerate launch distill.py --config ...`)"),
    ("CacheJobConfig", "a caching job (`configs/cache/`; `workbench cache run --config ...`)"),
    ("MediaJobConfig", "a media ingestion job (`workbench data media ...`)"),
)
# Sections that are also whole files of their own.
OWN_FILES = {
    "data": "`configs/data/*.yaml`",
    "teacher": "`configs/teachers/*.yaml`",
    "eval": "`configs/eval/*.yaml`",
}


# -- text --------------------------------------------------------------------------------

def md_text(text: str) -> str:
    """Docstring or help text (reStructuredText-ish) as Markdown on one line: ``x`` and
    :role:`x` become code spans; outside code spans, characters Markdown or HTML would
    eat (``<``, ``*``, ``_``, ``|``) are escaped."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"``\1``", text)
    text = text.replace("``", "`")
    text = " ".join(line.strip() for line in text.replace("\b", "").splitlines() if line.strip())
    parts = text.split("`")
    if len(parts) % 2 == 0:  # an unbalanced backtick: treat the text as plain
        parts = [text.replace("`", "'")]
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append("`" + part + "`")  # the tables extension keeps | in code spans
        else:
            part = part.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            part = re.sub(r"([*_|\[\]\\])", r"\\\1", part)
            part = re.sub(r"\\\*\\\*(\S(?:.*?\S)?)\\\*\\\*", r"**\1**", part)  # **bold**
            out.append(part)
    return "".join(out)


def code(text: str) -> str:
    """``text`` as an inline code span (a ``|`` in it does not split a table cell)."""
    tick = "``" if "`" in text else "`"
    pad = " " if tick == "``" else ""
    return f"{tick}{pad}{text}{pad}{tick}"


# -- config reference --------------------------------------------------------------------

def attribute_docs(source: str) -> dict[str, dict[str, str]]:
    """``{class name: {field name: docstring}}`` for every class in ``source``: the string
    literal statement right after an annotated assignment documents that field."""
    docs: dict[str, dict[str, str]] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        fields: dict[str, str] = {}
        body = node.body
        for stmt, after in zip(body, body[1:], strict=False):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                fields[stmt.target.id] = inspect.cleandoc(after.value.value)
        docs[node.name] = fields
    return docs


def default_sources(source: str) -> dict[str, dict[str, str]]:
    """``{class name: {field name: the default's source text}}`` (plain defaults only)."""
    out: dict[str, dict[str, str]] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            out[node.name] = {
                stmt.target.id: ast.get_source_segment(source, stmt.value) or ""
                for stmt in node.body
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                and stmt.value is not None}
    return out


def show_default(value: object) -> str:
    """A default as it would be written in YAML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value) if value == "" or value.strip() != value else value
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value)


REQUIRED = object()


@dataclasses.dataclass
class Section:
    key: str            # dotted, as users write it: "teacher", "train.msmix"; "" = top level
    cls: type
    rows: list[tuple[str, str, str, str]]  # key, type, default, doc


def source_path(cls: type) -> str:
    """Where ``cls`` is defined, relative to the repository holding its package."""
    path = Path(inspect.getfile(cls)).resolve()
    root = Path(inspect.getfile(importlib.import_module("workbench"))).resolve().parents[1]
    return path.relative_to(root).as_posix()


def _class_info(cls: type) -> tuple[dict[str, str], dict[str, str]]:
    source = Path(inspect.getfile(cls)).read_text(encoding="utf-8")
    return (attribute_docs(source).get(cls.__name__, {}),
            default_sources(source).get(cls.__name__, {}))


def config_sections(root: type, prefix: str = "") -> list[Section]:
    """The sections of ``root``: its own fields, then each nested config object's, depth
    first, each named by its dotted key."""
    hints = typing.get_type_hints(root)
    docs, sources = _class_info(root)
    rows, nested = [], []
    for f in dataclasses.fields(root):
        key = f"{prefix}{f.name}"
        kind = hints.get(f.name)
        if dataclasses.is_dataclass(kind):
            nested.append((key, kind))
            rows.append((key, kind.__name__, f"see [`{key}`](#{key})",
                         docs.get(f.name, "")))
            continue
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            value = REQUIRED
        shown = "(required)" if value is REQUIRED else code(show_default(value))
        src = sources.get(f.name, "")
        if (src and f.default is not dataclasses.MISSING and not isinstance(value, str)
                and src not in (show_default(value), repr(value))):
            shown += f" ({code(src)})"
        rows.append((key, str(f.type), shown, docs.get(f.name, "")))
    out = [Section(prefix.rstrip("."), root, rows)]
    for key, kind in nested:
        out += config_sections(kind, key + ".")
    return out


def all_sections() -> list[tuple[str, list[Section]]]:
    """Per root file kind, its sections; a section already shown under an earlier root
    (``data`` in every recipe) is shown once."""
    config = importlib.import_module("workbench.config")
    seen: set[str] = set()
    out = []
    for name, _ in ROOTS:
        sections = []
        for s in config_sections(getattr(config, name)):
            if s.key and s.key in seen:
                continue
            seen.add(s.key)
            sections.append(s)
        out.append((name, sections))
    return out


def config_reference() -> str:
    lines = [
        "# Config reference",
        "",
        "Generated from the config dataclasses in `workbench/config/` at every docs build "
        "(`docs/gen_ref.py`): each field's type, its default and its documentation (the "
        "string right after the field in the source). How configs are loaded, overridden "
        "and included: [Configuration](../configuration.md).",
        "",
        "Keys are written as in a recipe and on the command line (`section.key=value`, "
        "e.g. `teacher.max_response_bytes=16777216`). A section that is a file of its own "
        "(`data`, `teacher`, `eval`) holds the same keys at its top level, without the "
        "section's name.",
        "",
    ]
    for (root_name, sections), (_, what) in zip(all_sections(), ROOTS, strict=True):
        for s in sections:
            title = s.key or f"{root_name} (top level)"
            anchor = s.key or root_name
            lines += [f"## `{title}` {{#{anchor}}}", ""]
            where = [f"`{s.cls.__name__}` in `{source_path(s.cls)}`"]
            if not s.key:
                where.append(f"the top-level keys of {what}")
            if s.key in OWN_FILES:
                where.append(f"also a file of its own: {OWN_FILES[s.key]}")
            lines += ["; ".join(where) + ".", ""]
            if s.cls.__doc__:
                lines += [md_text(inspect.cleandoc(s.cls.__doc__)), ""]
            lines += ["| key | type | default | description |", "|---|---|---|---|"]
            for key, kind, default, doc in s.rows:
                lines.append(f"| {code(key)} | {code(kind)} | {default} | "
                             f"{md_text(doc) if doc else ''} |")
            lines.append("")
    return "\n".join(lines)


# -- CLI reference -----------------------------------------------------------------------

def _commands(cmd, name: str, parent=None):
    """``(ctx, command)`` for ``cmd`` and every subcommand, depth first."""
    ctx = cmd.context_class(cmd, info_name=name, parent=parent)
    yield ctx, cmd
    if hasattr(cmd, "list_commands"):
        for sub in cmd.list_commands(ctx):
            child = cmd.get_command(ctx, sub)
            if child is not None and not getattr(child, "hidden", False):
                yield from _commands(child, sub, ctx)


def command_paths() -> list[str]:
    """Every command path, e.g. ``workbench cache run`` (the tests compare against it)."""
    return [ctx.command_path for ctx, _ in _commands(_cli_command(), "workbench")]


def _cli_command():
    import typer

    cli = importlib.import_module("workbench.cli")
    return typer.main.get_command(cli.app)


def cli_reference() -> str:
    lines = [
        "# CLI reference",
        "",
        "Generated from the `workbench` Typer app (`workbench.cli:app`) at every docs build "
        "(`docs/gen_ref.py`); `workbench COMMAND --help` prints the same. A trailing "
        "`OVERRIDES...` takes `section.key=value` pairs: see the "
        "[config reference](config.md).",
        "",
    ]
    for ctx, cmd in _commands(_cli_command(), "workbench"):
        path = ctx.command_path
        depth = len(path.split())
        lines += [f"{'#' * min(depth + 1, 4)} `{path}` {{#{path.replace(' ', '-')}}}", ""]
        lines += ["```text", cmd.get_usage(ctx), "```", ""]
        help_text = inspect.cleandoc(cmd.help or "")
        for para in re.split(r"\n\s*\n", help_text):
            if para.strip():
                lines += [md_text(para), ""]
        rows = []
        for p in cmd.params:
            if getattr(p, "hidden", False):
                continue
            record = p.get_help_record(ctx)
            if record is None:
                continue
            names, desc = record
            rows.append(f"| {code(names)} | {md_text(desc)} |")
        if rows:
            lines += ["| argument / option | description |", "|---|---|", *rows, ""]
        if hasattr(cmd, "list_commands"):
            subs = [f"[`{path} {s}`](#{path.replace(' ', '-')}-{s})"
                    for s in cmd.list_commands(ctx)
                    if not getattr(cmd.get_command(ctx, s), "hidden", False)]
            lines += ["Commands: " + ", ".join(subs) + ".", ""]
    return "\n".join(lines)


PAGES = {CONFIG_PAGE: config_reference, CLI_PAGE: cli_reference}


# -- the MkDocs hook ---------------------------------------------------------------------

def on_files(files, config):
    """Add the generated pages to the build (nothing is written to ``docs/``)."""
    from mkdocs.structure.files import File

    for src, make in PAGES.items():
        old = files.get_file_from_path(src)
        if old is not None:
            files.remove(old)
        files.append(File.generated(config, src, content=make()))
    return files


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python docs/gen_ref.py OUT_DIR", file=sys.stderr)
        return 2
    for src, make in PAGES.items():
        path = Path(argv[0]) / src
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(make(), encoding="utf-8")
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
