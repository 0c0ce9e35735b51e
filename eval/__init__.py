"""Evaluation: MSA metrics, reports and plots, and checkpoint evaluation.

``eval.metrics``, ``eval.report`` and ``eval.plots`` are pure and import nothing from the
stages. ``eval.evaluate`` (checkpoint evaluation, leaderboards), ``eval.cost`` (cost and
speed) and ``eval.protocol`` (guards) load student checkpoints. They are exported here
lazily: ``students.trainer`` imports ``eval.metrics``, so importing ``eval.evaluate`` (which
imports ``students.trainer``) while this package initialises would be circular.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "compute_metrics": "eval.metrics",
    "METRIC_NAMES": "eval.metrics",
    "higher_is_better": "eval.metrics",
    "summarize": "eval.report",
    "robustness_summary": "eval.report",
    "write_results": "eval.report",
    "robustness_curve": "eval.plots",
    "EvalError": "eval.evaluate",
    "EvalOptions": "eval.evaluate",
    "CheckpointEval": "eval.evaluate",
    "evaluate_checkpoint": "eval.evaluate",
    "find_checkpoints": "eval.evaluate",
    "leaderboard": "eval.evaluate",
    "write_checkpoint_results": "eval.evaluate",
    "write_leaderboard": "eval.evaluate",
    "parse_rates": "eval.evaluate",
    "parse_seeds": "eval.evaluate",
    "parse_patterns": "eval.evaluate",
    "cost_report": "eval.cost",
    "measure_speed": "eval.cost",
    "teacher_costs": "eval.cost",
    "ProtocolError": "eval.protocol",
    "check_protocol": "eval.protocol",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'eval' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
