"""Every YAML under configs/ loads and validates."""

from pathlib import Path

import pytest
import yaml

from workbench.config import config_class_for, load_config

REPO = Path(__file__).resolve().parents[3]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def test_there_are_configs():
    assert any(p.parent.name == "data" for p in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_config_loads(path):
    cls = config_class_for(path.relative_to(REPO))
    if cls is None:
        assert path.parent.name == "accelerate", f"{path}: no config class for this folder"
        data = yaml.safe_load(path.read_text())
        assert isinstance(data, dict) and "distributed_type" in data
        return
    load_config(cls, path)
