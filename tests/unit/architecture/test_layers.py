"""The house rules, read from the code: imports point one way, and modules stay small.

Layers, lowest first: the core (``workbench``: config, data, cache, metrics, models, io,
errors) < ``prompts`` < ``teachers`` < ``students`` < ``eval`` < entry points
(``workbench/cli/``, ``distill.py``, ``bench/``). A module may import its own layer or a
lower one -- at the top of the file or inside a function -- and nothing outside ``tests/``
imports ``tests``. The checker is tested on a small tree that breaks each rule.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
PACKAGES = ("workbench", "prompts", "teachers", "students", "eval")
MAX_LINES = 600
ENTRY = 5
RANK = {"workbench": 0, "prompts": 1, "teachers": 2, "students": 3, "eval": 4}
NAMES = {0: "core (workbench)", 1: "prompts", 2: "teachers", 3: "students", 4: "eval",
         ENTRY: "entry points"}


@dataclass(frozen=True)
class Violation:
    file: str
    line: int
    imported: str
    why: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: imports {self.imported}: {self.why}"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of_module(name: str) -> int | None:
    """The layer of a project module name; None for third-party and stdlib modules."""
    top = name.split(".")[0]
    if name == "workbench.cli" or name.startswith("workbench.cli."):
        return ENTRY
    if top in ("bench", "distill"):
        return ENTRY
    return RANK.get(top)


def imports_of(path: Path, root: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports (top level and inside functions), with its line."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            out.append((node.lineno, target))
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(
                node.func, "id", None)) == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            out.append((node.lineno, node.args[0].value))
    return out


def source_files(root: Path) -> list[Path]:
    files = [p for pkg in (*PACKAGES, "bench") for p in sorted((root / pkg).rglob("*.py"))]
    if (root / "distill.py").is_file():
        files.append(root / "distill.py")
    return files


def violations(root: Path) -> list[Violation]:
    found: list[Violation] = []
    for path in source_files(root):
        rel = path.relative_to(root).as_posix()
        mine = layer_of_module(module_name(path, root))
        assert mine is not None, rel
        for line, name in imports_of(path, root):
            if name == "tests" or name.startswith("tests."):
                found.append(Violation(rel, line, name, "only tests/ may import tests"))
                continue
            theirs = layer_of_module(name)
            if theirs is not None and theirs > mine:
                found.append(Violation(rel, line, name, f"{NAMES[mine]} may not import the "
                                                        f"higher layer {NAMES[theirs]}"))
    return found


def oversized(root: Path) -> list[str]:
    out = []
    for pkg in PACKAGES:
        for p in sorted((root / pkg).rglob("*.py")):
            n = len(p.read_text(encoding="utf-8").splitlines())
            if n > MAX_LINES:
                out.append(f"{p.relative_to(root)}: {n} lines (split it: at most {MAX_LINES})")
    return out


def test_imports_point_one_way():
    bad = violations(REPO)
    assert not bad, "upward imports:\n" + "\n".join(map(str, bad))


def test_no_package_module_above_600_lines():
    big = oversized(REPO)
    assert not big, "\n".join(big)


def test_the_checker_catches_each_kind_of_violation(tmp_path):
    files = {
        "workbench/__init__.py": "",
        "workbench/data.py": "def f():\n    from students.model import X\n",  # in a function
        "workbench/cli/__init__.py": "import eval.evaluate\nimport students\n",   # entry: fine
        "prompts/__init__.py": "from workbench import data\n",                  # downward: fine
        "teachers/__init__.py": "from . import job\n",
        "teachers/job.py": "from prompts import render\n",
        "workbench/cache/__init__.py": "from ..cli import main\n",             # relative, upward
        "students/__init__.py": "",
        "students/model.py": "import importlib\nimportlib.import_module('eval.cost')\n",
        "eval/__init__.py": "from tests.support import x\n",                    # tests
        "bench/b.py": "from tests.support.fake import F\nimport eval\n",
        "distill.py": "from workbench.cli import main\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    (tmp_path / "students" / "big.py").write_text("x = 1\n" * (MAX_LINES + 1))
    got = {(v.file, v.imported) for v in violations(tmp_path)}
    assert got == {
        ("workbench/data.py", "students.model"),
        ("workbench/cache/__init__.py", "workbench.cli"),
        ("students/model.py", "eval.cost"),
        ("eval/__init__.py", "tests.support"),
        ("bench/b.py", "tests.support.fake"),
    }
    assert oversized(tmp_path) == [f"students/big.py: {MAX_LINES + 1} lines (split it: at most "
                                   f"{MAX_LINES})"]
