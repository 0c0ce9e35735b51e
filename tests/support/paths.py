"""Where things are, for tests at any depth."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
"""The repository root."""
MOSI_DIR = REPO.parent / "shared" / "data" / "mosi"
"""The shared CMU-MOSI folder (present on the team's machines, never committed)."""
LEGACY_CONFIG = REPO / "tests" / "support" / "legacy" / "config_flat_methods.yaml"
"""A config.yaml as main wrote it before the method config objects (flat method keys)."""


def load_bench(name: str):
    """The module of the script ``bench/<name>.py`` (bench scripts are not a package; like
    a script run, it finds its siblings such as ``common`` on the path)."""
    import importlib.util
    import sys

    if str(REPO / "bench") not in sys.path:
        sys.path.append(str(REPO / "bench"))

    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module
