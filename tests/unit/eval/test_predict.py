"""The pieces of `workbench predict`: class columns, modality availability, files,
options. The CLI on trained checkpoints is in tests/integration/test_predict_export.py."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from eval.predict import (
    PredictError,
    PredictOptions,
    modality_available,
    output_format,
    parse_drop,
    prediction_columns,
    regression_classes,
    write_rows,
)
from workbench.data.schema import Media, Sample
from workbench.metrics import clipped_acc, sims_metrics

pytestmark = pytest.mark.usefixtures("one_thread")





def test_modality_available_reads_the_data():
    z = np.zeros(3, dtype=np.float32)
    seq = np.zeros((4, 2), dtype=np.float32)
    seq[3] = 1.0  # a non-zero frame past the real length does not count
    cases = [
        (Sample(id="a", text="fine", split="t", audio=np.ones(3, np.float32)), "text", True),
        (Sample(id="b", text="  ", split="t"), "text", False),
        (Sample(id="c", text="", split="t"), "text", False),
        (Sample(id="d", text="x", split="t", audio=np.ones(3, np.float32)), "audio", True),
        (Sample(id="e", text="x", split="t", audio=z), "audio", False),
        (Sample(id="f", text="x", split="t"), "audio", False),
        (Sample(id="g", text="x", split="t", audio=seq, audio_length=3), "audio", False),
        (Sample(id="h", text="x", split="t", audio=seq, audio_length=4), "audio", True),
        (Sample(id="i", text="x", split="t", audio=seq, audio_length=0), "audio", False),
        (Sample(id="j", text="x", split="t", media=Media(frames=["f.jpg"])), "vision", True),
        (Sample(id="k", text="x", split="t", vision=np.zeros((0, 3), np.float32)), "vision",
         False),
    ]
    for sample, m, want in cases:
        assert modality_available(sample, m) is want, (sample.id, m)


def test_regression_classes_follow_the_metrics():
    s = np.array([-3.4, -0.6, -0.5, 0.49, 0.5, 0.51, 1.5, 2.5, 3.7])
    cols = regression_classes(s, "mosi")
    assert cols["polarity"] == ["negative", "negative", "neutral", "neutral", "neutral",
                                "positive", "positive", "positive", "positive"]
    assert cols["class7"] == [-3, -1, 0, 0, 0, 1, 2, 2, 3]  # half to even, as acc7
    # the columns agree with the metrics: acc7 / acc3 of two score vectors
    rng = np.random.default_rng(0)
    p, y = rng.uniform(-4, 4, 200), np.round(rng.uniform(-3, 3, 200), 1)
    cp, cy = regression_classes(p, "mosi"), regression_classes(y, "mosi")
    assert np.mean(np.array(cp["class7"]) == cy["class7"]) == clipped_acc(p, y, 3.0)
    assert np.mean(np.array(cp["polarity"]) == cy["polarity"]) == clipped_acc(p, y, 1.0)
    sims = regression_classes(np.array([-1.0, -0.7, -0.69, -0.1, 0.0, 0.1, 0.11, 0.7, 0.71,
                                        2.0]), "sims")
    assert sims["polarity"] == ["negative"] * 4 + ["neutral"] * 2 + ["positive"] * 4
    assert sims["class5"] == [-2, -2, -1, -1, 0, 0, 1, 1, 2, 2]
    p, y = rng.uniform(-1.2, 1.2, 100), rng.uniform(-1, 1, 100)
    sp, sy = regression_classes(p, "sims"), regression_classes(y, "sims")
    assert np.mean(np.array(sp["polarity"]) == sy["polarity"]) == pytest.approx(
        sims_metrics(p, y)["acc3"])
    assert np.mean(np.array(sp["class5"]) == sy["class5"]) == pytest.approx(
        sims_metrics(p, y)["acc5"])


def test_classification_columns_are_names_and_probabilities():
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 3.0]])
    cols = prediction_columns(logits, "classification", "classification", ["neg", "neu", "pos"])
    assert cols["class"] == ["neg", "pos"] and cols["class_id"] == [0, 2]
    probs = np.array([cols["prob_neg"], cols["prob_neu"], cols["prob_pos"]]).T
    np.testing.assert_allclose(probs.sum(1), 1.0)
    np.testing.assert_allclose(probs[0], np.exp(logits[0]) / np.exp(logits[0]).sum())
    reg = prediction_columns(np.array([0.7, -2.2]), "regression", "mosi", [])
    assert list(reg) == ["score", "polarity", "class7"] and reg["class7"] == [1, -2]


def test_rows_to_csv_and_jsonl(tmp_path):
    rows = [{"id": "a", "split": "test", "score": 0.25, "label": None},
            {"id": "b,c", "split": "test", "score": float("nan"), "label": 1.5}]
    cols = ["id", "split", "score", "label"]
    got = list(csv.DictReader(write_rows(rows, cols, tmp_path / "sub" / "p.csv").open()))
    assert got == [{"id": "a", "split": "test", "score": "0.25", "label": ""},
                   {"id": "b,c", "split": "test", "score": "", "label": "1.5"}]
    lines = (tmp_path / "p.jsonl").parent.joinpath("p.jsonl")
    write_rows(rows, cols, lines)
    back = [json.loads(x) for x in lines.read_text().splitlines()]
    assert back[0] == {"id": "a", "split": "test", "score": 0.25, "label": None}
    assert back[1]["score"] is None and back[1]["label"] == 1.5
    assert not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(PredictError, match=r"\.csv or \.jsonl"):
        output_format(tmp_path / "p.parquet")


def test_options_and_missing_modality_parsing():
    assert parse_drop(None) == () and parse_drop(["none"]) == ()
    assert parse_drop(["vision,audio", "audio"]) == ("audio", "vision")
    with pytest.raises(Exception, match="name modalities from"):
        parse_drop(["smell"])
    with pytest.raises(PredictError, match="batch-size"):
        PredictOptions(batch_size=0)
    with pytest.raises(PredictError, match="use auto, cpu"):
        PredictOptions(device="tpu").resolved_device()
    if not torch.cuda.is_available():
        with pytest.raises(PredictError, match="CUDA is not available"):
            PredictOptions(device="cuda").resolved_device()


