"""Whole distillation runs on tiny synthetic data with the real MiniLM student and a teacher
cache filled through the real caching job: checkpoint layout, reloading, resume equality,
the two-stage prompted distillation, the test split left alone, and `accelerate launch`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

import students.collate as collate_mod
from students.checkpoint import CheckpointError, load_checkpoint
from students.inference import predict
from students.model import StudentModel
from students.trainer import train
from tests.support.distill import distill_cfg, interrupted_at_epoch
from workbench.data import MSADataset, load_dataset
from workbench.io import old_path
from workbench.metrics import compute_metrics

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]
REPO = Path(__file__).resolve().parents[2]
FULL = ("signals.cache_dir={cache}", "train.weighting.enabled=true", "train.missing=true",
        "loss.unimodal_aux=0.2")


def _full(cache: Path) -> list[str]:
    return [o.format(cache=cache) for o in FULL]


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory, data, cache):
    """Two epochs with soft labels, quality weights and LNLN masks, recording every id
    the collator sees and every split the trainer reads."""
    out = tmp_path_factory.mktemp("runs") / "unbroken"
    seen_ids: list[str] = []
    seen_splits: list[object] = []
    real_collate = collate_mod.collate
    real_samples, real_iter = MSADataset.samples, MSADataset.iter_samples

    def spy_collate(items, *a, **k):
        seen_ids.extend(it.sample.id if hasattr(it, "sample") else it.id for it in items)
        return real_collate(items, *a, **k)

    def caller() -> str:
        return sys._getframe(2).f_globals.get("__name__", "")

    def spy_samples(self, split=None):
        if caller().startswith("students"):
            seen_splits.append(split)
        return real_samples(self, split)

    def spy_iter(self, split=None):
        if caller().startswith("students"):
            seen_splits.append(split)
        return real_iter(self, split)

    mp = pytest.MonkeyPatch()
    mp.setattr(collate_mod, "collate", spy_collate)
    mp.setattr(MSADataset, "samples", spy_samples)
    mp.setattr(MSADataset, "iter_samples", spy_iter)
    try:
        best = train(distill_cfg(out, data, *_full(cache)))
    finally:
        mp.undo()
    return {"out": out, "best": best, "ids": seen_ids, "splits": seen_splits}


def test_checkpoint_holds_every_file(unbroken, data):
    best = unbroken["best"]
    assert best == unbroken["out"] / "checkpoint-best"
    for name in ("config.yaml", "versions.json", "student.json", "data_info.json",
                 "model.safetensors", "adapter/adapter_config.json",
                 "adapter/adapter_model.safetensors", "teacher_manifest.json", "selection.json"):
        assert (best / name).is_file(), name
    sel = json.loads((best / "selection.json").read_text())
    assert sel["split"] == "valid" and sel["metric"] == "valid_mae" and sel["mode"] == "min"
    assert sel["epoch"] in (1, 2) and sel["value"] == sel["metrics"]["valid_mae"]
    manifest = json.loads((best / "teacher_manifest.json").read_text())
    soft = manifest["soft_labels"]
    assert soft["job"]["template"] == "sentiment_score" and soft["splits"] == ["train"]
    assert soft["job"]["uses_gold_label"] is False and manifest["uses_gold_label"] is False
    assert soft["ok"] == soft["samples"] > 0 and manifest["privileged"] is None
    info = json.loads((best / "data_info.json").read_text())
    assert info["fingerprint"] == load_dataset(yaml_data(data)).fingerprint
    weights = load_file(str(best / "model.safetensors"))
    assert weights and not any(k.startswith("text.model.") for k in weights)
    assert "bin_head.weight" in weights
    cfg = yaml.safe_load((best / "config.yaml").read_text())
    assert cfg["train"]["weighting"]["enabled"] and cfg["signals"]["cache_dir"]
    state = json.loads((unbroken["out"] / "last" / "trainer_state.json").read_text())
    assert state["finished"] and [h["epoch"] for h in state["history"]] == [1, 2]


def yaml_data(data):
    from workbench.config import DataConfig, load_config

    return load_config(DataConfig, None, [f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
                                          for k, v in data.items()])


def test_load_checkpoint_reproduces_the_validation_metrics(unbroken):
    model, cfg, meta = load_checkpoint(unbroken["best"])
    assert isinstance(model, StudentModel) and not model.training
    assert meta.kind == "student" and meta.bins == [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0]
    ds = load_dataset(cfg.data)
    valid = ds.samples("valid")
    preds = predict(model, valid, batch_size=5)
    got = compute_metrics(meta.info.metric_set, preds, [s.label for s in valid])
    for k, v in meta.selection["metrics"].items():
        if k != "valid_loss":  # the task loss, not a metric of the set
            assert got[k.removeprefix("valid_")] == pytest.approx(v, abs=1e-6), k
    # the same predictions in any batching and order
    again = predict(model, valid[::-1], batch_size=64)[::-1]
    np.testing.assert_allclose(preds, again, atol=1e-5)


def test_load_checkpoint_names_a_missing_file(unbroken, tmp_path):
    import shutil

    broken = tmp_path / "ckpt"
    shutil.copytree(unbroken["best"], broken)
    (broken / "adapter" / "adapter_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="adapter_model.safetensors"):
        load_checkpoint(broken)
    (broken / "data_info.json").unlink()
    with pytest.raises(CheckpointError, match="no data_info.json"):
        load_checkpoint(broken)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing")


def test_training_never_reads_the_test_split(unbroken, data):
    ds = load_dataset(yaml_data(data))
    test_ids = {s.id for s in ds.iter_samples("test")}
    assert test_ids and unbroken["ids"]
    assert not test_ids & set(unbroken["ids"])
    assert unbroken["splits"] and set(unbroken["splits"]) <= {"train", "valid"}, unbroken["splits"]


def test_resume_matches_an_unbroken_run(unbroken, data, cache, tmp_path):
    out = tmp_path / "stopped"
    cfg = distill_cfg(out, data, *_full(cache))
    with interrupted_at_epoch(1), pytest.raises(KeyboardInterrupt):
        train(cfg)
    state = json.loads((out / "last" / "trainer_state.json").read_text())
    assert state["epochs_done"] == 1 and not state["finished"]
    # a crash between the two renames of last/'s swap leaves only the old copy, set aside:
    # resume takes it back and continues from it
    (out / "last").rename(old_path(out / "last"))
    best = train(distill_cfg(out, data, *_full(cache)), resume=True)
    a = json.loads((unbroken["out"] / "last" / "trainer_state.json").read_text())
    b = json.loads((out / "last" / "trainer_state.json").read_text())
    assert b["finished"] and b["epochs_done"] == 2
    for ha, hb in zip(a["history"], b["history"], strict=True):
        for k, v in ha["valid"].items():
            assert hb["valid"][k] == pytest.approx(v, abs=1e-6), k
        for k, v in ha["train"].items():
            assert hb["train"][k] == pytest.approx(v, abs=1e-6), k
    wa = load_file(str(unbroken["out"] / "last" / "model.safetensors"))
    wb = load_file(str(out / "last" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0, msg=k)
    sa = json.loads((unbroken["best"] / "selection.json").read_text())
    sb = json.loads((best / "selection.json").read_text())
    assert sa["epoch"] == sb["epoch"] and sa["value"] == pytest.approx(sb["value"], abs=1e-6)
    # a finished run resumes to its result without training again
    assert train(distill_cfg(out, data, *_full(cache)), resume=True) == best


def test_two_stage_prompted_distillation(tmp_path, data, cache, monkeypatch):
    calls: list[tuple[bool, bool]] = []
    real_forward = StudentModel.forward

    def spy_forward(self, batch, return_attention=False):
        calls.append((self.prompt is not None, "descriptions" in batch))
        return real_forward(self, batch, return_attention=return_attention)

    monkeypatch.setattr(StudentModel, "forward", spy_forward)
    out = tmp_path / "mmslf"
    cfg = distill_cfg(out, data, f"signals.cache_dir={cache}", "train.privileged.enabled=true",
                      "train.epochs=1", "train.privileged.attn_weight=0.5")
    best = train(cfg)
    stage1 = out / "prompted" / "checkpoint-best"
    assert (stage1 / "selection.json").is_file()
    t_model, t_cfg, t_meta = load_checkpoint(stage1)
    assert t_meta.kind == "prompted" and t_cfg.student.prompted
    assert t_meta.teacher_manifest["descriptions"]["job"]["template"] == "context_aware"
    assert t_meta.teacher_manifest["soft_labels"] is None
    manifest = json.loads((best / "teacher_manifest.json").read_text())
    assert manifest["privileged"]["checkpoint"] == str(stage1)
    assert manifest["soft_labels"]["job"]["template"] == "sentiment_score"
    s_model, s_cfg, s_meta = load_checkpoint(best)
    assert s_meta.kind == "student" and s_model.prompt is None
    # the prompted network read descriptions; the plain student never got any
    assert any(p and d for p, d in calls)
    assert all(not d for p, d in calls if not p)
    assert any(not p for p, _ in calls)

    # stage 1 reused from its checkpoint: no prompted/ directory in the new run
    out2 = tmp_path / "reuse"
    best2 = train(distill_cfg(out2, data, f"signals.cache_dir={cache}",
                              "train.privileged.enabled=true", "train.epochs=1",
                              f"train.privileged.checkpoint={stage1}"))
    assert best2.is_dir() and not (out2 / "prompted").exists()
    m2 = json.loads((best2 / "teacher_manifest.json").read_text())
    assert m2["privileged"]["checkpoint"] == str(stage1)


def test_accelerate_launch_runs_distill_py(tmp_path, data):
    """What users run: `accelerate launch --config_file configs/accelerate/cpu.yaml distill.py`."""
    recipe = tmp_path / "recipe.yaml"
    cfg = distill_cfg(tmp_path / "unused", data)
    from workbench.config import to_dict

    recipe.write_text(yaml.safe_dump(to_dict(cfg)))
    out = tmp_path / "launched"
    launcher = Path(sys.executable).with_name("accelerate")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(launcher), "launch", "--config_file", "configs/accelerate/cpu.yaml", "distill.py",
         "--config", str(recipe), "train.epochs=1", f"train.output_dir={out}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "checkpoint-best" / "selection.json").is_file()
    assert "best checkpoint" in proc.stderr
    # a config error is reported, not a traceback deep in training
    bad = subprocess.run(
        [sys.executable, "distill.py", "--config", str(recipe), "train.epoch=1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "did you mean 'train.epochs'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_workbench_distill_command_refuses_a_missing_cache(tmp_path):
    """`workbench distill` runs the same trainer as distill.py, with the same clear errors."""
    from typer.testing import CliRunner

    from workbench.cli import app

    r = CliRunner().invoke(app, ["distill", "--config", "configs/distill/mosi_text_audio.yaml",
                                 "signals.cache_dir=" + str(tmp_path / "absent"),
                                 "train.output_dir=" + str(tmp_path / "run")])
    assert r.exit_code == 2
    assert "absent" in r.output or "does not exist" in r.output or "no cache" in r.output
