"""`workbench baselines`, `workbench eval-teacher` and `workbench eval --reference` through
typer's CliRunner, on the tiny trained checkpoints and their teacher cache: the tables
printed, the results.json written, the leaderboard with reference rows, and the errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests.support.checkpoints import tiny_checkpoints
from workbench.cli import app

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]
runner = CliRunner()


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    return tiny_checkpoints(tmp_path_factory)


def run(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "100"})


def test_reference_rows_beside_the_checkpoints(ck, tmp_path):
    base, teach = tmp_path / "baselines", tmp_path / "teacher"
    r = run("baselines", ck["data_yaml"], "--out", base, "--threads", "1", "--device", "cpu",
            "--folds", "3")
    assert r.exit_code == 0, r.output
    assert "train mean" in r.output and "probe (minilm)" in r.output
    res = json.loads((base / "results.json").read_text())
    assert res["meta"]["kind"] == "reference" and res["metric_set"] == "mosi"
    assert set(res["leaderboard"]) == {"train mean", "probe (minilm)",
                                       "probe (minilm+audio+vision)"}
    r = run("eval-teacher", ck["cache"], "--data", ck["data_yaml"], "--out", teach)
    assert r.exit_code == 0, r.output
    assert "answered" in r.output and "sentiment_score" in r.output
    r = run("eval", ck["a"], ck["b"], "--out", tmp_path / "board", "--no-cost",
            "--missing-rates", "none", "--missing-modality", "none", "--threads", "1",
            "--device", "cpu", "--reference", base, "-r", teach / "results.json")
    assert r.exit_code == 0, r.output
    assert "ref: train mean" in r.output and "ref: teacher (answered" in r.output
    assert "Reference rows" in r.output
    board = json.loads((tmp_path / "board" / "results.json").read_text())
    assert {"ref: train mean", "ref: probe (minilm)", "a", "b"} <= set(board["leaderboard"])
    assert all(not n.startswith("ref:") for g in board["meta"]["groups"].values() for n in g)


def test_one_checkpoint_with_references_gets_a_leaderboard(ck, tmp_path):
    teach = tmp_path / "teacher"
    assert run("eval-teacher", ck["cache"], "--data", ck["data_yaml"], "--split", "test",
               "--out", teach).exit_code == 0
    out = tmp_path / "one"
    r = run("eval", ck["b"], "--out", out, "--no-cost", "--missing-rates", "none",
            "--missing-modality", "none", "--threads", "1", "--device", "cpu", "-r", teach)
    assert r.exit_code == 0, r.output
    assert (out / "b" / "results.json").is_file() and (out / "leaderboard.md").is_file()
    assert "ref: teacher (unanswered = train mean)" in (out / "leaderboard.md").read_text()


def test_errors_are_one_line(ck, tmp_path):
    r = run("baselines", ck["data_yaml"], "--split", "dev", "--device", "cpu")
    assert r.exit_code == 2 and "split 'dev' is not in dataset" in r.output
    assert "Traceback" not in r.output
    r = run("eval-teacher", tmp_path / "none", "--data", ck["data_yaml"])
    assert r.exit_code == 2 and "no teacher cache at" in r.output
    valid = tmp_path / "valid"
    assert run("eval-teacher", ck["cache"], "--data", ck["data_yaml"], "--split", "valid",
               "--out", valid).exit_code == 0
    r = run("eval", ck["b"], "--no-cost", "--missing-rates", "none", "--device", "cpu",
            "-r", valid, "--out", tmp_path / "x")
    assert r.exit_code == 2 and "on the 'valid' split, the checkpoints on 'test'" in r.output
    assert not (tmp_path / "x").exists()  # refused before any checkpoint ran
