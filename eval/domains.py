"""MIDG's domain-generalization protocol: leave one domain out.

:func:`leave_one_domain_out` takes a distillation recipe whose data declares domains
(``data.domain``: a manifest column, the source of each sample, ...) and, for every
domain ``d`` found in its train split, trains a student with ``train.holdout_domain=d``
(no ``d`` sample is trained or validated on) under ``<out>/<d>/`` and evaluates its
checkpoint on the ``d`` samples of the reported split only. The table has one row per
held-out domain and a ``mean`` row (the mean and sample std over domains); it is written
as ``lodo.json`` and ``lodo.md`` in ``out``. Runs that finished are reused (their
checkpoint is evaluated again), so a stopped protocol can be rerun.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eval.evaluate import evaluate_checkpoint
from eval.options import EvalError, EvalOptions
from eval.report import markdown_table, order_metrics, summarize
from students.checkpoint import BEST_DIR
from students.trainer import train
from workbench.config import DistillConfig
from workbench.data import load_dataset
from workbench.data.domains import domain_names
from workbench.io import atomic_write_text

log = logging.getLogger(__name__)


def declared_domains(cfg: DistillConfig) -> list[str]:
    """The domains of the recipe's train split (sorted)."""
    if not cfg.data.domain:
        raise EvalError("leave-one-domain-out needs domains: set data.domain in the recipe "
                        "(name, column:COL or source:N)")
    ds = load_dataset(cfg.data)
    names = domain_names(ds.samples("train"), cfg.data.domain, ds.info.name)
    if len(names) < 2:
        raise EvalError(f"leave-one-domain-out needs at least two domains; data.domain="
                        f"{cfg.data.domain!r} gives {names} on dataset {ds.info.name!r}")
    return names


def leave_one_domain_out(cfg: DistillConfig, out: str | Path, opts: EvalOptions,
                         domains: list[str] | None = None,
                         progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train with each domain held out and evaluate on it (see the module docstring).
    Returns ``{"domains": {d: metrics}, "mean": {metric: (mean, std)}, ...}``."""
    root = Path(out)
    names = domains or declared_domains(cfg)
    per: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}
    for d in names:
        run = copy.deepcopy(cfg)
        run.train.holdout_domain = d
        run.train.output_dir = str(root / d)
        best = root / d / BEST_DIR
        done = (root / d / "last" / "trainer_state.json")
        finished = done.is_file() and json.loads(done.read_text()).get("finished")
        if not finished:
            if progress is not None:
                progress(f"training without domain {d!r}")
            run.train.overwrite = True
            best = train(run)
        ev = evaluate_checkpoint(best, dataclasses.replace(opts, domain=d))
        per[d] = ev.metrics
        counts[d] = ev.n_samples
        log.info("held-out domain %s: %s", d, ", ".join(f"{k}={v:.4f}" for k, v in
                                                        ev.metrics.items()))
    result = {"protocol": "leave-one-domain-out", "split": opts.split,
              "data_domain": cfg.data.domain, "domains": per, "n_samples": counts,
              "mean": summarize(list(per.values())),
              "student_experts": "midg" if cfg.student.midg.enabled else "none"}
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / "lodo.json", json.dumps(result, indent=2, sort_keys=True) + "\n")
    metric_set = next(iter(per.values())) if per else {}
    cols = order_metrics(metric_set)
    rows = {f"held out: {d} ({counts[d]})": m for d, m in per.items()}
    rows["mean over domains"] = result["mean"]
    atomic_write_text(root / "lodo.md", "# Leave one domain out\n\n"
                      f"Reported split: `{opts.split}`, samples of the held-out domain only; "
                      f"data.domain = `{cfg.data.domain}`.\n\n" + markdown_table(rows, cols))
    return result
