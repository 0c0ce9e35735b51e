"""The media stage on Ray (``media.engine: ray``) on a real local Ray instance: the same
dataset as worker processes (ids and order, content hashes, features, error rows), the
error-rate stop still stopping early, and Ray absent as one clear error before any work."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.integration.test_media_ingest import BAD, GOOD, folder, job  # noqa: F401 (fixture)
from tests.support.media import tone
from tests.support.ray_local import ray_local  # noqa: F401
from workbench.cli import app
from workbench.config import ConfigError, MediaConfig
from workbench.data.ingest import ERRORS_FILE, MediaJobFailed, ingest_media
from workbench.data.media import wav_bytes
from workbench.data.store import MSADataset, file_sha256

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MANIFEST_ARGS = ["video_file_column=video", "audio_file_column=audio", "frames_column=frames",
                 "media.max_error_rate=0.6"]


def contents(out: Path) -> list[dict]:
    """Each sample of the dataset at ``out`` as what it holds, paths replaced by the hashes
    of the files they name (the two runs write under different directories)."""
    rows = []
    for s in MSADataset.load(out).samples():
        rows.append({
            "id": s.id, "split": s.split, "label": s.label, "text": s.text,
            "frames": [file_sha256(p) for p in s.media.frames],
            "audio_file": file_sha256(s.media.audio_file) if s.media.audio_file else None,
            "audio": s.audio, "audio_length": s.audio_length,
            "meta": s.meta,
        })
    return rows


def test_ray_gives_the_dataset_worker_processes_give(folder, tmp_path, ray_local):  # noqa: F811
    by_processes = ingest_media(job(folder, tmp_path / "processes", processes=2))
    # the command a user runs, as a driver joining the cluster by its address
    res = subprocess.run([sys.executable, "-m", "workbench.cli", "data", "media",
                          str(folder / "manifest.csv"), *MANIFEST_ARGS, "--out",
                          str(tmp_path / "ray"), "--engine", "ray", "--ray-address", ray_local],
                         capture_output=True, text=True, cwd=REPO, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"})
    output = res.stdout + res.stderr
    assert res.returncode == 0, output
    assert f"ingested {len(GOOD)} of {len(GOOD) + len(BAD)} clips" in output
    assert "Dataset" not in output and "Traceback" not in output  # Ray's chatter: only with -v
    assert by_processes.done == len(GOOD)
    a, b = contents(tmp_path / "processes"), contents(tmp_path / "ray")
    assert [r["id"] for r in b] == [r["id"] for r in a]  # same ids, same (manifest) order
    for ra, rb in zip(a, b, strict=True):
        assert rb["frames"] == ra["frames"] and rb["audio_file"] == ra["audio_file"], ra["id"]
        assert (rb["audio"] is None) == (ra["audio"] is None), ra["id"]
        if ra["audio"] is not None:
            assert rb["audio_length"] == ra["audio_length"]
            np.testing.assert_allclose(rb["audio"], ra["audio"], atol=1e-6, rtol=0)
            np.testing.assert_allclose(rb["meta"].pop("egemaps"), ra["meta"].pop("egemaps"),
                                       atol=1e-6, rtol=0)
        assert {k: v for k, v in rb.items() if k not in ("audio",)} == \
            {k: v for k, v in ra.items() if k not in ("audio",)}, ra["id"]
    assert MSADataset.load(tmp_path / "ray").fingerprint == MSADataset.load(tmp_path / "processes").fingerprint
    # the same error rows, in the manifest's order
    errors = (tmp_path / "ray" / ERRORS_FILE).read_text()
    assert errors == (tmp_path / "processes" / ERRORS_FILE).read_text()
    assert [json.loads(line)["id"] for line in errors.splitlines()] == list(BAD)
    # the clips' keys do not depend on the engine: Ray over the processes' output skips all
    again = ingest_media(job(folder, tmp_path / "processes", engine="ray"))
    assert again.done == 0 and again.skipped == len(GOOD) and len(again.errors) == len(BAD)


def test_the_error_rate_stop_stops_ray_early(tmp_path, ray_local):  # noqa: F811
    """Three missing files first, then 24 good clips: past one error the job stops, and the
    clips it had not started are never decoded."""
    (tmp_path / "speech.wav").write_bytes(wav_bytes(tone(180.0, 6.0)))
    good = 24
    with (tmp_path / "m.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "label", "split", "audio", "start", "end"])
        for i in range(3):
            w.writerow([f"missing_{i}", "gone", 0, "train", f"nowhere_{i}.wav", "", ""])
        for i in range(good):
            w.writerow([f"seg_{i}", "fine", 1, "train", "speech.wav", i * 0.25, i * 0.25 + 0.25])
    from workbench.config import DataConfig, MediaJobConfig

    out = tmp_path / "ds"
    cfg = MediaJobConfig(data=DataConfig(path=str(tmp_path / "m.csv"), audio_file_column="audio"),
                         media=MediaConfig(engine="ray", max_error_rate=0.05, cues=False),
                         out=str(out))
    with pytest.raises(MediaJobFailed, match="clips failed") as e:
        ingest_media(cfg)
    assert "missing_" in str(e.value) and (out / ERRORS_FILE).is_file()
    done = len(list((out / "media" / "clips").glob("*.json")))
    assert done < good // 2, f"{done} of {good} good clips decoded after the stop"
    # what was done stays; the rest is decoded on a rerun that allows the errors
    cfg.media.max_error_rate = 0.5
    report = ingest_media(cfg)
    assert report.skipped == done and report.done == good - done and len(report.errors) == 3


def test_without_ray_the_cli_says_which_extra_before_any_work(folder, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as where it is absent
    out = tmp_path / "ds"
    res = CliRunner().invoke(app, ["data", "media", str(folder / "manifest.csv"), *MANIFEST_ARGS,
                                   "--out", str(out), "--engine", "ray"])
    assert res.exit_code == 2, res.output
    assert "'ray' extra" in res.output and "pip install" in res.output
    assert "Traceback" not in res.output
    assert not out.exists()  # nothing read, nothing written


def test_a_ray_address_without_the_ray_engine_is_refused():
    with pytest.raises(ConfigError, match="media.ray_address.*media.engine=ray"):
        MediaConfig(ray_address="auto")
