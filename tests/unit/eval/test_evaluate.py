"""Checkpoint evaluation on tiny trained students: metrics end to end, the LNLN sweep,
modality patterns, cost fields, guards and bad inputs, and the leaderboard."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import shutil

import numpy as np
import pytest

from eval.cost import teacher_costs
from eval.evaluate import evaluate_checkpoint, results_dict, write_checkpoint_results
from eval.leaderboard import leaderboard, write_leaderboard
from eval.options import EvalError, EvalOptions, options_for, parse_rates
from eval.protocol import ProtocolError
from students.checkpoint import CheckpointError, load_checkpoint
from students.inference import predict
from tests.support.checkpoints import tiny_checkpoints
from tests.support.distill import tiny_data
from workbench.config import DataConfig, load_config
from workbench.data import load_dataset
from workbench.metrics import METRIC_NAMES, compute_metrics

SEEDS = [1111, 1112, 1113]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    return tiny_checkpoints(tmp_path_factory)


@pytest.fixture(scope="module")
def full(ck):
    """Checkpoint a: complete inputs, every modality pattern, 10 rates x 3 seeds, cost."""
    opts = EvalOptions(missing_rates=parse_rates("0:0.9:0.1"), seeds=SEEDS, batch_size=16,
                       latency_samples=5, device="cpu")
    return evaluate_checkpoint(ck["a"], opts)


@pytest.fixture(scope="module")
def again(ck):
    """Checkpoint a again: two of the same rates and seeds plus rate 1.0, nothing else."""
    opts = EvalOptions(missing_rates=[0.5, 1.0], seeds=SEEDS, patterns=[], cost=False,
                       batch_size=16, device="cpu")
    return evaluate_checkpoint(ck["a"], opts)


@pytest.fixture(scope="module")
def other(ck):
    """Checkpoint b (gold labels only, frozen text encoder) on the same grid as ``again``."""
    opts = EvalOptions(missing_rates=[0.5, 1.0], seeds=SEEDS, patterns=[], batch_size=16,
                       latency_samples=3, device="cpu")
    return evaluate_checkpoint(ck["b"], opts)


def test_metrics_flow_end_to_end(ck, full):
    model, cfg, meta = load_checkpoint(ck["a"])
    test = load_dataset(cfg.data).samples("test")
    expected = compute_metrics("mosi", predict(model, test, 4), [s.label for s in test])
    assert full.metrics == pytest.approx(expected, rel=1e-6, abs=1e-6)
    assert list(full.metrics) == list(METRIC_NAMES["mosi"])
    assert full.n_samples == len(test) and full.split == "test"
    assert full.protocol["selection"].startswith("selected on the 'valid' split by valid_mae")
    res = results_dict(full)
    assert res["metric_set"] == "mosi" and res["leaderboard"]["complete"] == full.metrics
    assert res["meta"]["data"]["fingerprint"] == meta.info.fingerprint
    assert res["meta"]["masked_modalities"] == ["text", "audio", "vision"]


def test_every_modality_pattern_is_evaluated(full):
    assert set(full.conditions) == {"complete", "no text", "no audio", "no vision",
                                    "no text+audio", "no text+vision", "no audio+vision"}
    assert full.patterns["no audio+vision"] == ["audio", "vision"]
    for metrics in full.conditions.values():
        assert all(np.isfinite(v) for v in metrics.values())


def test_sweep_has_ten_rates_by_three_seeds_and_rate_zero_is_the_plain_evaluation(full):
    rob = full.robustness()
    assert rob["rates"] == pytest.approx([i / 10 for i in range(10)])
    assert all(n == 3 for n in rob["n_runs"].values()) and len(rob["n_runs"]) == 10
    assert all(len(runs) == 3 for runs in full.sweep.values())
    for run in full.sweep[0.0]:
        assert run == pytest.approx(full.metrics, rel=1e-9, abs=1e-12)
    # zero up to the last bit: a busy machine may give BLAS fewer threads, reordering sums
    assert all(std == pytest.approx(0.0, abs=1e-12) for _, std in rob["per_rate"][0.0].values())
    mae_avg = np.mean([rob["per_rate"][r]["mae"][0] for r in rob["rates"]])
    assert rob["average"]["mae"] == pytest.approx(mae_avg)
    assert len(full.seed_averages()) == 3


def test_same_seeds_give_the_same_numbers_and_rate_one_runs(full, again):
    assert again.sweep[0.5] == full.sweep[0.5]  # a fresh load, the same masks and numbers
    assert again.metrics == full.metrics
    assert len(again.sweep[1.0]) == 3
    for run in again.sweep[1.0]:
        assert all(math.isfinite(v) for k, v in run.items() if k != "corr")
    # at rate 1.0 every unit is gone whatever the seed: the seeds agree exactly
    assert again.sweep[1.0][0] == again.sweep[1.0][1] == again.sweep[1.0][2]
    assert again.cost["parameters"]["total"] > 0 and "speed" not in again.cost


def test_cost_fields_are_present_and_positive(full):
    cost = full.cost
    p = cost["parameters"]
    assert p["total"] > p["trainable"] > 0 and p["in_memory_bytes"] > 0
    assert cost["size"]["bytes"] > 0 and "model.safetensors" in cost["size"]["files"]
    assert cost["size"]["excludes"]  # LoRA: the base encoder is not in the checkpoint
    speed = cost["speed"]
    assert speed["throughput_samples_per_s"] > 0 and speed["batch_size"] == 16
    lat = speed["latency_batch1_ms"]
    assert 0 < lat["p50"] <= lat["p95"] and lat["n"] == 5
    mem = speed["memory"]
    assert mem["maxrss_mb"] > 0 and mem["rss_after_mb"] > 0 and "rss_delta_mb" in mem
    teacher = cost["teacher"]["jobs"]["soft_labels"]
    assert teacher["available"] and teacher["ok_samples"] > 0
    assert teacher["per_sample"]["latency_s"] > 0 and teacher["per_sample"]["tokens_in"] > 0
    cmp_ = cost["comparison"]
    assert cmp_["teacher_job"] == "soft_labels" and cmp_["latency_ratio"] > 0
    assert cmp_["compute_ratio"] > 0
    if teacher["per_sample"]["cost_usd"] == 0:  # a local teacher: machine time is the cost
        assert cmp_["cost_ratio"] == cmp_["compute_ratio"]
        assert cmp_["cost_basis"] == "machine_time" and cmp_["cost_note"]
    else:
        assert cmp_["cost_ratio"] is None and cmp_["cost_note"]


def test_teacher_side_unavailable_is_reported_not_zero(ck, other, tmp_path):
    teacher = other.cost["teacher"]
    assert teacher["available"] is False and "gold labels only" in teacher["note"]
    assert other.cost["comparison"]["latency_ratio"] is None
    manifest = json.loads((ck["a"] / "teacher_manifest.json").read_text())
    manifest["soft_labels"]["cache_dir"] = str(tmp_path / "moved")
    ds = load_dataset(load_config(DataConfig, ck["data_yaml"]))
    gone = teacher_costs(manifest, ds)
    job = gone["jobs"]["soft_labels"]
    assert gone["available"] is False and job["available"] is False
    assert "moved" in job["reason"] and "per_sample" not in job


def _copy(ck, tmp_path, name="copy"):
    dst = tmp_path / name / "checkpoint-best"
    shutil.copytree(ck["a"], dst)
    return dst


def _edit(path, fn):
    obj = json.loads(path.read_text())
    fn(obj)
    path.write_text(json.dumps(obj))


def test_guards_refuse_fabricated_histories(ck, tmp_path):
    opts = EvalOptions(cost=False, patterns=[], device="cpu")
    with pytest.raises(ProtocolError, match="selected on the 'valid' split"):
        evaluate_checkpoint(ck["a"], EvalOptions(split="valid", device="cpu"))
    tested = _copy(ck, tmp_path, "selected_on_test")
    _edit(tested / "selection.json", lambda s: s.update(split="test", metric="test_mae"))
    with pytest.raises(ProtocolError, match="selected on the 'test' split"):
        evaluate_checkpoint(tested, opts)
    gold = _copy(ck, tmp_path, "gold_on_test")

    def leak(m):
        m["soft_labels"]["job"]["uses_gold_label"] = True
        m["soft_labels"]["splits"] = ["train", "test"]
        m["uses_gold_label"] = True

    _edit(gold / "teacher_manifest.json", leak)
    with pytest.raises(ProtocolError, match="showed the gold label.*'test' split"):
        evaluate_checkpoint(gold, opts)
    _edit(gold / "teacher_manifest.json", lambda m: m["soft_labels"].update(splits=["train"]))
    ev = evaluate_checkpoint(gold, opts)  # gold labels on train samples only: accepted
    assert ev.protocol["gold_label_jobs"][0]["splits"] == ["train"]


def test_bad_inputs_get_clear_errors(ck, tmp_path):
    opts = EvalOptions(cost=False, patterns=[], device="cpu")
    broken = _copy(ck, tmp_path, "broken")
    (broken / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"missing model\.safetensors.*save_checkpoint"):
        evaluate_checkpoint(broken, opts)
    other = load_config(DataConfig, None, [
        f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
        for k, v in tiny_data(tmp_path / "other", n=30, seed=5).items()])
    with pytest.raises(EvalError, match=r"not the dataset.*fingerprint.*leave --data out"):
        evaluate_checkpoint(ck["a"], opts, other, data_source="other.yaml")
    text_only = load_config(DataConfig, ck["data_yaml"], ["modalities=[text]"])
    with pytest.raises(EvalError, match=r"no audio features \(checkpoint: audio d=6\)"):
        evaluate_checkpoint(ck["a"], opts, text_only, data_source="text-only")
    with pytest.raises(EvalError, match="has no audio input"):
        evaluate_checkpoint(_strip_audio(ck, tmp_path), EvalOptions(
            cost=False, patterns=[("audio",)], device="cpu"))
    moved = _copy(ck, tmp_path, "moved_data")

    def bad_path(cfg_text: str) -> str:
        return cfg_text.replace(str(ck["data"]["path"]), "relative/missing.csv")

    (moved / "config.yaml").write_text(bad_path((moved / "config.yaml").read_text()))
    with pytest.raises(EvalError, match=r"cannot load the evaluation data.*pass --data"):
        evaluate_checkpoint(moved, opts)


def _strip_audio(ck, tmp_path):
    """A copy of b whose student.json says it reads text and vision only."""
    dst = tmp_path / "no_audio" / "checkpoint-best"
    shutil.copytree(ck["b"], dst)
    _edit(dst / "student.json", lambda s: s.update(modalities=["text", "vision"]))
    return dst


def test_options_default_to_the_checkpoint_eval_config(ck):
    opts = options_for(ck["a"], seeds=[1, 2], cost=False)
    assert opts.split == "test" and opts.batch_size == 16 and opts.missing_rates == []
    assert opts.seeds == [1, 2] and opts.cost is False


def test_results_files_and_leaderboard_over_two_checkpoints(full, again, other, tmp_path):
    written = write_checkpoint_results(full, tmp_path / "one")
    assert {p.name for p in written} == {"results.json", "results.md", "runs.csv",
                                         "robustness.png"}
    saved = json.loads((tmp_path / "one" / "results.json").read_text())
    assert set(saved["robustness"]["a"]["per_rate"]) == {repr(r / 10) for r in range(10)}
    assert saved["cost"]["speed"]["throughput_samples_per_s"] > 0
    assert saved["protocol"]["selection_record"]["split"] == "valid"
    rows = list(csv.DictReader(io.StringIO((tmp_path / "one" / "runs.csv").read_text())))
    assert len(rows) == 7 + 30

    # a and b are different recipes: one group each, never pooled
    board = leaderboard([again, other])
    assert list(board["groups"].values()) == [["a"], ["b"]]
    assert len(board["complete"]) == 4 and board["complete"][list(board["complete"])[3]] == \
        other.metrics
    # a second run of a's recipe (its config, other metrics) is pooled with a only
    twin = dataclasses.replace(other, name="a2", path=again.path)
    board = leaderboard([again, twin, other])
    (g1, ga), (g2, gb) = board["groups"].items()
    assert ga == ["a", "a2"] and gb == ["b"]
    agg = f"mean ± std ({g1}; 2 checkpoints)"
    assert list(board["complete"]) == ["a", "a2", "b", agg, f"mean ± std ({g2}; 1 checkpoints)"]
    mae = [again.metrics["mae"], other.metrics["mae"]]
    assert board["complete"][agg]["mae"] == pytest.approx((np.mean(mae), np.std(mae, ddof=1)))
    pooled = f"mean ± std ({g1}; 2 checkpoints × 3 seeds)"
    assert list(board["lnln"])[:4] == ["a", "a2", "b", pooled]
    per_seed = [s["mae"] for ev in (again, other) for s in ev.seed_averages()]
    assert board["lnln"][pooled]["mae"] == pytest.approx(
        (np.mean(per_seed), np.std(per_seed, ddof=1)))
    paths = write_leaderboard([again, twin, other], tmp_path / "board")
    names = {p.name for p in paths}
    assert {"leaderboard.md", "leaderboard.csv", "leaderboard_lnln.csv", "results.json",
            "results.md", "runs.csv", "robustness.png"} <= names
    md = (tmp_path / "board" / "leaderboard.md").read_text()
    assert "## Complete inputs" in md and agg in md and pooled in md
    table = list(csv.reader(io.StringIO((tmp_path / "board" / "leaderboard.csv").read_text())))
    assert table[0][:3] == ["checkpoint", "acc2_has0", "acc2_has0_std"]
    assert [r[0] for r in table[1:]][:4] == ["a", "a2", "b", agg]
    with pytest.raises(EvalError, match="different rates or seeds"):
        leaderboard([full, other])


def test_a_text_only_checkpoint_evaluates_on_data_that_has_audio(tmp_path):
    """A student trained on ``modalities: [text]`` of a dataset with audio features records
    those features in its data_info.json but reads none: its own data passes the check (was
    refused: "no audio features (checkpoint: audio d=25)"); one that reads audio still
    needs them."""
    from types import SimpleNamespace

    from eval.data import check_data_matches
    from workbench.data.store import DataInfo

    def info(modalities):
        return DataInfo(name="m", task="regression", metric_set="mosi", label_range=(-3, 3),
                        class_names=[], modalities=modalities, feature_dims={"audio": 25},
                        feature_kind={"audio": "sequence"}, fingerprint="f")

    text_data = SimpleNamespace(info=info(["text"]))
    check_data_matches(info(["text"]), text_data, "its config", tmp_path)
    with pytest.raises(EvalError, match=r"no audio features \(checkpoint: audio d=25\)"):
        check_data_matches(info(["text", "audio"]), text_data, "text-only", tmp_path)
