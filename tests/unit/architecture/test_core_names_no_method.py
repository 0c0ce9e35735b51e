"""The core student, objective, recipe and trainer name no method: every method acts
through the hooks of :class:`students.methods.Method`, found through the dict
:data:`students.methods.METHODS`. A method added in its own folder therefore needs no
line in these files. The checker is tested on a small text that breaks each rule.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from students.methods import METHODS

REPO = Path(__file__).resolve().parents[3]
CORE = ("students/model.py", "students/objective.py", "students/recipe.py",
        "students/trainer.py")
ALIASES = ("ms-mix", "mixup", "hme", "lnln", "cp/sl", "intensity", "memory bank", "router",
           "experts", "latent", "statistical")
"""Other words that would name a method (papers' names, their distinctive parts)."""
GENERIC = {"missing"}
"""Method names that are everyday words: only a read of its config object counts."""


def method_words() -> list[str]:
    """Names a core file may not use: each method's name, class and config class, and
    :data:`ALIASES`."""
    words = set(ALIASES)
    for name, cls in METHODS.items():
        words |= {name, cls.__name__.lower()} - GENERIC
        config = vars(cls).get("__annotations__", {}).get("cfg")  # e.g. "MsMixConfig"
        if isinstance(config, str):
            words.add(config.lower())
    return sorted(words)


def namings(text: str) -> list[str]:
    """Every way ``text`` (a Python module) names a method: a word of
    :func:`method_words` (case-insensitive, code, comments and docstrings), a read of a
    :data:`GENERIC` method's config object (``.missing``), or an import of a method's own
    folder (``students.methods.<name>``; the protocol and the dict are fine)."""
    found = []
    low = text.lower()
    for word in method_words():
        if re.search(rf"(?<![a-z_]){re.escape(word)}(?![a-z_])", low):
            found.append(word)
    for name in GENERIC:
        if re.search(rf"\.{name}\b|[\"']{name}[\"']", text):
            found.append(f".{name}")
    for node in ast.walk(ast.parse(text)):
        names = ([node.module or ""] if isinstance(node, ast.ImportFrom) else
                 [a.name for a in node.names] if isinstance(node, ast.Import) else [])
        found += [f"import {n}" for n in names
                  if n.startswith("students.methods.") and n != "students.methods.base"]
    return found


def test_the_core_student_names_no_method():
    bad = {rel: hits for rel in CORE if (hits := namings((REPO / rel).read_text()))}
    assert not bad, ("the core names methods (move it into the method's folder behind a "
                     f"hook of students.methods.base.Method): {bad}")


def test_every_method_is_a_word_the_checker_looks_for():
    words = method_words()
    assert all(name in words or name in GENERIC for name in METHODS)
    assert "msmixconfig" in words and "cyin" in words


def test_the_checker_catches_each_way_of_naming_a_method():
    assert namings('"""Fusion and heads."""\nfrom students.methods import active\n') == []
    assert namings("x = 1  # MS-Mix mixes the encodings\n") == ["ms-mix"]
    assert namings("if cfg.student.cyin.enabled:\n    pass\n") == ["cyin"]
    assert namings("from workbench.config import MsMixConfig\n") == ["msmixconfig"]
    assert namings("spec = tc.missing\n") == [".missing"]
    assert namings('"""a missing modality"""\n') == []
    assert namings("from students.methods.midg.adapter import encoder_layers\n") == [
        "midg", "import students.methods.midg.adapter"]
    assert namings("from students.methods.base import Method\n") == []


def model_imports(text: str) -> list[str]:
    """The imports of the core modules in ``text`` (a method's module), type-only ones
    included: a method sees the model through :class:`students.methods.base.StudentView`."""
    core = {c.removesuffix(".py").replace("/", ".") for c in CORE}
    found = []
    for node in ast.walk(ast.parse(text)):
        names = ([node.module or ""] if isinstance(node, ast.ImportFrom) else
                 [a.name for a in node.names] if isinstance(node, ast.Import) else [])
        found += [n for n in names if n in core]
    return found


def test_no_method_imports_the_core_that_imports_it():
    files = sorted((REPO / "students" / "methods").rglob("*.py"))
    bad = {str(f.relative_to(REPO)): hits for f in files
           if (hits := model_imports(f.read_text()))}
    assert len(files) > 10 and not bad, bad
    assert model_imports("if TYPE_CHECKING:\n    from students.model import StudentModel\n") \
        == ["students.model"]
    assert model_imports("from students.outputs import StudentOutput\n") == []
