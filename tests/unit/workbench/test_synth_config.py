"""The data configs that `workbench data synth` and the demo write name their files beside
them, and the demo's recipe names its data relative to itself: loading them (from the
folder the demo writes into, relative to the working directory, or from anywhere else)
gives no "read relative to the working directory" note."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from eval.demo import DEMO_RECIPE, DemoConfig, DemoReporter, _data
from workbench.config import DataConfig, DistillConfig, load_config
from workbench.data import load_dataset
from workbench.data.synth_media import MediaSynthSpec, write_media_dataset

NOTE = "not found next to its file"


def _notes(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if NOTE in r.getMessage()]


def test_demo_data_config_reads_next_to_its_file(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO)
    data, source = _data(DemoConfig(out=Path("runs/demo"), samples=30), DemoReporter())
    assert source == "runs/demo/synth/data.yaml"
    written = yaml.safe_load(Path(source).read_text())
    assert (written["path"], written["features"]) == ("manifest.csv", "features.npz")
    assert data.path == "runs/demo/synth/manifest.csv"
    assert load_dataset(load_config(DataConfig, source)).num_rows() == 30
    # the demo's distillation recipe: its data paths are relative to the recipe file
    load_config(DistillConfig, DEMO_RECIPE, ["train.output_dir=runs/demo/student-synth"])
    assert _notes(caplog) == []
    # from another working directory the same file reads the same data
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(DataConfig, tmp_path / source)
    assert Path(cfg.path) == tmp_path / "runs/demo/synth/manifest.csv"
    assert load_dataset(cfg).num_rows() == 30 and _notes(caplog) == []


def test_synthetic_media_config_reads_next_to_its_file(tmp_path, monkeypatch, caplog):
    pytest.importorskip("av", reason="PyAV writes the clips")
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO)
    config = write_media_dataset(Path("runs/demo/synth_media"),
                                 MediaSynthSpec(n=20, seconds=0.5, fps=4, size=16))
    cfg = load_config(DataConfig, config)
    assert cfg.path == "runs/demo/synth_media/manifest.csv" and Path(cfg.path).is_file()
    assert _notes(caplog) == []
