"""`workbench eval` through typer's CliRunner on tiny trained checkpoints: the files it
writes for one checkpoint and for a directory of runs, and the errors it reports."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from typer.testing import CliRunner

from tests.support.checkpoints import tiny_checkpoints
from tests.support.distill import tiny_data
from workbench.cli import app

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]
runner = CliRunner()


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    return tiny_checkpoints(tmp_path_factory)


def run(*args: str):
    return runner.invoke(app, ["eval", *args, "--threads", "1", "--device", "cpu"])


def test_one_checkpoint_writes_results_markdown_plot_and_runs(ck, tmp_path):
    out = tmp_path / "out"
    r = run(str(ck["a"]), "--split", "test", "--out", str(out), "--missing-rates", "0:0.9:0.1",
            "--seeds", "1111,1112,1113", "--missing-modality", "audio",
            "--missing-modality", "audio,vision", "--latency-samples", "3",
            "--device-cost-per-hour", "0.5")
    assert r.exit_code == 0, r.output
    for name in ("results.json", "results.md", "robustness.png", "runs.csv"):
        assert (out / name).is_file(), name
    res = json.loads((out / "results.json").read_text())
    assert list(res["leaderboard"]) == ["complete", "no audio", "no audio+vision"]
    sweep = res["robustness"]["a"]
    assert len(sweep["rates"]) == 10 and set(sweep["n_runs"].values()) == {3}
    assert res["meta"]["seeds"] == [1111, 1112, 1113] and res["meta"]["split"] == "test"
    cost = res["cost"]
    assert cost["parameters"]["total"] > 0 and cost["speed"]["throughput_samples_per_s"] > 0
    assert cost["comparison"]["student_cost_usd_per_sample"] > 0
    assert "selected on the 'valid' split" in res["protocol"]["selection"]
    md = (out / "results.md").read_text()
    assert "## Robustness to missing modalities" in md and "| no audio |" in md
    assert "test metrics" in r.output and "missing-rate sweep" in r.output
    assert "samples/s" in r.output and "teacher fake-teacher@1" in r.output


def test_directory_of_runs_gives_a_leaderboard(ck, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(ck["runs"], runs)
    r = run(str(runs), "--missing-rates", "0,0.5", "--seeds", "1,2", "--missing-modality",
            "none", "--no-cost")
    assert r.exit_code == 0, r.output
    for name in ("a", "b"):  # per checkpoint: beside its checkpoint-best
        assert (runs / name / "eval-test" / "results.json").is_file()
    board = runs / "leaderboard-test"
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard_lnln.csv", "results.json",
                 "results.md", "runs.csv", "robustness.png"):
        assert (board / name).is_file(), name
    res = json.loads((board / "results.json").read_text())
    assert list(res["leaderboard"]) == ["a", "b", "mean ± std (2 checkpoints)"]
    assert set(res["robustness"]) == {"a", "b"}
    assert "leaderboard, test split" in r.output and "mean ± std" in r.output
    one = json.loads((runs / "a" / "eval-test" / "results.json").read_text())
    assert one["cost"]["parameters"]["total"] > 0 and "speed" not in one["cost"]  # --no-cost


def test_errors_are_reported_cleanly(ck, tmp_path):
    r = run(str(tmp_path / "missing"))
    assert r.exit_code == 2 and "does not exist" in r.output
    r = run(str(ck["a"]), "--split", "valid", "--out", str(tmp_path / "o"))
    assert r.exit_code == 2 and "selected on the 'valid' split" in r.output
    r = run(str(ck["a"]), "--missing-rates", "0:2:0.5")
    assert r.exit_code == 2 and "outside [0, 1]" in r.output
    r = run(str(ck["a"]), "--missing-modality", "smell")
    assert r.exit_code == 2 and "name modalities from" in r.output
    gone = tmp_path / "gone.yaml"
    gone.write_text(ck["data_yaml"].read_text().replace("manifest.csv", "gone.csv"))
    r = run(str(ck["a"]), "--data", str(gone), "--no-cost", "--missing-modality", "none")
    assert r.exit_code == 2 and "cannot load the evaluation data" in r.output
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(tiny_data(tmp_path / "other", n=30, seed=5)))
    r = run(str(ck["a"]), "--data", str(other), "--no-cost")
    assert r.exit_code == 2 and "is not the dataset" in r.output and "fingerprint" in r.output
