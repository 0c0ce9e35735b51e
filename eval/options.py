"""What an evaluation is asked to do: the ``workbench eval`` options and their parsing.

:class:`EvalOptions` holds them: a recipe's ``eval`` section
(:class:`~workbench.config.EvalConfig`: split, the LNLN sweep's missing rates and seeds,
batch size, speed samples) and the options only the command sets (whole-modality-absent
patterns, cost measurement, device, ...); :func:`options_for` fills the ``eval`` fields not
given from a checkpoint's own config (read by :func:`run_config`). The parsers turn
command-line strings into values and refuse bad ones with :class:`EvalError`, the error of
every evaluation that cannot run as asked.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from students.checkpoint import CONFIG_FILE, check_files
from workbench.config import MODALITIES, ConfigError, DistillConfig, EvalConfig, load_config
from workbench.errors import WorkbenchError


class EvalError(WorkbenchError, RuntimeError):
    """An evaluation cannot run as asked; the message says what, where, and what to do."""


def parse_rates(spec: str) -> list[float]:
    """Missing rates from ``start:stop:step`` (inclusive end), a comma list, or ``none``.

    ``0:0.9:0.1`` -> ``[0.0, 0.1, ..., 0.9]`` (10 rates); ``0,0.5,1`` -> three rates;
    ``none`` or ``""`` -> no sweep. Every rate must lie in ``[0, 1]``.
    """
    text = spec.strip().lower()
    if text in ("", "none", "no", "off"):
        return []
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            if len(parts) != 3:
                raise ValueError
            start, stop, step = parts
            if step <= 0 or stop < start:
                raise EvalError(f"--missing-rates={spec!r}: need start <= stop and step > 0 "
                                "(e.g. 0:0.9:0.1)")
            n = int(math.floor((stop - start) / step + 1e-9)) + 1
            rates = [round(start + i * step, 10) for i in range(n)]
        else:
            rates = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise EvalError(f"--missing-rates={spec!r} is not start:stop:step (e.g. 0:0.9:0.1), a comma "
                        "list of rates (e.g. 0,0.5), or none") from None
    bad = [r for r in rates if not 0.0 <= r <= 1.0]
    if bad:
        raise EvalError(f"--missing-rates={spec!r} gives rates {bad} outside [0, 1]; missing "
                        "rates are fractions")
    if len(set(rates)) != len(rates):
        raise EvalError(f"--missing-rates={spec!r} repeats a rate: {rates}")
    return sorted(rates)


def parse_seeds(spec: str) -> list[int]:
    """Seeds from a comma list (``1111,1112,1113``)."""
    try:
        seeds = [int(p) for p in spec.split(",") if p.strip()]
    except ValueError:
        raise EvalError(f"--seeds={spec!r}: use comma-separated integers, e.g. "
                        "1111,1112,1113") from None
    if not seeds:
        raise EvalError(f"--seeds={spec!r} names no seed; e.g. 1111,1112,1113")
    if len(set(seeds)) != len(seeds):
        raise EvalError(f"--seeds={spec!r} repeats a seed")
    return seeds


def parse_patterns(specs: Sequence[str]) -> list[tuple[str, ...]]:
    """Whole-modality-absent patterns from ``["audio", "audio,vision", ...]``.

    Each item names the modalities removed together; ``none`` alone means no patterns.
    """
    if [s.strip().lower() for s in specs] == ["none"]:
        return []
    out: list[tuple[str, ...]] = []
    for spec in specs:
        mods = tuple(dict.fromkeys(m.strip() for m in spec.split(",") if m.strip()))
        bad = [m for m in mods if m not in MODALITIES]
        if not mods or bad:
            raise EvalError(f"--missing-modality={spec!r}: name modalities from "
                            f"{list(MODALITIES)}, several joined by commas (e.g. audio,vision), "
                            "or 'none' for no patterns")
        ordered = tuple(m for m in MODALITIES if m in mods)
        if ordered not in out:
            out.append(ordered)
    return out


def pattern_name(drop: Sequence[str]) -> str:
    """Row name of a pattern: ``no audio``, ``no audio+vision``."""
    return "no " + "+".join(drop)


@dataclass
class EvalOptions(EvalConfig):
    """How to evaluate: a recipe's ``eval`` section (:class:`~workbench.config.EvalConfig`,
    its fields and defaults: split, missing rates, seeds, batch size, speed samples) and what
    only ``workbench eval`` sets (the fields below).

    Checked here with the command's option names; :class:`EvalConfig`'s own checks belong
    to a recipe's ``eval:`` keys and are not run (a split is checked against the data, rates
    by :func:`parse_rates`)."""

    patterns: list[tuple[str, ...]] | None = None
    """Modalities removed together, one pattern each; None: every pattern the checkpoint's
    modalities allow (each non-empty proper subset removed); []: none."""
    cost: bool = True
    """Measure speed and memory and compare with the teacher (parameters and size always)."""
    latency_samples: int = 50
    device: str = "auto"
    """``auto`` (cuda when available), ``cpu``, ``cuda`` or ``cuda:N``."""
    device_cost_per_hour: float = 0.0
    """USD per hour of the machine running the student (for the cost ratio); 0: unknown."""
    dataset_rates: list[float] = field(default_factory=list)
    """CyIN's dataset-level missing rates (whole modalities removed per sample, every
    sample keeping one; one run per rate and seed); empty: none."""
    instance_probs: list[float] = field(default_factory=list)
    """CyIN's instance-level missing probabilities (a sample loses a random non-empty
    proper subset with this probability); empty: none."""
    domain: str = ""
    """Report only the split's samples of this domain (the data config's ``data.domain``);
    empty: every sample."""

    def __post_init__(self) -> None:
        if (self.dataset_rates or self.instance_probs) and not self.seeds:
            raise EvalError("CyIN's random missing protocols need at least one seed (--seeds)")
        if self.batch_size < 1:
            raise EvalError(f"--batch-size={self.batch_size}: use at least 1")
        if self.latency_samples < 1:
            raise EvalError(f"--latency-samples={self.latency_samples}: use at least 1")
        if self.speed_samples < 0:
            raise EvalError(f"--speed-samples={self.speed_samples}: use a positive number of "
                            "samples to time, or 0 for the whole split")
        if self.missing_rates and not self.seeds:
            raise EvalError("a missing-rate sweep needs at least one seed (--seeds)")
        if self.device_cost_per_hour < 0:
            raise EvalError(f"--device-cost-per-hour={self.device_cost_per_hour}: a price "
                            "cannot be negative")

    def resolved_device(self) -> torch.device:
        return resolve_device(self.device)


def check_finite_predictions(preds: Any, ids: Sequence[str], model_path: str | Path,
                             what: str, error: type[EvalError] = EvalError) -> None:
    """Raise ``error`` when the predictions ``preds`` (one row or value per sample of
    ``ids``) of the model at ``model_path`` on ``what`` (split, condition) hold NaN or
    infinite values: how many samples, the first ids, and what to do."""
    import numpy as np

    arr = np.asarray(preds, dtype=np.float64)
    if not arr.size:
        return
    bad = ~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)
    n = int(bad.sum())
    if not n:
        return
    first = [ids[i] for i in np.flatnonzero(bad)[:5]]
    raise error(f"{model_path}: its predictions on {what} are not finite (NaN or infinite) for "
                f"{n} of {len(arr)} samples (first ids {first}): the model's weights or "
                "activations overflow, as after a diverged run. Use a checkpoint saved before "
                "the run diverged, or retrain with a lower train.lr (and train.max_grad_norm "
                "clipping on); `workbench data validate` checks the inputs' features")


def resolve_device(spec: str, error: type[EvalError] = EvalError) -> torch.device:
    """The torch device of a ``--device`` value: ``auto`` (cuda when available), ``cpu``,
    ``cuda`` or ``cuda:N``; anything else, or CUDA where there is none, raises ``error``."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise error(f"--device={spec!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise error(f"--device={spec}: CUDA is not available here; use cpu or auto")
    if dev.type not in ("cpu", "cuda"):
        raise error(f"--device={spec!r}: use auto, cpu, cuda or cuda:N")
    return dev


def run_config(path: Path) -> DistillConfig:
    """The resolved training config a checkpoint holds (``config.yaml``)."""
    try:
        return load_config(DistillConfig, path / CONFIG_FILE)
    except ConfigError as e:
        raise EvalError(f"checkpoint {path}: its {CONFIG_FILE} does not load with this "
                        f"workbench: {e}") from None


def options_for(path: str | Path, **given: Any) -> EvalOptions:
    """:class:`EvalOptions` for a checkpoint: each :class:`EvalConfig` field as given, or
    where it is None, as the checkpoint's config has it (its ``eval`` section; missing rates
    sorted); the other :class:`EvalOptions` fields as given."""
    p = Path(path)
    check_files(p)
    recipe = run_config(p).eval
    values = {f.name: copy.deepcopy(getattr(recipe, f.name)) for f in fields(EvalConfig)}
    values["missing_rates"] = sorted(values["missing_rates"])
    values.update({k: v for k, v in given.items() if v is not None or k not in values})
    return EvalOptions(**values)
