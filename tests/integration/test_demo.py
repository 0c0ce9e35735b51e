"""`workbench demo`: the three jobs end to end with the embedded models, then a rerun that
reuses the cache and the finished student; `predict` and `export` on its checkpoint."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORKBENCH = Path(sys.executable).parent / "workbench"


@pytest.fixture(scope="module")
def gemma():
    from workbench.models import gemma_hf_dir

    try:
        return gemma_hf_dir()
    except (FileNotFoundError, ImportError) as e:
        pytest.skip(f"the embedded teacher is unavailable: {e}")


def _workbench(*args: str, cwd: Path) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "80", "OMP_NUM_THREADS": "2"}
    res = subprocess.run([str(WORKBENCH), *args], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=900)
    assert res.returncode == 0, f"workbench {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout + res.stderr


@pytest.fixture(scope="module")
def demo_run(gemma, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    args = ("demo", "--out", str(out), "--samples", "60", "--seeds", "1111",
            "--missing-rates", "0,0.5")
    # run from elsewhere than the repository: the demo finds its own configs
    first = _workbench(*args, cwd=out)
    second = _workbench(*args, cwd=out)
    return out, first, second


def test_demo_runs_the_three_jobs_and_prints_the_table(demo_run):
    out, first, _ = demo_run
    assert "1/3 teacher caching job" in first and "3/3 evaluation" in first
    assert "sent (" in first and "0 sent" not in first  # the teacher answered
    run = out / "student-synth"
    results = json.loads((run / "eval-test" / "results.json").read_text())
    complete = results["leaderboard"]["complete"]
    assert 0.0 <= complete["acc2_non0"] <= 1.0 and complete["mae"] > 0
    assert "test metrics" in first and "missing-rate sweep" in first
    assert "student/teacher cost ratio" in first
    assert results["cost"]["comparison"]["cost_ratio"] > 0
    assert (run / "eval-test" / "robustness.png").stat().st_size > 0
    assert f"robustness plot: {run / 'eval-test' / 'robustness.png'}" in first.replace("\n", "")


def test_the_output_is_quiet_and_whole_at_80_columns(demo_run):
    from workbench.metrics import METRIC_NAMES

    _, first, second = demo_run
    for out in (first, second):
        assert "…" not in out, out
        assert max(len(line) for line in out.splitlines()) <= 80
        words = set(out.split())
        for m in METRIC_NAMES["mosi"]:
            assert m in words, (m, out)
        # other libraries' chatter stays behind -v
        for chatter in ("Saving current state", "Model weights saved", "Loading weights",
                        "FutureWarning", "DeprecationWarning"):
            assert chatter not in out, (chatter, out)


def test_a_rerun_reuses_the_cache_and_the_student(demo_run):
    _, _, second = demo_run
    assert "no teacher calls" in second
    assert "already finished" in second
    assert "training afresh" not in second


def test_predict_and_export_work_on_the_demo_checkpoint(demo_run, tmp_path):
    out, _, _ = demo_run
    ckpt = out / "student-synth" / "checkpoint-best"
    preds = tmp_path / "preds.csv"
    _workbench("predict", str(ckpt), "--out", str(preds), "--split", "test", cwd=out)
    rows = list(csv.DictReader(preds.open()))
    assert rows and {"id", "score", "audio_avail", "vision_avail"} <= set(rows[0])
    _workbench("export", str(ckpt), "--out", str(tmp_path / "exported"), cwd=out)
    assert (tmp_path / "exported" / "model.safetensors").is_file()


def test_demo_media_runs_from_raw_files(gemma, tmp_path):
    out = tmp_path / "demo_media"
    args = ("demo", "--media", "--out", str(out), "--samples", "24", "--seeds", "1111",
            "--missing-rates", "0,0.5")
    first = _workbench(*args, cwd=tmp_path)
    assert "ingested 24 clips" in first and "acoustic cues" in first
    assert len(list((out / "synth_media" / "videos").glob("*.mp4"))) == 12
    import sqlite3

    with sqlite3.connect(out / "cache" / "cache.sqlite") as db:
        prompts = [r[0] for r in db.execute("select request from requests")]
    assert prompts and all("pitch: " in p and "speaking rate: " in p for p in prompts)
    assert all("image_url" not in p for p in prompts)  # the text-only teacher sees no frames
    results = json.loads((out / "student-synth_media" / "eval-test" / "results.json").read_text())
    assert results["leaderboard"]["complete"]["mae"] > 0
