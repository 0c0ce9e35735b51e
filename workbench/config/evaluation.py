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

    def __post_init__(self) -> None:
        check(self.split in SPLITS, "eval.split", self.split, f"use one of {list(SPLITS)}")
        for r in self.missing_rates:
            check(0.0 <= r <= 1.0, "eval.missing_rates", self.missing_rates,
                  "rates are fractions in [0, 1]")
