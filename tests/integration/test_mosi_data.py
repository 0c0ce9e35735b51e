"""The shared MOSI folder through the manifest reader and the CLI (skipped without it)."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.support.paths import REPO
from workbench.cli import app
from workbench.config import DataConfig, load_config
from workbench.data import load_dataset


@pytest.fixture
def at_repo(monkeypatch, mosi_dir):
    monkeypatch.chdir(REPO)
    return mosi_dir


def test_mosi_standard_split_text_audio(at_repo):
    ds = load_dataset(load_config(DataConfig, REPO / "configs/data/mosi.yaml"))
    assert {sp: ds.num_rows(sp) for sp in ds.splits} == {"train": 1284, "valid": 229, "test": 686}
    assert ds.info.modalities == ["text", "audio"] and ds.info.feature_dims == {"audio": 73}
    labels = np.array([s.label for s in ds.iter_samples()])
    assert ((labels > 0).sum(), (labels < 0).sum(), (labels == 0).sum()) == (1080, 1023, 96)
    s = ds.sample("train", 0)
    assert s.id == "03bSnISJMiM_11" and s.text == "A LOT OF SAD PARTS" and s.vision is None


def test_mosi_bclstm_split_has_vision(at_repo):
    ds = load_dataset(load_config(DataConfig, REPO / "configs/data/mosi_bclstm.yaml"))
    assert {sp: ds.num_rows(sp) for sp in ds.splits} == {"train": 1447, "test": 752}
    assert ds.info.feature_dims == {"audio": 73, "vision": 100}


def test_mosi_import_and_stats_cli(at_repo, tmp_path):
    runner = CliRunner()
    out = tmp_path / "mosi"
    r = runner.invoke(app, ["data", "import", "configs/data/mosi.yaml", "--out", str(out)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["data", "stats", str(out), "--json"])
    stats = json.loads(r.stdout)
    assert stats["splits"]["test"]["n"] == 686 and stats["splits"]["test"]["available"]["audio"] == 686
