"""The shared trained checkpoints (tests/support/checkpoints.py) are complete and built once."""

from __future__ import annotations

import json

from tests.support.checkpoints import tiny_checkpoints


def test_tiny_checkpoints_are_complete_and_reused(tmp_path_factory):
    ck = tiny_checkpoints(tmp_path_factory)
    for name in ("a", "b"):
        assert (ck[name] / "model.safetensors").is_file()
        assert ck[name] == ck["runs"] / name / "checkpoint-best"
    manifest = json.loads((ck["a"] / "teacher_manifest.json").read_text())
    assert manifest["soft_labels"]["cache_dir"] == str(ck["cache"])
    assert json.loads((ck["b"] / "student.json").read_text())["text_mode"] == "frozen"
    assert tiny_checkpoints(tmp_path_factory) == ck
