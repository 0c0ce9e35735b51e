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
    # a and b are different recipes: never pooled, one row each, the groups named
    groups = res["meta"]["groups"]
    assert list(groups.values()) == [["a"], ["b"]]
    assert all(g.startswith("recipe ") and "signals.cache_dir=" in g for g in groups)
    assert list(res["leaderboard"])[:2] == ["a", "b"] and len(res["leaderboard"]) == 4
    assert not any("(2 checkpoints)" in k for k in res["leaderboard"])
    assert set(res["robustness"]) == {"a", "b"}
    assert "2 recipe group(s)" in r.output and "mean ± std" in r.output
    assert "leaderboard, test split" in r.output
    one = json.loads((runs / "a" / "eval-test" / "results.json").read_text())
    assert one["cost"]["parameters"]["total"] > 0 and "speed" not in one["cost"]  # --no-cost


def test_seeds_of_one_recipe_are_grouped_apart_from_another(ck, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(ck["runs"], runs)
    # a second seed of recipe a: same resolved config but train.seed and the output dir
    shutil.copytree(runs / "a", runs / "a2")
    cfg_file = runs / "a2" / "checkpoint-best" / "config.yaml"
    cfg = yaml.safe_load(cfg_file.read_text())
    cfg["train"]["seed"] += 1
    cfg["train"]["output_dir"] = str(runs / "a2")
    cfg_file.write_text(yaml.safe_dump(cfg, sort_keys=False))
    r = run(str(runs), "--missing-rates", "none", "--missing-modality", "none", "--no-cost")
    assert r.exit_code == 0, r.output
    res = json.loads((runs / "leaderboard-test" / "results.json").read_text())
    groups = res["meta"]["groups"]
    assert sorted(map(sorted, groups.values())) == [["a", "a2"], ["b"]]
    (pair,) = [k for k in res["leaderboard"] if "2 checkpoints" in k]
    (single,) = [k for k in res["leaderboard"] if "1 checkpoints" in k]
    assert pair.startswith("mean ± std (recipe ")
    assert res["leaderboard"][single] == res["leaderboard"]["b"]  # no spread over one run
    md = (runs / "leaderboard-test" / "leaderboard.md").read_text()
    assert all(f"- {g}: " in md for g in groups)


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
