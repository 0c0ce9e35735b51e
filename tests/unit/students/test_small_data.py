"""Small-data training: k-fold splits, selection on the validation loss, the collapse
warning, label smoothing, and the controls that tell distillation from regularisation."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from students.collate import StudentItem, TeacherSignal
from students.folds import fold_of, fold_split
from students.losses import task_loss
from students.recipe import collapse_note, prediction_spread, selected_collapse, selection_mode
from students.signals import apply_control
from students.trainer import train
from tests.support.distill import distill_cfg
from tests.support.students import make_samples
from workbench.config import ConfigError, DistillConfig, load_config
from workbench.data import Sample, load_dataset
from workbench.data.store import DataInfo

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _accelerate_state():
    """students' modules log through accelerate's logger, which needs its state."""
    from accelerate import PartialState

    PartialState()


def _samples(n: int, classes: int = 3) -> list[Sample]:
    return [Sample(id=f"s{i:03d}", text=f"t{i}", split="train", label_class=i % classes)
            for i in range(n)]


# ------------------------------------------------------------------------------ folds


def test_folds_partition_the_pool_stratified_and_independent_of_order():
    pool = _samples(60)
    where = fold_of(pool, 5, seed=3, classification=True)
    assert sorted(set(where.values())) == [0, 1, 2, 3, 4]
    for f in range(5):
        members = [s for s in pool if where[s.id] == f]
        assert len(members) == 12
        assert np.bincount([s.label_class for s in members]).tolist() == [4, 4, 4]
    assert fold_of(list(reversed(pool)), 5, seed=3, classification=True) == where
    assert fold_of(pool, 5, seed=4, classification=True) != where


def test_fold_split_pools_train_and_valid_and_keeps_every_sample_once():
    train_s, valid_s = _samples(40)[:32], _samples(40)[32:]
    seen = []
    for f in range(4):
        tr, va = fold_split(train_s, valid_s, folds=4, fold=f, seed=0, classification=True)
        assert len(tr) + len(va) == 40 and not {s.id for s in tr} & {s.id for s in va}
        seen += [s.id for s in va]
    assert sorted(seen) == sorted(s.id for s in train_s + valid_s)


def test_regression_folds_are_stratified_by_score():
    pool = [Sample(id=f"r{i}", text="x", split="train", label=float(i)) for i in range(20)]
    where = fold_of(pool, 2, seed=0, classification=False)
    means = [np.mean([s.label for s in pool if where[s.id] == f]) for f in (0, 1)]
    assert abs(means[0] - means[1]) <= 1.0


@pytest.mark.parametrize("overrides,msg", [
    (["train.folds=1"], "train.folds=1 is invalid"),
    (["train.folds=5", "train.fold=5"], "train.fold=5 is invalid.*0..4"),
    (["train.fold=2"], "train.fold=2 is invalid.*train.folds"),
    (["loss.label_smoothing=0.1"], "loss.label_smoothing=0.1 is invalid.*classification"),
    (["signals.control=uniform"], "signals.control='uniform' is invalid.*signals.cache_dir"),
    (["train.epochs=2", "train.average_epochs=3", "train.early_stop_patience=0"],
     r"train.average_epochs=3 is invalid.*1..train.epochs \(2\)"),
    (["train.average_epochs=2"], "train.average_epochs=2 is invalid.*early_stop_patience=0"),
])
def test_bad_small_data_settings_are_refused_with_the_field(overrides, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(DistillConfig, None, overrides)


def test_a_fold_run_trains_on_the_pool_and_validates_on_its_fold(tmp_path, data, caplog):
    cfg = distill_cfg(tmp_path / "run", data, "train.folds=3", "train.fold=1",
                      "train.epochs=1")
    ds = load_dataset(cfg.data)
    pool = ds.samples("train") + ds.samples("valid")
    n_valid = sum(1 for f in fold_of(pool, 3, 0, False).values() if f == 1)
    with caplog.at_level(logging.INFO):
        best = train(cfg)
    assert f"fold 1 validates ({n_valid} samples)" in caplog.text
    assert f"train ({len(pool) - n_valid})" in caplog.text
    sel = json.loads((best / "selection.json").read_text())
    assert sel["split"] == "valid" and "valid_loss" in sel["metrics"]


# -------------------------------------------------------------------------- selection


def test_valid_loss_is_a_selection_metric_and_smaller_is_better():
    cfg = load_config(DistillConfig, None, ["train.select_metric=valid_loss"])
    info = DataInfo(name="d", task="regression", metric_set="mosi", label_range=(-3, 3),
                    class_names=[], modalities=["text"], fingerprint="x")
    assert selection_mode(cfg.train, info) == ("loss", "min")
    cfg.train.select_mode = "max"
    with pytest.raises(ConfigError, match="select_mode='max' is invalid"):
        selection_mode(cfg.train, info)


def test_collapse_is_noted_for_one_class_and_flat_scores_only():
    labels = np.array([0, 1, 2, 1, 0, 2, 1, 1, 0, 2])
    one = np.eye(3)[np.ones(10, dtype=int)] + 0.01
    note = collapse_note(prediction_spread(one, labels, "classification"), ["neg", "neu", "pos"])
    assert "'neu' for 100% of the validation samples (gold: 40%)" in note
    varied = np.eye(3)[labels]
    assert collapse_note(prediction_spread(varied, labels, "classification"), []) == ""
    # a majority class that gold itself gives to 90%+ is not a collapse
    skewed = np.array([1] * 19 + [0])
    assert collapse_note(prediction_spread(np.eye(2)[np.ones(20, dtype=int)], skewed,
                                           "classification"), []) == ""
    y = np.linspace(-3, 3, 20)
    assert "std" in collapse_note(prediction_spread(np.full(20, 0.2) + 0.01 * y, y,
                                                    "regression"), [])
    assert collapse_note(prediction_spread(y * 0.8, y, "regression"), []) == ""


def test_the_selected_checkpoint_s_spread_is_recorded_and_read_back(tmp_path, data, caplog):
    cfg = distill_cfg(tmp_path / "run", data, "train.epochs=2")
    with caplog.at_level(logging.WARNING):
        best = train(cfg)
    sel_file = best / "selection.json"
    sel = json.loads(sel_file.read_text())
    assert set(sel["spread"]) == {"pred_std", "gold_std"}
    assert (selected_collapse(best, []) == "") == ("may have collapsed" not in caplog.text)
    sel["spread"] = {"pred_std": 0.01, "gold_std": 1.2}
    sel_file.write_text(json.dumps(sel))
    assert "std is 0.010 against gold's 1.200" in selected_collapse(best, [])


# ------------------------------------------------------------------ weight averaging


def _trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().float().cpu().clone() for n, p in model.named_parameters()
            if p.requires_grad}


def _averaged_run(out, data, monkeypatch, stop_after: int | None = None):
    """Train 3 epochs averaging the last 2; returns the trainable weights after each
    epoch, as the model held them (read before the recipe adds them to its average)."""
    from students.recipe import StageRecipe

    seen: list[dict[str, torch.Tensor]] = []
    real = StageRecipe.update_average

    def spy(self, epoch):
        seen.append(_trainable(self.raw_model))
        real(self, epoch)
        if stop_after is not None and epoch + 1 == stop_after:
            self.save_last()
            raise KeyboardInterrupt("stopped by the test")

    monkeypatch.setattr(StageRecipe, "update_average", spy)
    return seen


AVERAGE_2_OF_3 = ("train.epochs=3", "train.average_epochs=2", "train.early_stop_patience=0")


def test_the_checkpoint_is_the_mean_of_the_last_epochs_weights(tmp_path, data, monkeypatch,
                                                                caplog):
    from students.checkpoint import load_checkpoint

    seen = _averaged_run(tmp_path / "avg", data, monkeypatch)
    with caplog.at_level(logging.INFO):
        best = train(distill_cfg(tmp_path / "avg", data, *AVERAGE_2_OF_3))
    assert len(seen) == 3 and "weights averaged over epochs 2-3" in caplog.text
    model, _, meta = load_checkpoint(best)
    got = _trainable(model)  # every part, the heads training left frozen too
    assert seen[0].keys() <= got.keys() and any("lora" in n for n in seen[0])
    for name in seen[0]:
        mean = (seen[1][name] + seen[2][name]) / 2
        torch.testing.assert_close(got[name], mean, atol=1e-6, rtol=1e-5, msg=name)
    assert any(not torch.allclose(seen[1][n], seen[2][n]) for n in seen[0])
    assert meta.selection["averaged_epochs"] == [2, 3] and meta.selection["epoch"] == 3
    assert "valid_loss" in meta.selection["metrics"]


def test_a_resumed_averaged_run_equals_an_unbroken_one(tmp_path, data, monkeypatch):
    from students.checkpoint import load_checkpoint

    _averaged_run(tmp_path / "whole", data, monkeypatch)
    whole = train(distill_cfg(tmp_path / "whole", data, *AVERAGE_2_OF_3))
    _averaged_run(tmp_path / "broken", data, monkeypatch, stop_after=2)  # mid-average
    with pytest.raises(KeyboardInterrupt):
        train(distill_cfg(tmp_path / "broken", data, *AVERAGE_2_OF_3))
    state = json.loads((tmp_path / "broken" / "last" / "trainer_state.json").read_text())
    assert state["averaged"] == 1 and not state["finished"]
    _averaged_run(tmp_path / "broken", data, monkeypatch)
    resumed = train(distill_cfg(tmp_path / "broken", data, *AVERAGE_2_OF_3), resume=True)
    a, b = _trainable(load_checkpoint(whole)[0]), _trainable(load_checkpoint(resumed)[0])
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0, msg=name)


def test_the_protocol_says_the_weights_were_averaged():
    from eval.protocol import check_protocol

    sel = {"split": "valid", "metric": "valid_loss", "mode": "min", "epoch": 15,
           "value": 0.91, "averaged_epochs": [11, 15], "stage": "student"}
    out = check_protocol(sel, {}, "test", "ckpt")
    assert out["selection"].startswith("weights averaged over epochs 11-15 (no epoch selected)")
    assert out["selection_record"]["averaged_epochs"] == [11, 15]
    del sel["averaged_epochs"]
    assert "averaged_epochs" not in check_protocol(sel, {}, "test", "ckpt")["selection_record"]


# ----------------------------------------------------------- smoothing and controls


def test_label_smoothing_is_torch_s_definition():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    target = torch.tensor([0, 2])
    eps = 0.2
    soft = torch.full((2, 3), eps / 3)
    soft[torch.arange(2), target] += 1 - eps
    want = -(soft * logits.log_softmax(-1)).sum(-1).mean()
    got = task_loss(logits, target, "ce", label_smoothing=eps)
    assert float(got) == pytest.approx(float(want), rel=1e-6)
    assert float(got) != pytest.approx(float(task_loss(logits, target, "ce")))


def _items() -> list[StudentItem]:
    samples = make_samples(7)
    items = []
    for i, s in enumerate(samples[:6]):
        p = np.zeros(7, dtype=np.float32)
        p[i] = 1.0
        items.append(StudentItem(s, TeacherSignal(probs=p, expected=float(i - 3), entropy=0.0,
                                                  off_mass=0.1)))
    items.append(StudentItem(samples[6], None))
    return items


def test_uniform_control_replaces_every_soft_label_by_the_uniform_distribution():
    items = _items()
    assert apply_control(items, "uniform", seed=0, bins=[-3, -2, -1, 0, 1, 2, 3]) == 6
    for it in items[:6]:
        assert np.allclose(it.teacher.probs, 1 / 7) and it.teacher.expected == 0.0
        assert it.teacher.entropy == pytest.approx(np.log(7))
    assert items[6].teacher is None


def test_shuffled_control_permutes_soft_labels_among_the_samples_that_have_one():
    items = _items()
    before = [int(it.teacher.probs.argmax()) for it in items[:6]]
    assert apply_control(items, "shuffled", seed=1, bins=None) == 6
    after = [int(it.teacher.probs.argmax()) for it in items[:6]]
    assert sorted(after) == sorted(before) and after != before
    # the expected score moves with its distribution
    assert all(it.teacher.expected == it.teacher.probs.argmax() - 3 for it in items[:6])
    again = _items()
    apply_control(again, "shuffled", seed=1, bins=None)
    assert [int(it.teacher.probs.argmax()) for it in again[:6]] == after
    assert apply_control(_items(), "none", seed=1, bins=None) == 0


def test_a_control_run_trains_and_records_the_control(tmp_path, data, cache, caplog):
    cfg = distill_cfg(tmp_path / "run", data, f"signals.cache_dir={cache}",
                      "signals.control=shuffled", "train.epochs=1")
    with caplog.at_level(logging.INFO):
        best = train(cfg)
    n_train = load_dataset(cfg.data).num_rows("train")
    assert f"signals.control=shuffled: replaced the soft labels of {n_train}" in caplog.text
    assert "control: shuffled" in (best / "config.yaml").read_text()


def test_a_small_validation_split_selected_on_a_rate_is_warned_about(caplog):
    from students.trainer import _warn_small_valid

    cfg = load_config(DistillConfig, None, ["data.task=classification",
                                            "data.class_names=[no, yes]"])
    with caplog.at_level(logging.WARNING):
        _warn_small_valid(cfg, 40)
    assert "valid_f1_weighted over 40 validation samples" in caplog.text
    assert "2.5 points" in caplog.text and "train.select_metric=valid_loss" in caplog.text
    assert "train.average_epochs=5" in caplog.text
    caplog.clear()
    averaged = load_config(DistillConfig, None, [
        "data.task=classification", "data.class_names=[no, yes]", "train.average_epochs=5",
        "train.early_stop_patience=0"])
    cfg.train.select_metric = "valid_loss"
    with caplog.at_level(logging.WARNING):
        _warn_small_valid(cfg, 40)
        _warn_small_valid(averaged, 40)  # no epoch is selected
        _warn_small_valid(load_config(DistillConfig, None, []), 40)  # valid_mae: smooth
    assert caplog.text == ""


def test_teacher_quality_is_measured_against_the_label_prior(caplog):
    from students.signals import report_teacher_quality, teacher_quality

    samples = [Sample(id=f"c{i}", text="x", split="train", label_class=c)
               for i, c in enumerate([0, 0, 0, 1, 2, 1])]
    good = [StudentItem(s, TeacherSignal(probs=np.eye(3)[s.label_class])) for s in samples]
    q = teacher_quality(good, True, None)
    assert q == {"teacher": 1.0, "prior": 0.5, "n": 6}
    neutral = [StudentItem(s, TeacherSignal(probs=np.eye(3)[1])) for s in samples]
    with caplog.at_level(logging.INFO):
        report_teacher_quality(good, True, None)
        assert "WARNING" not in caplog.text and "argmax = gold for 100.0%" in caplog.text
        report_teacher_quality(neutral, True, None)
    assert "argmax = gold for 33.3% (the majority class: 50.0%)" in caplog.text
    assert "no better than the label prior" in caplog.text
    scores = [Sample(id=f"r{i}", text="x", split="train", label=y)
              for i, y in enumerate([-2.0, 0.0, 2.0])]
    flat = [StudentItem(s, TeacherSignal(probs=np.ones(3) / 3, expected=1.5)) for s in scores]
    assert teacher_quality(flat, False, [-1, 0, 1])["teacher"] > \
        teacher_quality(flat, False, [-1, 0, 1])["prior"]
    assert teacher_quality([StudentItem(samples[0], None)], True, None) is None
