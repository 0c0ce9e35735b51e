"""The teacher scored as a predictor from its cache (filled by the real caching job with the
tests' fake teacher): the answer rate of a partly answered cache, both rows by hand, the
argmax for classes, and clear errors for caches from other data, splits the job never
asked about, missing splits and description jobs."""

from __future__ import annotations

import numpy as np
import pytest

from eval.options import EvalError
from eval.teacher_eval import TeacherEvalOptions, score_teacher, teacher_predictions
from tests.support.distill import make_cache, tiny_data
from workbench.cache.join import TeacherView
from workbench.cache.records import SoftLabel, TeacherOutput
from workbench.cache.store import CacheStore
from workbench.config import DataConfig
from workbench.data import load_dataset
from workbench.data.store import DataInfo
from workbench.metrics import compute_metrics


@pytest.fixture(scope="module")
def flaky(tmp_path_factory):
    """Synthetic data and a cache whose every third teacher call failed."""
    root = tmp_path_factory.mktemp("teacher")
    data = tiny_data(root / "data", n=48)
    job = make_cache(root / "cache", data, "sentiment_score", fail_every=3)
    return DataConfig(**data), root / "cache", job


def test_partly_answered_cache_gives_answer_rate_and_both_rows(flaky):
    cfg, cache, job = flaky
    table = score_teacher(cache, cfg, TeacherEvalOptions(split="test"))
    ds = load_dataset(cfg)
    test, train = ds.samples("test"), ds.samples("train")
    with CacheStore(cache, create=False) as store:
        keys, current = store.sample_keys(job), store.current(job)
    ok = {sid: current[k] for sid, (_, k) in keys.items() if current[k].ok}
    answered = [s for s in test if s.id in ok]
    assert 0 < len(answered) < len(test)
    m = table.meta
    assert (m["answered"], m["samples"], m["asked"]) == (len(answered), len(test), len(test))
    assert m["answer_rate"] == pytest.approx(len(answered) / len(test))
    assert m["unanswered"] == {"error: server_error": len(test) - len(answered)}
    assert m["job"]["job"] == job and m["job"]["template"] == "sentiment_score"
    a_name, f_name = list(table.rows)
    assert a_name == f"teacher (answered {len(answered)}/{len(test)})"
    assert f_name == "teacher (unanswered = train mean)"
    labels = np.array([s.label for s in answered])
    assert table.rows[a_name] == compute_metrics(
        "mosi", [ok[s.id].soft_label.expected for s in answered], labels)
    mean = float(np.mean([s.label for s in train]))
    full = [ok[s.id].soft_label.expected if s.id in ok else mean for s in test]
    assert table.rows[f_name] == compute_metrics("mosi", full, [s.label for s in test])
    assert table.about[a_name]["samples"] == "answered only"
    assert "unanswered predicted as train mean" in table.about[f_name]["samples"]
    assert table.rows[a_name]["corr"] > 0.8  # the fake teacher peaks near the gold score


def test_template_is_picked_when_the_cache_has_one_soft_label_job(flaky, tmp_path):
    cfg, cache, job = flaky
    import shutil

    both = tmp_path / "both"
    shutil.copytree(cache, both)
    data = {k: v for k, v in cfg.__dict__.items()
            if k in ("name", "path", "features", "feature_keys", "modalities")}
    make_cache(both, data, "context_aware", splits=["test"])
    table = score_teacher(both, cfg, TeacherEvalOptions())
    assert table.meta["job"]["job"] == job  # the description job is not a candidate
    with pytest.raises(EvalError, match="no soft labels"):
        score_teacher(both, cfg, TeacherEvalOptions(template="context_aware"))


def test_a_split_the_job_never_asked_about_is_refused(tmp_path):
    data = tiny_data(tmp_path / "data", n=36)
    make_cache(tmp_path / "cache", data, "sentiment_score", splits=["train"])
    with pytest.raises(EvalError, match=r"answered none of the \d+ 'test' samples.*not asked"):
        score_teacher(tmp_path / "cache", DataConfig(**data), TeacherEvalOptions())
    # on train it scores, and says nothing was left unanswered
    table = score_teacher(tmp_path / "cache", DataConfig(**data),
                          TeacherEvalOptions(split="train"))
    assert table.meta["answer_rate"] == 1.0 and table.meta["unanswered"] == {}


def test_clear_errors(flaky, tmp_path):
    cfg, cache, _ = flaky
    other = DataConfig(**tiny_data(tmp_path / "other", n=36, seed=5))
    with pytest.raises(EvalError, match="no soft-label job for dataset"):
        score_teacher(cache, other, TeacherEvalOptions())
    with pytest.raises(EvalError, match="made from other data"):
        score_teacher(cache, other, TeacherEvalOptions(template="sentiment_score"))
    with pytest.raises(EvalError, match=r"split 'dev' is not in dataset"):
        score_teacher(cache, cfg, TeacherEvalOptions(split="dev"))
    with pytest.raises(EvalError, match="no teacher cache at"):
        score_teacher(tmp_path / "nowhere", cfg, TeacherEvalOptions())


def _out(key: str, probs: list[float]) -> TeacherOutput:
    sl = SoftLabel(labels=["a", "b", "c"][:len(probs)], values=list(range(len(probs))),
                   probs=probs, expected=0.0, variance=0.0, entropy=0.0, off_label_mass=0.0,
                   argmax=int(np.argmax(probs)))
    return TeacherOutput(key=key, status="ok", soft_label=sl)


def test_classification_predictions_are_the_soft_labels_argmax():
    info = DataInfo(name="c", task="classification", metric_set="classification",
                    label_range=(0, 2), class_names=["neg", "neu", "pos"], modalities=["text"])
    view = TeacherView(job={"job": "j"}, n_samples=2, cache_dir="c", outputs={
        "x": _out("kx", [0.2, 0.1, 0.7]), "y": _out("ky", [0.5, 0.3, 0.2])})
    assert teacher_predictions(view, ["x", "y"], info).tolist() == [2, 0]
    view.outputs["z"] = _out("kz", [0.4, 0.6])
    with pytest.raises(EvalError, match=r"\[2, 3\] bins, dataset 'c' 3 classes"):
        teacher_predictions(view, ["x", "z"], info)
