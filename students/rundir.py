"""The run directory (``train.output_dir``): its names, its progress file, its rules.

::

    <output_dir>/config.yaml          the resolved config the run started with
    <output_dir>/checkpoint-best/     the selected student (students.checkpoint.BEST_DIR)
    <output_dir>/last/                accelerate state + trainer_state.json, for --resume
                                      (+ weight_average.safetensors: train.average_epochs)
    <output_dir>/prompted/            stage 1 (train.privileged.enabled), the same layout
    <output_dir>/augment_weights.csv  the augmented samples' weights (train.augment)

:func:`prepare_output_dir` refuses to start over a run (unless ``--resume`` with the same
config, or ``train.overwrite``); :func:`save_last` swaps ``last/`` in whole through the
atomic-directory helpers of :mod:`workbench.io`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from students.checkpoint import BEST_DIR
from workbench.config import ConfigError, DistillConfig, from_dict, to_dict
from workbench.config.loader import load_yaml_text
from workbench.errors import WorkbenchError
from workbench.io import fresh_temp_dir, remove_dir, swap_dir, temp_dir

RUN_CONFIG = "config.yaml"
LAST_DIR = "last"
PROMPTED_DIR = "prompted"
STATE_FILE = "trainer_state.json"
AVERAGE_FILE = "weight_average.safetensors"
"""The running mean of the trainable weights so far (``train.average_epochs``), in
``last/`` so that a resumed run averages the same epochs as an unbroken one."""
AUGMENT_WEIGHTS_FILE = "augment_weights.csv"
RUN_SUBDIRS = (BEST_DIR, LAST_DIR, PROMPTED_DIR)
RESUME_IGNORED = ("train.overwrite",)
"""Config keys that may differ between a run and its ``--resume``."""
LEGACY_SUFFIXES = (".tmp", ".old")
"""Siblings ``<dir>.tmp`` / ``<dir>.old`` that runs written before :mod:`workbench.io`
may have left beside a run directory's folders."""


class TrainError(WorkbenchError, RuntimeError):
    """A run cannot start or continue; the message says why and what to do."""


@dataclass
class TrainState:
    """Progress of one stage, saved with the accelerate state in ``last/``."""

    epochs_done: int = 0
    global_step: int = 0
    best_value: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0
    finished: bool = False
    stop_reason: str = ""
    averaged: int = 0
    """Epochs in the weight average so far (``train.average_epochs``)."""
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> TrainState:
        return cls(**json.loads(path.read_text()))


def flatten_config(d: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config dict as ``{"section.key": value}`` (lists are values)."""
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flatten_config(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def prepare_output_dir(cfg: DistillConfig, out: Path, resume: bool, accelerator: Any) -> None:
    """Check ``out`` before any work: ``resume`` needs a run there started with the same
    config (:func:`_started_with`: renamed keys mapped, fields added since at their
    default); otherwise ``out`` must hold no run, or ``train.overwrite`` clears it (on
    the main process)."""
    run_cfg = out / RUN_CONFIG
    started = run_cfg.is_file() or any((out / d).exists() for d in RUN_SUBDIRS)
    if resume:
        if not run_cfg.is_file():
            raise TrainError(f"--resume: train.output_dir={str(out)!r} holds no run to continue "
                             f"(no {RUN_CONFIG}); start it without --resume")
        before = flatten_config(to_dict(_started_with(run_cfg, out)))
        now = flatten_config(to_dict(cfg))
        diff = sorted(k for k in set(before) | set(now)
                      if k not in RESUME_IGNORED and before.get(k) != now.get(k))
        if diff:
            shown = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in diff[:8])
            raise TrainError(f"--resume: the config differs from the one the run in {out} "
                             f"started with ({shown}); resume with the same config and "
                             "overrides, or start a new run in another train.output_dir")
        return
    if started:
        if not cfg.train.overwrite:
            raise TrainError(
                f"train.output_dir={str(out)!r} already holds a run; continue it with "
                "--resume, start afresh there with train.overwrite=true, or choose another "
                "train.output_dir")
        if accelerator.is_main_process:
            for d in RUN_SUBDIRS:
                remove_dir(out / d)
                for suffix in LEGACY_SUFFIXES:
                    legacy = out / f"{d}{suffix}"
                    if legacy.exists():
                        shutil.rmtree(legacy)
            run_cfg.unlink(missing_ok=True)
        accelerator.wait_for_everyone()


def _started_with(run_cfg: Path, out: Path) -> DistillConfig:
    """The config a run started with, read through the loader: keys renamed since are
    mapped (:mod:`workbench.config.legacy`), and a field added since takes its default --
    the run trained without it, which is what the default means."""
    try:
        return from_dict(DistillConfig, load_yaml_text(run_cfg.read_text(), str(run_cfg)) or {})
    except ConfigError as e:
        raise TrainError(f"--resume: the config the run in {out} started with ({run_cfg}) "
                         f"does not load here: {e}; start a new run in another "
                         "train.output_dir") from None


def save_last(accelerator: Any, last_dir: Path, state: TrainState,
              average: dict[str, Any] | None = None) -> None:
    """Accelerate state + trainer state (+ the weight average, when one is kept) into
    ``last/``, swapped in whole.

    Every rank saves into the same temporary directory (:func:`workbench.io.temp_dir`,
    emptied by the main process first); the main process adds the trainer state and
    swaps it in (:func:`workbench.io.swap_dir`).
    """
    if accelerator.is_main_process:
        fresh_temp_dir(last_dir)
    accelerator.wait_for_everyone()
    tmp = temp_dir(last_dir)
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=2) + "\n")
        if average:
            from safetensors.torch import save_file

            save_file(average, str(tmp / AVERAGE_FILE))
        swap_dir(tmp, last_dir)
    accelerator.wait_for_everyone()


def load_average(last_dir: Path) -> dict[str, Any]:
    """The weight average saved in ``last/`` (empty when none was kept)."""
    path = last_dir / AVERAGE_FILE
    if not path.is_file():
        return {}
    from safetensors.torch import load_file

    return load_file(str(path))


def rng_state_problem(last_dir: Path, process_index: int) -> str:
    """Why ``last/``'s random-state file of this process will not be restored on resume
    ("" when it will): accelerate loads it as plain data only (``weights_only``) and skips
    one that needs code to unpickle, or is missing, with an INFO line alone."""
    from accelerate.utils import load

    path = Path(last_dir) / f"random_states_{process_index}.pkl"
    if not path.is_file():
        return f"{path} is missing"
    try:
        load(path)
    except Exception as e:  # noqa: BLE001 - any reason it will not load is reported
        return f"{path} does not load as plain data ({type(e).__name__}: {str(e)[:160]})"
    return ""
