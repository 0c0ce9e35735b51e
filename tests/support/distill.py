"""Tiny data, a teacher cache built through the real caching job, and small distill configs
shared by the trainer's, the methods' and the evaluation tests.

The teacher is a test double implementing the :class:`teachers.base.Teacher` protocol: it
reads the transcript from the rendered prompt and answers deterministically -- soft labels
as top-k log-probabilities peaked near the gold score, descriptions as short sentences --
so the cache goes through the same planning, parsing and storage as a real model's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prompts import load_template
from students.batching import EpochSampler
from teachers.base import OnResult, RawOutput, TeacherRequest
from teachers.job import CachingJob
from workbench.cache.store import CacheStore
from workbench.config import CacheConfig, DataConfig, DistillConfig, TeacherConfig, load_config
from workbench.data import load_dataset
from workbench.data.synth import SynthSpec, write

DIGITS = ["1", "2", "3", "4", "5", "6", "7"]


@contextmanager
def interrupted_at_epoch(epoch: int) -> Iterator[None]:
    """Inside: training raises KeyboardInterrupt as epoch ``epoch`` (0-based) starts, as a
    user's Ctrl-C would, after the epochs before it were saved."""
    real = EpochSampler.set_epoch

    def stop(self, e):
        if e == epoch:
            raise KeyboardInterrupt("stopped by the test")
        real(self, e)

    EpochSampler.set_epoch = stop
    try:
        yield
    finally:
        EpochSampler.set_epoch = real


def tiny_data(root: Path, n: int = 48, seed: int = 0) -> dict[str, Any]:
    """Write a synthetic dataset under ``root``; return its DataConfig fields."""
    manifest = write(root, SynthSpec(n=n, seed=seed, audio_dim=6, vision_dim=5))
    return {"name": "synth", "path": str(manifest), "features": str(root / "features.npz"),
            "feature_keys": {"audio": "audio", "vision": "vision"},
            "modalities": ["text", "audio", "vision"]}


class FakeTeacher:
    """Deterministic teacher: soft labels near the gold score, one-line descriptions.

    ``fail_every`` k > 0 makes every k-th request a ``server_error`` row.
    """

    name = "fake"

    def __init__(self, labels_by_text: dict[str, float], fail_every: int = 0) -> None:
        self.labels_by_text = labels_by_text
        self.fail_every = fail_every
        self.calls = 0

    def model_id(self) -> str:
        return "fake-teacher@1"

    def load(self) -> None:
        return None

    def close(self) -> None:
        return None

    def _label(self, prompt: str) -> float:
        hits = [lab for text, lab in self.labels_by_text.items() if f'"{text}"' in prompt]
        return float(hits[0]) if hits else 0.0

    def generate(self, requests: Iterable[TeacherRequest], on_result: OnResult) -> None:
        for req in requests:
            self.calls += 1
            if self.fail_every and self.calls % self.fail_every == 0:
                raw = RawOutput(error_kind="server_error", error="HTTP 503 (test double)")
            elif req.want_logprobs:
                y = self._label(req.prompt)
                logits = [-0.8 * (v - y) ** 2 for v in range(-3, 4)]
                lse = math.log(sum(math.exp(x) for x in logits)) + 0.05  # a little off-label mass
                top = [[d, x - lse] for d, x in zip(DIGITS, logits, strict=True)]
                best = max(top, key=lambda t: t[1])
                raw = RawOutput(text=best[0], positions=[{"token": best[0], "logprob": best[1],
                                                          "top": top}],
                                tokens_in=20, tokens_out=1, latency_s=0.01)
            else:
                y = self._label(req.prompt)
                mood = "pleased and upbeat" if y > 0.5 else "annoyed and flat" if y < -0.5 \
                    else "calm and neutral"
                raw = RawOutput(text=f"The speaker sounds {mood}.", tokens_in=30, tokens_out=8,
                                latency_s=0.02)
            if not on_result(req, raw):
                return


def make_cache(cache_dir: Path, data: dict[str, Any], template: str, *,
               splits: list[str] | None = None, fail_every: int = 0) -> str:
    """Fill ``cache_dir`` with ``template`` answers of the fake teacher; return the job id."""
    dcfg = load_config(DataConfig, None, [f"{k}={v}" for k, v in yaml_items(data)])
    ds = load_dataset(dcfg)
    labels = {s.text: float(s.label or 0.0) for s in ds.iter_samples()}
    teacher = FakeTeacher(labels, fail_every=fail_every)
    tcfg = TeacherConfig()
    ccfg = CacheConfig(dir=str(cache_dir), template=template, max_error_rate=1.0)
    with CacheStore(cache_dir) as store:
        job = CachingJob(tcfg, ccfg, load_template(template), ds, store, teacher.model_id())
        planned = job.plan(splits)
        job.run(teacher, planned)
        return job.job_id


def yaml_items(d: dict[str, Any]) -> list[tuple[str, str]]:
    """DataConfig fields as ``(key, value)`` override pairs (values as YAML)."""
    import json

    return [(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in d.items()]


def distill_cfg(out_dir: Path, data: dict[str, Any], *overrides: str) -> DistillConfig:
    """A tiny, fast DistillConfig (MiniLM + LoRA r=2, width 16) on ``data``."""
    base = {
        "data": data,
        "student": {"hidden": 16, "heads": 2, "bottleneck_tokens": 2, "max_text_len": 16,
                    "prompt_max_len": 16, "dropout": 0.1,
                    "lora": {"r": 2, "alpha": 4, "dropout": 0.0}},
        "train": {"output_dir": str(out_dir), "epochs": 2, "batch_size": 8,
                  "early_stop_patience": 0, "num_threads": 1, "lr": 3e-3, "encoder_lr": 1e-3,
                  "seed": 7},
        "eval": {"batch_size": 32},
    }
    import yaml

    path = out_dir.parent / f"{out_dir.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(base))
    return load_config(DistillConfig, path, list(overrides))
