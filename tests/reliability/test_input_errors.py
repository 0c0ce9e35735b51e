"""Hostile or damaged inputs end as one clean message, quickly: a YAML alias bomb, values
too large to print, a checkpoint tensor of the wrong shape, NaN weights, predictions that
overflow, and a disk that fills while an export or a checkpoint is written.

Each case runs the real ``workbench`` command: the alias bomb in a subprocess under a memory
limit and a timeout, the others in-process through typer's runner on a real tiny checkpoint
(``tests/support/checkpoints.py``) damaged the way it would be. The disk fills for real on a
small tmpfs where the test may mount one, and by an injected ENOSPC (safetensors' own error
text) elsewhere.
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from tests.reliability.conftest import fill_disk
from workbench.cli import app
from workbench.config import DistillConfig, load_config

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()
ENOSPC_TEXT = "Error while serializing: I/O error: No space left on device (os error 28)"
"""What safetensors raises (a SafetensorError, not an OSError) when the disk is full."""


def fails(*args: object) -> str:
    """Run ``workbench ARGS``; assert one clean error (exit 2, no traceback); its words."""
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert "Traceback" not in r.output
    assert r.output.startswith("error: ") or "\nerror: " in r.output, r.output
    assert r.output.count("error: ") == 1, r.output
    return " ".join(r.output.split())  # rich may wrap; compare words


# ------------------------------------------------------------------ YAML alias bomb


def bomb_value(levels: int = 9, width: int = 9) -> str:
    """A flow list whose items anchor lists of ``width`` aliases to the previous one: 9
    levels of 9 stand for 9**9 (387 million) strings in a few hundred bytes."""
    items = ["&a [" + ",".join(["x"] * width) + "]"]
    for i in range(1, levels):
        prev, name = chr(ord("a") + i - 1), chr(ord("a") + i)
        items.append(f"&{name} [" + ",".join([f"*{prev}"] * width) + "]")
    return "[" + ", ".join(items) + "]"


def limited(mb: int):
    def set_limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (mb << 20, mb << 20))
    return set_limit


def run_cli_limited(args: list[str], mb: int = 2048, timeout: float = 60) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "workbench.cli", *args], cwd=REPO,
                       capture_output=True, text=True, timeout=timeout, preexec_fn=limited(mb),
                       env={**os.environ, "COLUMNS": "400"})
    return r.returncode, r.stdout + r.stderr, time.perf_counter() - t0


@pytest.mark.parametrize("how", ["cache run --config", "data stats", "data stats override"])
def test_a_yaml_alias_bomb_is_refused_quickly_naming_the_file(tmp_path, how):
    if how == "cache run --config":  # the recipe's data section holds the bomb
        bomb = tmp_path / "bomb.yaml"
        bomb.write_text(f"data:\n  name: {bomb_value()}\n")
        args = ["cache", "run", "--config", str(bomb)]
        where = str(bomb)
    elif how == "data stats":
        bomb = tmp_path / "bomb.yaml"
        bomb.write_text(f"name: {bomb_value()}\n")
        args = ["data", "stats", str(bomb)]
        where = str(bomb)
    else:  # the same bomb typed as a command-line override
        data = tmp_path / "data.yaml"
        data.write_text("name: x\n")
        args = ["data", "stats", str(data), f"name={bomb_value()}"]
        where = "command-line override 'name=["
    assert len(bomb_value()) < 400
    rc, out, seconds = run_cli_limited(args)
    assert rc == 2, out[-2000:]
    assert "Traceback" not in out and "MemoryError" not in out, out[-2000:]
    lines = [ln for ln in out.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, out[-2000:]
    assert lines[0].startswith(f"error: {where}"), lines[0]
    assert "aliases" in lines[0] and "more than 10000 values" in lines[0]
    assert "alias only small sections" in lines[0]
    assert len(out) < 4000 and seconds < 30, (len(out), seconds)


def test_an_alias_to_the_list_that_contains_it_is_refused(tmp_path):
    cfg = tmp_path / "loop.yaml"
    cfg.write_text("path: x.csv\nmodalities: &m [text, *m]\n")
    out = fails("data", "stats", cfg)
    assert f"error: {cfg}: line 2: alias *m refers to the value that contains it" in out
    assert "cannot contain itself" in out


def test_anchors_for_small_sections_still_load(tmp_path):
    cfg = tmp_path / "recipe.yaml"
    cfg.write_text(
        "data: {name: demo, path: x.csv, modalities: &mods [text, audio], class_names: *mods}\n"
        "student: {hidden: 16, lora: &lora {r: 2, alpha: 4}}\n"
        "train:\n"
        "  missing: {<<: &on {enabled: true}, complete_fraction: 0.25}\n"
        "  conflict: *on\n")
    loaded = load_config(DistillConfig, cfg)
    assert loaded.train.conflict.enabled and loaded.train.missing.enabled
    assert loaded.train.missing.complete_fraction == 0.25
    assert loaded.data.class_names == ["text", "audio"] == loaded.data.modalities
    assert (loaded.student.lora.r, loaded.student.lora.alpha) == (2, 4)


def test_every_shipped_config_reads_as_plain_yaml_does():
    from workbench.config.loader import load_yaml_text

    files = sorted(REPO.glob("configs/**/*.yaml"))
    assert files
    for f in files:
        text = f.read_text()
        assert load_yaml_text(text, str(f)) == yaml.safe_load(text), f


@pytest.mark.parametrize("value", ["list", "string"])
def test_a_large_value_in_an_error_is_cut(tmp_path, value):
    cfg = tmp_path / "big.yaml"
    if value == "list":  # 5000 items, no aliases: printed whole, the line was 25 kB
        cfg.write_text("name: [" + ", ".join(f"item{i}" for i in range(5000)) + "]\n")
        what = "name must be a string, got ['item0', 'item1',"
    else:
        cfg.write_text("path: x.csv\ncontext_turns: " + "y" * 20000 + "\n")
        what = "context_turns='yyyy"
    out = fails("data", "stats", cfg)
    assert f"error: {cfg}: {what}" in out, out[:400]
    assert "…" in out and len(out) < 600, len(out)


# ------------------------------------------------------------------ checkpoints


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from tests.support.checkpoints import tiny_checkpoints

    return tiny_checkpoints(tmp_path_factory)


@pytest.fixture
def ck(built, tmp_path):
    """A copy of the tiny LoRA student's checkpoint, to damage."""
    out = tmp_path / "checkpoint-best"
    shutil.copytree(built["a"], out)
    return out


def rewrite(path: Path, change) -> None:
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def eval_and_predict(ck: Path, tmp_path: Path) -> list[str]:
    """The one error line of ``workbench eval`` and of ``workbench predict`` on ``ck``; both
    wrote nothing."""
    outs = [fails("eval", ck, "--out", tmp_path / "eval", "--device", "cpu"),
            fails("predict", ck, "--out", tmp_path / "p.csv", "--device", "cpu")]
    assert not (tmp_path / "eval").exists() and not (tmp_path / "p.csv").exists()
    return outs


@pytest.mark.parametrize("part,tensor", [
    ("model.safetensors", "fusion.ffn.0.weight"),
    ("adapter/adapter_model.safetensors",
     "base_model.model.encoder.layer.0.attention.self.query.lora_A.weight")])
def test_a_wrongly_shaped_tensor_is_named_with_both_shapes(ck, tmp_path, part, tensor):
    file = ck / part
    shapes = {}

    def widen(t):
        shapes["want"] = list(t[tensor].shape)
        t[tensor] = torch.zeros(t[tensor].shape[0], t[tensor].shape[1] + 1)
        shapes["found"] = list(t[tensor].shape)

    rewrite(file, widen)
    for out in eval_and_predict(ck, tmp_path):
        assert (f"error: {file}: tensor '{tensor}' has shape {shapes['found']}, but the model "
                f"its config builds expects {shapes['want']}") in out, out
        assert "put back the file its run wrote" in out


def test_nan_weights_are_named_before_anything_is_predicted(ck, tmp_path):
    file = ck / "model.safetensors"

    def poison(t):
        t["fusion.ffn.0.weight"][0, :3] = float("nan")
        t["head.4.bias"][:] = float("inf")

    rewrite(file, poison)
    for out in eval_and_predict(ck, tmp_path):
        assert f"error: {file}: 2 tensor(s) hold NaN or infinite weights" in out, out
        assert "'fusion.ffn.0.weight' (3 of" in out and "'head.4.bias' (1 of 1 values)" in out
        assert "diverged" in out and "lower train.lr" in out


def test_finite_weights_whose_predictions_overflow_are_named(ck, tmp_path):
    rewrite(ck / "model.safetensors", lambda t: t["head.1.bias"].fill_(3e38))
    for out in eval_and_predict(ck, tmp_path):
        assert f"error: {ck}: its predictions on split 'test'" in out, out
        assert "are not finite (NaN or infinite) for" in out and "(first ids [" in out
        assert "lower train.lr" in out


# ------------------------------------------------------------------ disk full


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_export_onto_a_full_tmpfs_names_the_directory(built, small_fs):
    out_dir = small_fs / "export"
    out = fails("export", built["a"], "--out", out_dir)
    assert (f"error: {out_dir}: the disk is full (ENOSPC, no space left on device) while "
            "writing the export") in out, out
    assert f"Nothing was left in {out_dir}" in out and "pass --out on another disk" in out
    assert sorted(p.name for p in small_fs.iterdir()) == []  # no half-written directory


def test_an_injected_full_disk_keeps_the_old_export(built, tmp_path, monkeypatch):
    out_dir = tmp_path / "export"
    r = runner.invoke(app, ["export", str(built["a"]), "--out", str(out_dir)])
    assert r.exit_code == 0, r.output
    before = tree_digest(out_dir)

    def full(*a, **k):
        raise SafetensorError(ENOSPC_TEXT)

    monkeypatch.setattr("students.export.merge.save_file", full)
    out = fails("export", built["a"], "--out", out_dir, "--force")
    assert f"error: {out_dir}: the disk is full (ENOSPC" in out, out
    assert f"The export already in {out_dir} is left as it was" in out
    assert tree_digest(out_dir) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_distill_on_a_full_disk_keeps_the_best_checkpoint(built, tmp_path, monkeypatch):
    from students.checkpoint import load_checkpoint
    from tests.support.distill import distill_cfg

    run = tmp_path / "run"
    distill_cfg(run, built["data"], "train.epochs=2")  # writes run.yaml beside run/
    monkeypatch.setattr("students.recipe.better", lambda *a: True)  # both epochs save
    import students.checkpoint as checkpoint

    real_save, calls = checkpoint.save_file, []

    def fills_on_second_checkpoint(*a, **k):
        calls.append(a[1])
        if len(calls) == 2:
            raise SafetensorError(ENOSPC_TEXT)
        return real_save(*a, **k)

    monkeypatch.setattr(checkpoint, "save_file", fills_on_second_checkpoint)
    best = run / "checkpoint-best"
    out = fails("distill", "--config", tmp_path / "run.yaml")
    assert f"error: {best}: the disk is full (ENOSPC" in out, out
    assert f"The checkpoint already in {best} is left as it was" in out and "--resume" in out
    assert yaml.safe_load((best / "selection.json").read_text())["epoch"] == 1
    assert sorted(p.name for p in run.iterdir() if "checkpoint" in p.name) == ["checkpoint-best"]
    monkeypatch.undo()
    load_checkpoint(best)  # complete and loadable


def test_a_full_tmpfs_while_distill_saves_keeps_the_best_checkpoint(built, tmp_path):
    """The real error: a tmpfs filled just before the second epoch's checkpoint."""
    from students import recipe
    from tests.reliability.conftest import mount_tmpfs
    from tests.support.distill import distill_cfg

    fs = tmp_path / "fs"
    mount_tmpfs(fs, 220 * 1024)  # one run's last/ (the frozen MiniLM: 87 MB) twice, and more
    try:
        run = fs / "run"
        distill_cfg(run, built["data"], "train.epochs=2")
        real_write, calls = recipe.StageRecipe.write_best, []

        def write_best(self, *a, **k):
            calls.append(1)
            if len(calls) == 2:
                fill_disk(fs, leave_bytes=16 * 1024)
            return real_write(self, *a, **k)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(recipe.StageRecipe, "write_best", write_best)
            mp.setattr("students.recipe.better", lambda *a: True)
            out = fails("distill", "--config", fs / "run.yaml")
        best = run / "checkpoint-best"
        assert f"error: {best}: the disk is full (ENOSPC" in out, out
        assert f"The checkpoint already in {best} is left as it was" in out
        assert yaml.safe_load((best / "selection.json").read_text())["epoch"] == 1
        (fs / "ballast.bin").unlink()
        from students.checkpoint import load_checkpoint

        load_checkpoint(best)
    finally:
        subprocess.run(["umount", "-l", str(fs)], check=False)


def test_a_template_or_a_run_config_with_an_alias_bomb_is_one_error(tmp_path):
    """Prompt templates and a run's config.yaml on --resume are read with the same bounded
    loader as every config (were plain yaml.safe_load)."""
    import time

    from prompts.template import TemplateError, load_template
    from students.rundir import _started_with
    from students.trainer import TrainError

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(f"name: x\nversion: 1\nsystem: {bomb_value()}\n")
    t0 = time.perf_counter()
    with pytest.raises(TemplateError, match=f"{bomb}.*alias"):
        load_template(str(bomb))
    with pytest.raises(TrainError, match="--resume.*alias"):
        _started_with(bomb, tmp_path)
    assert time.perf_counter() - t0 < 10
