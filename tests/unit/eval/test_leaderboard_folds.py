"""A cross-validated recipe's folds pool in one leaderboard group, like its seeds; another
setting still makes another recipe."""

from __future__ import annotations

from pathlib import Path

import yaml

from eval.evaluate import CheckpointEval
from eval.leaderboard import recipe_groups
from eval.options import EvalOptions


def _eval(root: Path, name: str, train: dict) -> CheckpointEval:
    path = root / name
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump({"train": {"lr": 0.1, **train}}))
    return CheckpointEval(name=name, path=path, meta=None, split="test", n_samples=10,
                          metric_set="classification", conditions={"complete": {"acc": 0.5}},
                          patterns={}, sweep={}, seeds=[], modalities=["text"], protocol={},
                          cost=None, data={"name": "d"}, options=EvalOptions(), device="cpu")


def test_folds_of_a_recipe_are_one_group_and_other_settings_are_not(tmp_path):
    evals = [_eval(tmp_path, f"fold{f}", {"folds": 5, "fold": f, "seed": 1}) for f in range(3)]
    assert recipe_groups(evals) == {"recipe": ["fold0", "fold1", "fold2"]}
    evals.append(_eval(tmp_path, "other", {"folds": 5, "fold": 0, "seed": 1, "lr": 0.2}))
    groups = recipe_groups(evals)
    assert len(groups) == 2 and ["fold0", "fold1", "fold2"] in groups.values()
