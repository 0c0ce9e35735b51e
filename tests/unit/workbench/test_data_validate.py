import numpy as np
import pytest

from workbench.config import DataConfig
from workbench.data import DataError, Media, Sample, check_samples, validate


def s(i, **kw):
    base = dict(id=f"s{i}", text=f"text {i}", split="train", label=0.5,
                audio=np.zeros(4, np.float32), vision=np.zeros((3, 2), np.float32), vision_length=3)
    base.update(kw)
    return Sample(**base)


def codes(samples, **cfg):
    return {p.code: p for p in check_samples(samples, DataConfig(**cfg))}


def test_clean_samples_pass():
    assert codes([s(i) for i in range(3)]) == {}


def test_each_problem_is_found_with_its_ids():
    samples = [
        s(0), s(0),                                    # duplicate id
        s(1, text="  "),                               # empty text
        s(2, audio=np.array([1, np.nan, 0, 0], np.float32)),
        s(3, audio=np.zeros(5, np.float32)),           # dim mismatch
        s(4, label=3.5),                               # out of range
        s(5, split="holdout"),                         # unknown split
        s(6, vision_length=9),                         # longer than sequence
        s(7, media=Media(frames=["/nonexistent/f.jpg"])),
    ]
    found = codes(samples)
    assert found["duplicate_id"].ids == ["s0"]
    assert found["empty_text"].ids == ["s1"]
    assert found["nonfinite"].ids == ["s2"]
    assert found["dim_mismatch"].ids == ["s3"] and "ndim=1 dim=5" in found["dim_mismatch"].message
    assert found["label_range"].ids == ["s4"]
    assert found["unknown_split"].ids == ["s5"] and "data.split_names" in found["unknown_split"].message
    assert found["bad_length"].ids == ["s6"]
    assert found["missing_media"].ids == ["s7"]
    assert "missing_media" not in codes(samples, check_media=False)


def test_classification_labels_checked():
    samples = [s(0, label_class=0), s(1, label_class=3), s(2, label_class=None)]
    found = codes(samples, task="classification", metric_set="classification",
                  class_names=["neg", "neu", "pos"])
    assert found["label_class"].ids == ["s1"]
    assert found["label_missing"].ids == ["s2"]
    assert "data.class_column is not set" in found["label_missing"].message
    # metric_set follows the task unless set
    assert DataConfig(task="classification", class_names=["a", "b"]).metric_set == "classification"
    assert DataConfig().metric_set == "mosi"


def test_labels_optional_accepts_unlabelled_rows_but_checks_present_ones():
    cls = dict(task="classification", class_names=["neg", "neu", "pos"], class_column="y")
    unlabelled = [s(0, label_class=None, label=None), s(1, label_class=2, label=None)]
    assert "label_missing" in codes(unlabelled, **cls)
    assert codes(unlabelled, labels="optional", **cls) == {}
    assert codes([s(0, label_class=7)], labels="optional", **cls)["label_class"].ids == ["s0"]
    reg = [s(0, label=None), s(1, label=1.0)]
    assert codes(reg)["label_missing"].ids == ["s0"]
    assert "data.labels=optional" in codes(reg)["label_missing"].message
    assert codes(reg, labels="optional") == {}
    assert codes([s(0, label=5.0)], labels="optional")["label_range"].ids == ["s0"]


def test_error_lists_first_ids_and_count():
    samples = [s(i, label=9.0) for i in range(12)]
    with pytest.raises(DataError) as e:
        validate(samples, DataConfig(), "data/x.csv")
    msg = str(e.value)
    assert "data/x.csv: label_range" in msg and "[12 sample(s): s0, s1, s2, s3, s4 (+7 more)]" in msg


def test_text_may_be_empty_when_text_is_not_used():
    assert "empty_text" not in codes([s(0, text="")], modalities=["audio"])
