"""How a checkpoint is evaluated (``eval:`` of a recipe)."""

from __future__ import annotations

from dataclasses import dataclass, field

from workbench.config.fields import SPLITS, check


@dataclass
class EvalConfig:
    """How a checkpoint is evaluated."""

    split: str = "test"
    missing_rates: list[float] = field(default_factory=list)
    """Rates for the LNLN sweep, e.g. [0.0, 0.1, ..., 0.9]; empty: no sweep."""
    seeds: list[int] = field(default_factory=lambda: [1111, 1112, 1113])
    batch_size: int = 64
    speed_samples: int = 128
    """Samples of the split the student's throughput is timed on (``cost.speed``): at most
    this many, spread evenly over the split (the latency at batch 1 cycles through the same
    ones); 0: the whole split. Timing every sample of a large split costs as much as
    evaluating it again; ``cost.speed.timed_samples`` records how many were timed."""

    def __post_init__(self) -> None:
        check(self.split in SPLITS, "eval.split", self.split, f"use one of {list(SPLITS)}")
        check(self.speed_samples >= 0, "eval.speed_samples", self.speed_samples,
              "use a positive number of samples to time, or 0 for the whole split")
        for r in self.missing_rates:
            check(0.0 <= r <= 1.0, "eval.missing_rates", self.missing_rates,
                  "rates are fractions in [0, 1]")
