"""CyIN's evaluation protocol: the per-sample removal draws against their definitions, and
`workbench eval`'s table of fixed subsets, dataset-level rates and instance-level
probabilities (mean ± std over seeds)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from eval.evaluate import evaluate_checkpoint, results_dict, write_checkpoint_results
from eval.options import EvalOptions
from students.robustness import (
    dataset_level_keep,
    dataset_missing,
    instance_level_keep,
    instance_missing,
    sample_rates,
)
from tests.support.checkpoints import tiny_checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")
MODS = ["text", "audio", "vision"]


@pytest.mark.parametrize("rate", [0.0, 0.3, 0.5, 0.7, 0.9])
def test_dataset_level_keeps_one_and_misses_the_rate_in_expectation(rate):
    rng = np.random.default_rng(0)
    kept = [dataset_level_keep(rng, MODS, rate) for _ in range(6000)]
    assert all(len(k) >= 1 for k in kept)
    missing = 1 - sum(len(k) for k in kept) / (3 * len(kept))
    assert missing == pytest.approx(min(rate, 2 / 3), abs=0.015)  # at most M-1 of M missing


def test_instance_level_draws_incomplete_samples_with_the_probability_uniformly():
    rng = np.random.default_rng(1)
    kept = [tuple(instance_level_keep(rng, MODS, 0.4)) for _ in range(7000)]
    incomplete = [k for k in kept if len(k) < 3]
    assert len(incomplete) / len(kept) == pytest.approx(0.4, abs=0.02)
    subsets = [c for n in (1, 2) for c in itertools.combinations(MODS, n)]
    assert set(incomplete) == set(subsets)  # the 6 non-empty proper subsets
    for s in subsets:
        assert incomplete.count(s) / len(incomplete) == pytest.approx(1 / 6, abs=0.025)
    assert instance_level_keep(rng, MODS, 0.0) == MODS


def test_mask_specs_remove_whole_modalities_per_sample_deterministically():
    spec = dataset_missing(0.5, seed=3, modalities=("text", "audio"))
    rates = [sample_rates(spec, f"s{i}") for i in range(200)]
    assert all(set(r.values()) <= {0.0, 1.0} for r in rates)
    assert all(r["text"] == 0 or r["audio"] == 0 for r in rates) and all(
        r["vision"] == 0 for r in rates)  # vision is not among the protocol's modalities
    assert rates == [sample_rates(spec, f"s{i}") for i in range(200)]
    other = [sample_rates(dataset_missing(0.5, seed=4, modalities=("text", "audio")), f"s{i}")
             for i in range(200)]
    assert other != rates
    inst = [sample_rates(instance_missing(1.0, seed=3), f"s{i}") for i in range(50)]
    assert all(0 < sum(r.values()) < 3 for r in inst)


def test_eval_reports_cyins_table(tmp_path_factory, tmp_path):
    ck = tiny_checkpoints(tmp_path_factory)
    opts = EvalOptions(seeds=[1, 2], batch_size=16, cost=False, device="cpu",
                       dataset_rates=[0.2, 0.5], instance_probs=[0.5])
    ev = evaluate_checkpoint(ck["b"], opts)
    res = results_dict(ev)["cyin_protocol"]
    assert set(res["fixed_subsets"]) == {"t", "a", "v", "t+a", "t+v", "a+v", "t+a+v"}
    assert res["fixed_subsets"]["t+a+v"] == ev.metrics
    assert res["fixed_subsets"]["t"] == ev.conditions["no audio+vision"]
    assert res["dataset_rate"]["rates"] == [0.2, 0.5]
    assert res["dataset_rate"]["n_runs"] == {0.2: 2, 0.5: 2}
    mean, std = res["dataset_rate"]["per_rate"][0.5]["mae"]
    runs = [m["mae"] for m in ev.random_missing["dataset_rate"][0.5]]
    assert mean == pytest.approx(np.mean(runs)) and std == pytest.approx(np.std(runs, ddof=1))
    assert res["instance_prob"]["rates"] == [0.5]
    paths = write_checkpoint_results(ev, tmp_path)
    md = next(p for p in paths if p.name == "results.md").read_text()
    assert "## CyIN protocol" in md and "Instance-level missing probability" in md
