"""Shared set-up for the benchmarks: data, timing helpers. Run benchmarks from the repo root."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

MOSI_CONFIG = REPO / "configs/data/mosi.yaml"
MOSI_DIR = REPO.parent / "shared/data/mosi"


def bench_data(tmp: Path, n_synth: int = 200):
    """The DataConfig of MOSI (text + audio) when the shared data is present, else of the
    synthetic set (written under ``tmp``)."""
    from workbench.config import DataConfig, load_config
    from workbench.data.synth import SynthSpec, write

    if (MOSI_DIR / "mosi_label.csv").is_file():
        return load_config(DataConfig, MOSI_CONFIG, [f"path={MOSI_DIR / 'mosi_label.csv'}",
                                                     f"features={MOSI_DIR / 'mosi_bclstm_features.npz'}"])
    manifest = write(tmp / "synth", SynthSpec(n=n_synth))
    return DataConfig(path=str(manifest), features=str(tmp / "synth/features.npz"))


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.s = time.perf_counter() - self.t0


def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def run_finished(out: Path) -> bool:
    """Whether the distillation run in ``out`` has finished (its last state says so)."""
    state = out / "last" / "trainer_state.json"
    return state.is_file() and bool(json.loads(state.read_text()).get("finished"))
