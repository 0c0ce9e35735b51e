"""The small-data table script: the commands it plans per draw (subset, seeds, folds,
controls, resume) and the table it writes from results files built here."""

import json
from pathlib import Path

import pytest

from tests.support.paths import load_bench


@pytest.fixture(scope="module")
def sd():
    return load_bench("small_data")


def _write(path: Path, rows: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps({"leaderboard": rows}))


def test_each_draw_is_a_seeded_subset_and_the_controls_change_one_thing(sd, tmp_path):
    meld = sd.DATASETS["meld"]
    tasks = sd.student_tasks(meld, tmp_path, "uniform", 2, [11, 12])
    train = [t for t in tasks if not t.name.startswith("eval")]
    assert [t.name for t in train] == ["meld d2 uniform seed11", "meld d2 uniform seed12"]
    cmd = " ".join(train[0].cmd)
    assert "data.subset_seed=2" in cmd and "data.subset={train: 300, valid: 40, test: 1000}" in cmd
    assert "signals.control=uniform" in cmd and "train.seed=11" in cmd
    assert f"signals.cache_dir={tmp_path / 'meld' / 'draw2' / 'cache'}" in cmd
    assert train[0].needs == ("meld d2 cache",)
    gold = " ".join(sd.student_tasks(meld, tmp_path, "gold", 2, [11])[0].cmd)
    assert "signals.cache_dir" not in gold and "meld_small_gold.yaml" in gold
    folds = [t for t in sd.student_tasks(meld, tmp_path, "gold_cv", 0, [11])
             if not t.name.startswith("eval")]
    assert len(folds) == sd.FOLDS and "train.folds=5" in folds[0].cmd
    assert "train.fold=4" in folds[-1].cmd


def test_a_started_run_is_resumed_and_an_evaluation_waits_for_its_run(sd, tmp_path):
    mosi = sd.DATASETS["mosi"]
    out = tmp_path / "mosi" / "draw0" / "gold" / "seed11"
    out.mkdir(parents=True)
    (out / "config.yaml").write_text("{}")
    tasks = sd.student_tasks(mosi, tmp_path, "gold", 0, [11])
    assert tasks[0].cmd[-1] == "--resume" and tasks[1].needs == (tasks[0].name,)
    assert not any("test:" in c for c in tasks[0].cmd)  # MOSI: the whole test split


def test_the_table_pairs_variants_with_gold_and_the_probe_by_draw(sd, tmp_path):
    meld = sd.DATASETS["meld"]
    for d, probe in ((0, 0.60), (1, 0.58)):
        base = tmp_path / "meld" / f"draw{d}"
        _write(base / "baselines", {"majority class": {"f1_weighted": 0.3, "acc": 0.48,
                                                               "f1_macro": 0.2},
                                    "probe (minilm)": {"f1_weighted": probe, "acc": 0.6,
                                                       "f1_macro": 0.55}})
        _write(base / "teacher", {"teacher (unanswered = majority class)":
                                  {"f1_weighted": 0.4, "acc": 0.4, "f1_macro": 0.3}})
        for v, f1 in (("gold", 0.61), ("soft", 0.63), ("uniform", 0.62)):
            _write(base / v / "seed1" / "eval-test",
                   {"complete": {"f1_weighted": f1 + 0.01 * d, "acc": 0.6, "f1_macro": 0.5}})
    text = sd.table(tmp_path, meld, [0, 1], [1], ["gold", "soft", "uniform"])
    assert "| frozen MiniLM probe (`workbench baselines`) | 2 | 59.0 ± 1.4 |" in text
    assert "| student, gold only | 2 | 61.5 ± 0.7 |" in text
    assert "- soft − gold only: 2.0 ± 0.0 (n=2)" in text
    assert "- soft − uniform: 1.0 ± 0.0 (n=2)" in text
    assert "- gold − probe (same draw): 2.5 ± 2.1 (n=2)" in text
