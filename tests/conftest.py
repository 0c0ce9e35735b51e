"""Shared fixtures: tiny datasets built in code, and the shared MOSI folder when present."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from tests.support.paths import MOSI_DIR  # noqa: E402 (after the offline switches)
from tests.support.ray_local import ray_local  # noqa: E402, F401 (a local Ray per module)


def mmsa_split(n: int, *, seq: int = 5, da: int = 4, dv: int = 3, aligned: bool = False,
               seed: int = 0, prefix: str = "vid") -> dict:
    """One split of an MMSA pickle with the exact field names the MMSA toolkit uses."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"{prefix}{i // 3}$_${i % 3}" for i in range(n)])
    raw_text = np.array([f"utterance number {i} was {'good' if i % 2 else 'bad'}" for i in range(n)])
    audio = rng.normal(size=(n, seq, da)).astype(np.float32)
    vision = rng.normal(size=(n, seq, dv)).astype(np.float32)
    lengths = rng.integers(1, seq + 1, size=n)
    for i, k in enumerate(lengths):  # zero padding past each length, as MMSA stores it
        audio[i, k:] = 0
        vision[i, k:] = 0
    reg = np.round(rng.uniform(-3, 3, size=n), 1).astype(np.float32)
    part = {
        "id": ids,
        "raw_text": raw_text,
        "text_bert": rng.integers(0, 100, size=(n, 3, 8)).astype(np.float32),
        "audio": audio,
        "vision": vision,
        "regression_labels": reg,
        "classification_labels": (reg > 0).astype(np.float32),
    }
    if not aligned:
        part["audio_lengths"] = [int(k) for k in lengths]
        part["vision_lengths"] = lengths.astype(np.int64)
    return part


@pytest.fixture
def make_mmsa(tmp_path):
    """Write an MMSA pickle (train/valid/test) and return its path."""

    def make(name: str = "tiny.pkl", sizes=(6, 3, 3), aligned: bool = False, mutate=None) -> Path:
        data = {split: mmsa_split(n, aligned=aligned, seed=i, prefix=split[:2])
                for i, (split, n) in enumerate(zip(("train", "valid", "test"), sizes, strict=True))}
        if mutate:
            mutate(data)
        path = tmp_path / name
        with path.open("wb") as f:
            pickle.dump(data, f, protocol=4)
        return path

    return make


@pytest.fixture
def mosi_dir() -> Path:
    if not (MOSI_DIR / "mosi_label.csv").is_file():
        pytest.skip(f"the shared MOSI data is not at {MOSI_DIR} (it is never committed)")
    return MOSI_DIR


@pytest.fixture(scope="module")
def one_thread():
    """One torch intra-op thread for the module: on a shared 2-core machine two threads
    contend and run many times slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Tiny synthetic training data (tests/support/distill.py)."""
    from tests.support.distill import tiny_data

    return tiny_data(tmp_path_factory.mktemp("data"), n=48)


@pytest.fixture(scope="module")
def cache(tmp_path_factory, data):
    """A teacher cache with soft labels (all splits) and descriptions (train, valid)."""
    from tests.support.distill import make_cache

    d = tmp_path_factory.mktemp("cache")
    make_cache(d, data, "sentiment_score")
    make_cache(d, data, "context_aware", splits=["train", "valid"])
    return d
