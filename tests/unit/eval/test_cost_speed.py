"""The student's speed is timed on a bounded number of samples (eval.speed_samples), and
the report says how many: counted through the calls a stand-in student receives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eval import cost
from eval.cost_text import cost_lines
from eval.options import EvalError, EvalOptions
from workbench.config import ConfigError, EvalConfig
from workbench.data.schema import Sample


class StandIn:
    """Where :func:`eval.cost.measure_speed` looks for the model's device."""

    device = torch.device("cpu")


@pytest.fixture
def calls(monkeypatch):
    """The sample ids of every prediction measure_speed asks for."""
    seen: list[list[str]] = []

    def predict(model, items, batch_size, **kw):
        seen.append([s.id for s in items])
        return np.zeros(len(items))

    monkeypatch.setattr(cost, "predict", predict)
    return seen


def _items(n: int) -> list[Sample]:
    return [Sample(id=f"s{i:02d}", text="x", split="test") for i in range(n)]


def test_speed_is_timed_on_at_most_speed_samples(calls):
    speed = cost.measure_speed(StandIn(), _items(40), batch_size=4, latency_samples=5,
                               speed_samples=8, min_seconds=1e9, max_passes=2)
    timed = {i for ids in calls for i in ids}
    assert len(timed) == 8 and {"s00", "s39"} <= timed  # spread from the first to the last
    assert max(len(ids) for ids in calls) == 8  # a pass is the 8, never the split
    assert speed["timed_samples"] == 8 and speed["split_samples"] == 40
    assert speed["throughput_samples"] == 16  # two passes over the 8
    assert speed["latency_batch1_ms"]["n"] == 5
    line = cost_lines({"parameters": {"total": 1, "trainable": 1},
                       "size": {"mb": 0.1}, "speed": speed,
                       "teacher": {"note": "none", "jobs": {}},
                       "comparison": {"teacher_job": None}})[1]
    assert "(timed on 8 of 40 samples)" in line


def test_zero_or_a_large_bound_times_the_whole_split(calls):
    for bound in (0, 100):
        calls.clear()
        speed = cost.measure_speed(StandIn(), _items(12), batch_size=4, latency_samples=2,
                                   speed_samples=bound, max_passes=1)
        assert speed["timed_samples"] == speed["split_samples"] == 12
        assert len({i for ids in calls for i in ids}) == 12


def test_spread_keeps_order_and_ends():
    assert cost.spread(list(range(10)), 3) == [0, 4, 9]
    assert cost.spread(list(range(3)), 5) == [0, 1, 2]
    assert cost.spread(list(range(4)), 0) == [0, 1, 2, 3]


def test_the_bound_is_a_recipe_setting_with_a_default():
    assert EvalConfig().speed_samples == EvalOptions().speed_samples == 128
    with pytest.raises(ConfigError, match="eval.speed_samples"):
        EvalConfig(speed_samples=-1)
    with pytest.raises(EvalError, match="--speed-samples=-1"):
        EvalOptions(speed_samples=-1)
