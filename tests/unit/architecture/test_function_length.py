"""No function is over 80 lines in the packages held to it (a longer one is several steps
that want names of their own). Counted from the ``def`` line to the function's last line,
docstring and comments included; a method or nested function counts on its own and inside
the function that holds it. The checker is tested on a small tree.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
MAX_FUNCTION_LINES = 80
HELD = ("students", "teachers")
"""Packages whose every function stays within :data:`MAX_FUNCTION_LINES`."""


def long_functions(root: Path, packages: tuple[str, ...] = HELD,
                   limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``path:line: name is N lines`` for every function of ``packages`` over ``limit``."""
    out = []
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            defs = sorted((node for node in ast.walk(tree)
                           if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))),
                          key=lambda node: node.lineno)
            for node in defs:
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out.append(f"{path.relative_to(root).as_posix()}:{node.lineno}: "
                               f"{node.name} is {n} lines (at most {limit})")
    return out


def test_no_function_over_80_lines():
    found = long_functions(REPO)
    assert not found, "split these into named steps:\n" + "\n".join(found)


def test_the_checker_counts_functions_methods_and_nested_ones(tmp_path):
    body = "    x = 1\n"
    files = {
        "teachers/__init__.py": "",
        "teachers/a.py": "def short():\n" + body * 79 + "\n\ndef long():\n" + body * 80,
        "teachers/sub/b.py": ("class C:\n    async def method(self):\n" + "        x = 1\n" * 80
                              + "\n\ndef outer():\n    def inner():\n" + "        x = 1\n" * 3
                              + body * 80),
        "eval/c.py": "def not_held():\n" + body * 200,
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert long_functions(tmp_path) == [
        "teachers/a.py:83: long is 81 lines (at most 80)",
        "teachers/sub/b.py:2: method is 81 lines (at most 80)",
        "teachers/sub/b.py:85: outer is 85 lines (at most 80)",
    ]
