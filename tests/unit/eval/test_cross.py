"""Cross-dataset evaluation: the score-to-class mapping against its definition, and a
regression student reported on a classification dataset through it."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from eval.cross import evaluate_cross, score_to_class
from eval.options import EvalError
from students.checkpoint import load_checkpoint
from students.inference import predict
from students.trainer import train
from tests.support.distill import distill_cfg, tiny_data
from workbench.config import DataConfig
from workbench.data import load_dataset
from workbench.metrics import compute_metrics

pytestmark = pytest.mark.usefixtures("one_thread")


def test_score_to_class_counts_the_thresholds_below():
    got = score_to_class([-3.0, -0.5, -0.4, 0.0, 0.5, 0.51, 3.0], [-0.5, 0.5])
    assert got.tolist() == [0, 0, 1, 1, 1, 2, 2]
    assert score_to_class([0.2, -0.2], [0.0]).tolist() == [1, 0]
    for bad in ([], [0.5, -0.5], [0.1, 0.1]):
        with pytest.raises(EvalError, match="thresholds"):
            score_to_class([0.0], bad)


@pytest.fixture(scope="module")
def text_student(tmp_path_factory):
    root = tmp_path_factory.mktemp("cross")
    data = {**tiny_data(root / "synth", n=48), "modalities": ["text"]}
    best = train(distill_cfg(root / "run", data, "student.text_mode=frozen", "train.epochs=1",
                             "signals.cache_dir="))
    # the "other" dataset: the same utterances as three sentiment classes
    rows = list(csv.DictReader(open(data["path"], encoding="utf-8")))
    other = root / "classes.csv"
    with other.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["id", "text", "sentiment", "split"])
        w.writeheader()
        for r in rows:
            y = float(r["label"])
            w.writerow({"id": "c" + r["id"], "text": r["text"], "split": r["split"],
                        "sentiment": "negative" if y < -0.5 else "positive" if y > 0.5
                        else "neutral"})
    cls = DataConfig(path=str(other), name="classes", task="classification",
                     class_column="sentiment", label_column="", modalities=["text"],
                     class_names=["negative", "neutral", "positive"])
    return best, cls


def test_regression_student_on_a_classification_set(text_student):
    best, cls = text_student
    res = evaluate_cross(best, cls, "test", [-0.5, 0.5])
    ds = load_dataset(cls)
    samples = ds.samples("test")
    model, _, _ = load_checkpoint(best, device="cpu")
    ref = compute_metrics("classification", score_to_class(predict(model, samples), [-0.5, 0.5]),
                          np.array([s.label_class for s in samples]))
    assert res.metrics == pytest.approx(ref)
    assert res.n_samples == len(samples) and res.reported_on == "classes"
    assert "negative" in res.mapping
    with pytest.raises(EvalError, match="declare the mapping"):
        evaluate_cross(best, cls, "test", [])
    with pytest.raises(EvalError, match="side has 3"):
        evaluate_cross(best, cls, "test", [0.0])
