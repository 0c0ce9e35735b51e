"""`workbench predict EXPORT --new-data` through the CLI on data built in the test: a tiny
classification student (MiniLM + LoRA, built in code) exported, then served on new lines,
with and without a split column."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from students.collate import Collator
from students.export import export_model
from students.model import build_student
from workbench.cli import app
from workbench.config import ConfigError, DataConfig, LoraConfig, StudentConfig, load_config
from workbench.data import load_dataset
from workbench.data.schema import Sample
from workbench.data.store import DataInfo

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
CLASSES = ["negative", "neutral", "positive"]
LINES = ["I love this place, it is perfect.", "The train leaves at nine.",
         "This is the worst day ever.", "Where did you put the keys?"]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A text-only classification student and its export directory."""
    info = DataInfo(name="lines", task="classification", metric_set="classification",
                    label_range=(-3.0, 3.0), class_names=CLASSES, modalities=["text"])
    cfg = StudentConfig(hidden=16, heads=2, bottleneck_tokens=2, max_text_len=16, dropout=0.0,
                        lora=LoraConfig(r=2, alpha=4, dropout=0.0))
    torch.manual_seed(0)
    model = build_student(cfg, info).eval()
    out = export_model(model, tmp_path_factory.mktemp("cls") / "exported")
    return model, out


def _data_yaml(root: Path, rows: list[dict[str, str]]) -> Path:
    """A manifest of ``rows`` (its columns are the rows' keys) and the data YAML reading it."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / "lines.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cfg = {"name": "new_lines", "path": "lines.csv", "task": "classification",
           "class_names": CLASSES, "modalities": ["text"]}
    (root / "new.yaml").write_text(yaml.safe_dump(cfg))
    return root / "new.yaml"


def _predict(export: Path, data: Path, out: Path, *extra: str):
    return runner.invoke(app, ["predict", str(export), "--data", str(data), "--new-data",
                               "--out", str(out), "--device", "cpu", *extra])


def _read(out: Path) -> list[dict[str, str]]:
    with out.open(newline="") as f:
        return list(csv.DictReader(f))


def test_classification_export_predicts_new_data(classifier, tmp_path):
    model, export = classifier
    assert json.loads((export / "export.json").read_text())["data_info"]["label_range"] is None
    rows = [{"id": f"u{i}", "text": t, "split": "test" if i % 2 else "valid"}
            for i, t in enumerate(LINES)]
    out = tmp_path / "p.csv"
    r = _predict(export, _data_yaml(tmp_path / "new", rows), out, "--split", "all")
    assert r.exit_code == 0, r.output
    assert "wrote 4 predictions" in r.output
    got = _read(out)
    assert list(got[0])[:5] == ["id", "split", "class", "class_id", "prob_negative"]
    assert sorted((g["id"], g["split"]) for g in got) == sorted((r["id"], r["split"])
                                                                  for r in rows)
    samples = [Sample(id=r["id"], text=r["text"], split=r["split"]) for r in rows]
    with torch.no_grad():
        logits = model(Collator.for_model(model)(samples)).pred.numpy()
    want = np.exp(logits - logits.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    by_id = {g["id"]: g for g in got}
    for s, p in zip(samples, want, strict=True):
        row = by_id[s.id]
        probs = [float(row[f"prob_{c}"]) for c in CLASSES]
        np.testing.assert_allclose(probs, p, rtol=1e-4, atol=1e-6)
        assert row["class"] == CLASSES[int(np.argmax(p))] and row["label"] == ""


def test_new_data_needs_no_split_column(classifier, tmp_path):
    """Rows of only id and text: `test` for predict --new-data; training and evaluation
    data without a split column are refused with one message saying what to set."""
    _, export = classifier
    data = _data_yaml(tmp_path / "bare", [{"id": f"u{i}", "text": t} for i, t in enumerate(LINES)])
    out = tmp_path / "p.jsonl"
    r = _predict(export, data, out, "--split", "all")
    assert r.exit_code == 0, r.output
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert [g["id"] for g in got] == ["u0", "u1", "u2", "u3"]
    assert {g["split"] for g in got} == {"test"} and {g["label"] for g in got} == {None}
    r = _predict(export, data, out)  # the default --split test
    assert r.exit_code == 0, r.output
    # data to train or evaluate on: the clear error, file and line named
    r = runner.invoke(app, ["data", "validate", str(data)])
    assert r.exit_code == 2
    assert "lines.csv:2: no column 'split'" in r.output and "data.default_split=test" in r.output
    assert "Traceback" not in r.output
    cfg = load_config(DataConfig, data, ["default_split=valid", "labels=optional"])
    assert {s.split for s in load_dataset(cfg).iter_samples()} == {"valid"}
    with pytest.raises(ConfigError, match="data.default_split"):
        DataConfig(default_split="dev")
