"""Tiny trained checkpoints shared by the evaluation, predict and export tests.

:func:`tiny_checkpoints` trains two students once per test session on 48 synthetic samples
(MiniLM, one epoch, text length 16, width 16): ``a`` with a LoRA adapter and soft labels
from a teacher cache filled by the real caching job (fake teacher), ``b`` with a frozen
text encoder on gold labels only. Both live in one ``runs/`` directory, as ``runs/*`` of a
real project would. The result is kept under pytest's session base temp, so every test
module of the session reuses it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from students.trainer import train
from tests.support.distill import distill_cfg, make_cache, tiny_data

DONE = "built.json"


def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``{"data": DataConfig fields, "data_yaml", "cache", "runs", "a", "b"}`` (paths)."""
    root = tmp_path_factory.getbasetemp() / "eval_checkpoints"
    done = root / DONE
    if done.is_file():
        return {k: Path(v) if k != "data" else v for k, v in json.loads(done.read_text()).items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = tiny_data(root / "data", n=48)
        cache = root / "cache"
        make_cache(cache, data, "sentiment_score")
        runs = root / "runs"
        a = train(distill_cfg(runs / "a", data, f"signals.cache_dir={cache}", "train.epochs=1",
                              "train.missing.enabled=true", "eval.batch_size=16"))
        b = train(distill_cfg(runs / "b", data, "signals.cache_dir=", "train.epochs=1",
                              "train.seed=8", "student.text_mode=frozen",
                              "eval.batch_size=16"))
    finally:
        torch.set_num_threads(threads)
    import yaml

    data_yaml = root / "data.yaml"
    data_yaml.write_text(yaml.safe_dump(data))
    out = {"data": data, "data_yaml": str(data_yaml), "cache": str(cache), "runs": str(runs),
           "a": str(a), "b": str(b)}
    done.write_text(json.dumps(out))
    return {k: Path(v) if k != "data" else v for k, v in out.items()}
