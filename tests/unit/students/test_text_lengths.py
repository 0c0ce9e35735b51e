"""Training says, before it starts, how many train/valid texts ``student.max_text_len``
cuts (counted with the student's own tokenizer), and what to set."""

from __future__ import annotations

import logging

import pytest

import students.trainer
from students.trainer import train
from tests.support.distill import distill_cfg, tiny_data
from workbench.data import load_dataset
from workbench.data.lengths import token_counter

pytestmark = pytest.mark.usefixtures("one_thread")


def test_training_start_warns_about_cut_texts(tmp_path, monkeypatch, caplog):
    data = tiny_data(tmp_path)
    cfg = distill_cfg(tmp_path / "run", data, "student.max_text_len=8")
    ds = load_dataset(cfg.data)
    count, _ = token_counter("minilm")
    lengths = {s: count([x.text for x in ds.samples(s)]) for s in ("train", "valid")}
    over = sum(n > 8 for ls in lengths.values() for n in ls)
    total = sum(len(ls) for ls in lengths.values())
    assert 0 < over < total
    reached = []

    def fit(accelerator, stage, info, resume):  # the loop itself is not under test here
        reached.append(stage)
        return tmp_path / "run" / "checkpoint-best"

    monkeypatch.setattr(students.trainer, "fit", fit)
    with caplog.at_level(logging.WARNING, logger="workbench.data.lengths"):
        train(cfg)
    said = [r.getMessage() for r in caplog.records if r.name == "workbench.data.lengths"]
    assert reached and len(said) == 1
    assert f"student.max_text_len=8 cuts {over} of {total} texts" in said[0]
    assert f"the longest has {max(max(ls) for ls in lengths.values())} tokens" in said[0]
    assert "covers" in said[0]


def test_no_warning_when_nothing_is_cut(tmp_path, monkeypatch, caplog):
    cfg = distill_cfg(tmp_path / "run", tiny_data(tmp_path), "student.max_text_len=64")
    monkeypatch.setattr(students.trainer, "fit", lambda *a: tmp_path)
    with caplog.at_level(logging.WARNING, logger="workbench.data.lengths"):
        train(cfg)
    assert not [r for r in caplog.records if r.name == "workbench.data.lengths"]

