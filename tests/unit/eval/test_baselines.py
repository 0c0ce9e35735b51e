"""Baselines on data built here: the majority class / train mean rows by hand, the frozen
MiniLM probe fitted (regularisation chosen on train) and scored with the workbench's
metrics, the text + features probe, data.subset honoured, and clear errors."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from eval.baselines import C_GRID, BaselineOptions, feature_matrix, run_baselines
from eval.options import EvalError
from tests.support.distill import tiny_data
from workbench.config import DataConfig, StudentConfig
from workbench.data import DataError, load_dataset
from workbench.data.schema import Sample
from workbench.data.store import DataInfo
from workbench.metrics import compute_metrics

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]
CLASSES = ["negative", "neutral", "positive"]
OPTS = BaselineOptions(device="cpu", folds=3)


def class_data(root: Path, n: int = 90, *, unlabelled_test: bool = False) -> DataConfig:
    """The synthetic utterances as three sentiment classes (a text-only manifest)."""
    data = tiny_data(root / "synth", n=n)
    rows = list(csv.DictReader(open(data["path"], encoding="utf-8")))
    path = root / "classes.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["id", "text", "sentiment", "split"])
        w.writeheader()
        for r in rows:
            y = float(r["label"])
            cls = "negative" if y < -0.5 else "positive" if y > 0.5 else "neutral"
            w.writerow({"id": r["id"], "text": r["text"], "split": r["split"],
                        "sentiment": "" if unlabelled_test and r["split"] == "test" else cls})
    return DataConfig(path=str(path), name="classes", task="classification",
                      class_column="sentiment", label_column="", modalities=["text"],
                      class_names=CLASSES,
                      labels="optional" if unlabelled_test else "required")


def regression_data(root: Path, n: int = 90) -> DataConfig:
    fields = tiny_data(root, n=n)
    return DataConfig(**{k: v for k, v in fields.items()})


@pytest.fixture(scope="module")
def classes(tmp_path_factory):
    cfg = class_data(tmp_path_factory.mktemp("classes"))
    return cfg, run_baselines(cfg, OPTS)


def gold(cfg: DataConfig, split: str) -> np.ndarray:
    ds = load_dataset(cfg)
    if cfg.task == "classification":
        return np.array([s.label_class for s in ds.samples(split)])
    return np.array([s.label for s in ds.samples(split)])


def test_majority_row_is_the_train_majority_class(classes):
    cfg, table = classes
    y_tr, y_te = gold(cfg, "train"), gold(cfg, "test")
    k = int(np.bincount(y_tr, minlength=3).argmax())
    assert list(table.rows)[0] == "majority class"
    assert table.rows["majority class"] == compute_metrics(
        "classification", np.full(len(y_te), k), y_te)
    assert table.about["majority class"] == {"kind": "majority", "class": CLASSES[k],
                                             "class_id": k}
    assert table.metric_set == "classification" and table.split == "test"
    assert table.n_samples == len(y_te) and table.meta["n_train"] == len(y_tr)


def test_probe_fits_on_train_and_beats_the_majority(classes):
    _, table = classes
    probe = table.rows["probe (minilm)"]
    assert set(probe) == {"acc", "f1_weighted", "f1_macro"}
    assert probe["f1_weighted"] > table.rows["majority class"]["f1_weighted"] + 0.1
    about = table.about["probe (minilm)"]
    assert about["kind"] == "probe" and about["C"] in C_GRID and about["cv_folds"] == 3
    assert about["inputs"] == ["text"] and about["dim"] == 384 and about["standardised"]
    assert len(table.rows) == 2  # text-only data: no features probe


def test_regression_rows_and_the_features_probe(tmp_path):
    cfg = regression_data(tmp_path / "reg")
    table = run_baselines(cfg, OPTS)
    y_tr, y_te = gold(cfg, "train"), gold(cfg, "test")
    assert table.rows["train mean"] == compute_metrics("mosi", np.full(len(y_te), y_tr.mean()),
                                                       y_te)
    assert table.about["train mean"]["value"] == pytest.approx(y_tr.mean())
    assert list(table.rows) == ["train mean", "probe (minilm)", "probe (minilm+audio+vision)"]
    both = table.about["probe (minilm+audio+vision)"]
    assert both["dim"] == 384 + 6 + 1 + 5 + 1 and both["model"] == "ridge regression"
    assert both["cv_scoring"] == "neg_mean_absolute_error"
    assert table.rows["probe (minilm)"]["mae"] < table.rows["train mean"]["mae"]
    no_feats = run_baselines(cfg, BaselineOptions(device="cpu", folds=3, features=False,
                                                  split="valid"))
    assert list(no_feats.rows) == ["train mean", "probe (minilm)"]
    assert no_feats.split == "valid" and no_feats.n_samples == len(gold(cfg, "valid"))


def test_subset_of_train_is_honoured(tmp_path):
    full = class_data(tmp_path / "c")
    sub = DataConfig(**{**full.__dict__, "subset": {"train": 20}})
    table = run_baselines(sub, BaselineOptions(device="cpu", folds=2))
    y_tr = gold(sub, "train")
    assert table.meta["n_train"] == len(y_tr) == 20 < len(gold(full, "train"))
    k = int(np.bincount(y_tr, minlength=3).argmax())
    assert table.about["majority class"]["class_id"] == k
    assert table.data["subset"] == {"train": 20}
    # the test split is the whole one: the same samples as without the subset
    y_te = gold(full, "test")
    assert table.n_samples == len(y_te)
    from eval.references import data_summary

    ds = load_dataset(full)
    assert table.data["split_fingerprint"] == data_summary(full, ds, ds.samples("test"))[
        "split_fingerprint"]
    assert table.data["fingerprint"] != ds.fingerprint


def test_options_from_a_recipe_student():
    opts = BaselineOptions.from_student(StudentConfig(text_encoder="minilm", max_text_len=24),
                                        split="valid")
    assert (opts.encoder, opts.max_text_len, opts.split) == ("minilm", 24, "valid")


def test_clear_errors(tmp_path):
    cfg = class_data(tmp_path / "c", n=30)
    with pytest.raises(EvalError, match=r"split 'dev' is not in dataset 'classes'.*'test'"):
        run_baselines(cfg, BaselineOptions(split="dev", device="cpu"))
    with pytest.raises(EvalError, match="fitted on train"):
        BaselineOptions(split="train")
    with pytest.raises(EvalError, match="at least 2 folds"):
        BaselineOptions(folds=1)
    unlabelled = class_data(tmp_path / "u", n=30, unlabelled_test=True)
    with pytest.raises(DataError, match=r"'test' samples of 'classes' have no label"):
        run_baselines(unlabelled, BaselineOptions(device="cpu"))


def test_feature_matrix_means_real_frames_and_marks_absence():
    info = DataInfo(name="t", task="regression", metric_set="mosi", label_range=(-3, 3),
                    class_names=[], modalities=["text", "audio", "vision"],
                    feature_dims={"audio": 2, "vision": 3},
                    feature_kind={"audio": "sequence", "vision": "vector"})
    seq = np.array([[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], dtype=np.float32)
    a = Sample(id="a", text="x", split="train", audio=seq, audio_length=2,
               vision=np.array([5.0, 6.0, 7.0], dtype=np.float32))
    b = Sample(id="b", text="y", split="train")
    x = feature_matrix([a, b], info, ["audio", "vision"])
    assert x.tolist() == [[2.0, 3.0, 1.0, 5.0, 6.0, 7.0, 1.0],
                          [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]
