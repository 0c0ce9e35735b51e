"""Option parsing, checkpoint discovery, file checks and cost arithmetic (no model)."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from eval.cost import checkpoint_size, compare
from eval.data import split_samples
from eval.evaluate import default_out_dir
from eval.options import EvalError, EvalOptions, parse_patterns, parse_rates, parse_seeds
from students.checkpoint import CheckpointError, check_files, find_checkpoints, unique_names
from workbench.config import EvalConfig
from workbench.data import DataError, MSADataset
from workbench.data.schema import Sample
from workbench.data.store import DataInfo

FILES = ("config.yaml", "student.json", "data_info.json", "model.safetensors",
         "selection.json", "teacher_manifest.json", "versions.json")


def test_rate_ranges_include_their_end():
    rates = parse_rates("0:0.9:0.1")
    assert rates == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert parse_rates("0:1:0.25") == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert parse_rates("0.5") == [0.5]
    assert parse_rates("1, 0") == [0.0, 1.0]
    assert parse_rates("none") == [] and parse_rates("") == []


@pytest.mark.parametrize(("spec", "pattern"), [
    ("0:0.9", "start:stop:step"), ("0:0.9:0", "step > 0"), ("0.9:0:0.1", "start <= stop"),
    ("0:1.5:0.5", r"outside \[0, 1\]"), ("a,b", "start:stop:step"), ("0.1,0.1", "repeats"),
])
def test_bad_rates_are_explained(spec, pattern):
    with pytest.raises(EvalError, match=pattern):
        parse_rates(spec)


def test_seeds_and_patterns():
    assert parse_seeds("1111,1112,1113") == [1111, 1112, 1113]
    for bad in ("x", "", "1,1"):
        with pytest.raises(EvalError, match="--seeds"):
            parse_seeds(bad)
    assert parse_patterns(["audio", "vision,audio", "audio"]) == [("audio",), ("audio", "vision")]
    assert parse_patterns(["none"]) == []
    with pytest.raises(EvalError, match="name modalities from"):
        parse_patterns(["video"])


def test_options_are_a_recipe_eval_section_plus_the_command_options():
    recipe = [f.name for f in fields(EvalConfig)]
    assert [f.name for f in fields(EvalOptions)][:len(recipe)] == recipe
    opts, cfg = EvalOptions(), EvalConfig()
    assert {n: getattr(opts, n) for n in recipe} == {n: getattr(cfg, n) for n in recipe}


def test_options_are_checked():
    with pytest.raises(EvalError, match="--batch-size"):
        EvalOptions(batch_size=0)
    with pytest.raises(EvalError, match="needs at least one seed"):
        EvalOptions(missing_rates=[0.1], seeds=[])


def _fake_checkpoint(path: Path, text_mode: str = "lora", skip: tuple[str, ...] = ()) -> Path:
    path.mkdir(parents=True)
    for name in FILES:
        if name not in skip:
            (path / name).write_text(json.dumps({"text_mode": text_mode})
                                     if name == "student.json" else "{}")
    if text_mode == "lora" and "adapter" not in skip:
        (path / "adapter").mkdir()
        (path / "adapter" / "adapter_config.json").write_text("{}")
        (path / "adapter" / "adapter_model.safetensors").write_text("x")
    return path


def test_find_checkpoints_accepts_checkpoints_runs_dirs_of_runs_and_globs(tmp_path):
    a = _fake_checkpoint(tmp_path / "runs" / "a" / "checkpoint-best")
    b = _fake_checkpoint(tmp_path / "runs" / "b" / "checkpoint-best")
    (tmp_path / "runs" / "data").mkdir()  # not a run: skipped by globs and dirs of runs
    assert find_checkpoints([str(a)]) == [a]
    assert find_checkpoints([str(a.parent)]) == [a]
    assert find_checkpoints([str(tmp_path / "runs")]) == [a, b]
    assert find_checkpoints([str(tmp_path / "runs" / "*")]) == [a, b]
    assert find_checkpoints([str(a), str(a.parent)]) == [a]  # duplicates dropped
    with pytest.raises(CheckpointError, match="does not exist"):
        find_checkpoints([str(tmp_path / "nope")])
    with pytest.raises(CheckpointError, match="matches nothing"):
        find_checkpoints([str(tmp_path / "nope*")])
    with pytest.raises(CheckpointError, match=r"no checkpoint-best/.*save_checkpoint"):
        find_checkpoints([str(tmp_path / "runs" / "data")])
    assert unique_names([a, b]) == ["a", "b"]
    other = _fake_checkpoint(tmp_path / "x" / "a" / "checkpoint-best")
    assert unique_names([a, other]) == ["runs/a", "x/a"]
    assert default_out_dir(a, "test") == a.parent / "eval-test"
    assert default_out_dir(tmp_path / "runs" / "a" / "prompted", "test") == \
        tmp_path / "runs" / "a" / "eval-test-prompted"


def test_missing_checkpoint_files_are_named_with_their_writer(tmp_path):
    ok = _fake_checkpoint(tmp_path / "ok")
    check_files(ok)
    bad = _fake_checkpoint(tmp_path / "bad", skip=("model.safetensors", "selection.json",
                                                   "adapter"))
    with pytest.raises(CheckpointError) as err:
        check_files(bad)
    msg = str(err.value)
    for name in ("model.safetensors", "selection.json", "adapter/adapter_config.json"):
        assert name in msg
    assert "save_checkpoint" in msg and "distill.py" in msg
    full = _fake_checkpoint(tmp_path / "full", text_mode="full")
    with pytest.raises(CheckpointError, match="text_encoder.safetensors"):
        check_files(full)
    with pytest.raises(CheckpointError, match="does not exist"):
        check_files(tmp_path / "nope")


def test_absent_split_names_the_splits_present():
    info = DataInfo(name="tiny", task="regression", metric_set="mosi", label_range=(-3.0, 3.0),
                    class_names=[], modalities=["text"])
    samples = [Sample(id=f"s{i}", text="x", split=sp, label=0.5)
               for i, sp in enumerate(["train", "train", "valid"])]
    ds = MSADataset.from_samples(samples, info)
    with pytest.raises(EvalError, match=r"split 'test' is not in dataset 'tiny'.*'train': 2"):
        split_samples(ds, "test", info)
    assert [s.id for s in split_samples(ds, "valid", info)] == ["s2"]
    unlabelled = MSADataset.from_samples([Sample(id="u", text="x", split="test")], info)
    with pytest.raises(DataError, match=r"1 of 1 'test' samples of 'tiny' have no label "
                                        r"\(e\.g\. \['u'\]\); metrics need every label"):
        split_samples(unlabelled, "test", info)


def test_checkpoint_size_counts_every_file(tmp_path):
    ck = _fake_checkpoint(tmp_path / "ck")
    size = checkpoint_size(ck, "lora", ["minilm"])
    assert size["bytes"] == sum(p.stat().st_size for p in ck.rglob("*") if p.is_file()) > 0
    assert "adapter/adapter_model.safetensors" in size["files"]
    assert size["excludes"] == ["minilm: base weights, rebuilt from its package"]


def _speed(p50_ms: float, tput: float) -> dict:
    return {"throughput_samples_per_s": tput, "latency_batch1_ms": {"p50": p50_ms}}


def _teacher(latency: float, cost: float) -> dict:
    return {"available": True, "note": "", "jobs": {
        "descriptions": {"available": True, "per_sample": {"latency_s": 9.0, "cost_usd": 1.0,
                                                           "tokens_in": 1, "tokens_out": 1}},
        "soft_labels": {"available": True, "per_sample": {"latency_s": latency,
                                                          "cost_usd": cost,
                                                          "tokens_in": 100, "tokens_out": 1}}}}


def test_compare_prefers_the_soft_label_job_and_computes_ratios():
    out = compare(_speed(10.0, 100.0), _teacher(0.5, 0.001), device_cost_per_hour=3.6)
    assert out["teacher_job"] == "soft_labels"
    assert out["latency_ratio"] == pytest.approx(0.01 / 0.5)
    assert out["speedup"] == pytest.approx(50.0)
    assert out["student_cost_usd_per_sample"] == pytest.approx(1e-5)
    assert out["cost_ratio"] == pytest.approx(1e-5 / 0.001)


def test_compare_says_why_a_ratio_is_missing():
    no_price = compare(_speed(10.0, 100.0), _teacher(0.5, 0.001))
    assert no_price["cost_ratio"] is None and "--device-cost-per-hour" in no_price["cost_note"]
    free = compare(_speed(10.0, 100.0), _teacher(0.5, 0.0), device_cost_per_hour=1.0)
    # a $0 (local) teacher costs machine time: 1/100 s per sample vs 0.5 s
    assert free["cost_ratio"] == pytest.approx(0.01 / 0.5)
    assert free["cost_basis"] == "machine_time" and "$0 per sample" in free["cost_note"]
    gone = compare(_speed(10.0, 100.0), {"available": False, "jobs": {},
                                         "note": "gold labels only"})
    assert gone["latency_ratio"] is None and gone["teacher_job"] is None
    assert "teacher side unavailable: gold labels only" == gone["latency_note"]
    assert not np.isnan(no_price["latency_ratio"])
