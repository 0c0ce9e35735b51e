"""Reference rows in the leaderboard: written and read back as results.json, shown first as
``ref: ...`` beside the checkpoints and in no recipe group, and refused for another split,
metric set or evaluated data, or for a file that holds no reference rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from eval.evaluate import CheckpointEval
from eval.leaderboard import leaderboard, write_leaderboard
from eval.options import EvalError, EvalOptions
from eval.references import (
    ReferenceTable,
    check_references,
    read_reference,
    read_references,
    write_reference,
)
from workbench.config import DataConfig

M1 = {"acc": 0.5, "f1_weighted": 0.4, "f1_macro": 0.3}
M2 = {"acc": 0.7, "f1_weighted": 0.6, "f1_macro": 0.5}


def fake_eval(root: Path, name: str, seed: int, metrics: dict, split_fp: str = "fpT"
              ) -> CheckpointEval:
    """A checkpoint's evaluation without a model: what the leaderboard reads."""
    path = root / name
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump({"train": {"seed": seed, "lr": 0.1}}))
    return CheckpointEval(name=name, path=path, meta=None, split="test", n_samples=10,
                          metric_set="classification", conditions={"complete": metrics},
                          patterns={}, sweep={}, seeds=[], modalities=["text"], protocol={},
                          cost=None, data={"name": "d", "split_fingerprint": split_fp},
                          options=EvalOptions(), device="cpu")


def table(title: str = "baselines", split: str = "test", fp: str = "fpT",
          rows: dict | None = None) -> ReferenceTable:
    rows = rows or {"majority class": M1, "probe (minilm)": M2}
    kinds = {"majority class": "majority", "probe (minilm)": "probe"}
    return ReferenceTable(title=title, metric_set="classification", split=split, n_samples=10,
                          data={"name": "d", "split_fingerprint": fp}, rows=rows,
                          about={n: {"kind": kinds.get(n, "teacher")} for n in rows})


def written(tmp_path: Path, t: ReferenceTable, name: str) -> ReferenceTable:
    write_reference(t, tmp_path / name, {"data": DataConfig(path="x.csv")})
    return read_reference(tmp_path / name)


def test_written_and_read_back(tmp_path):
    back = written(tmp_path, table(), "base")
    assert back.rows == {"majority class": M1, "probe (minilm)": M2}
    assert back.split == "test" and back.metric_set == "classification"
    assert back.about["probe (minilm)"]["kind"] == "probe"
    assert back.source == str(tmp_path / "base" / "results.json")
    for f in ("results.json", "results.md", "config.yaml", "versions.json"):
        assert (tmp_path / "base" / f).is_file(), f
    assert "| majority class |" in (tmp_path / "base" / "results.md").read_text()
    assert read_reference(tmp_path / "base" / "results.json").rows == back.rows


def test_leaderboard_shows_reference_rows_first_and_never_groups_them(tmp_path):
    evals = [fake_eval(tmp_path / "runs", "a", 1, M1), fake_eval(tmp_path / "runs", "b", 2, M2)]
    teacher = table("teacher", rows={"teacher (answered 4/10)": M2,
                                     "teacher (unanswered = majority class)": M1})
    refs = [written(tmp_path, table(), "base"), written(tmp_path, teacher, "teach")]
    board = leaderboard(evals, refs)
    names = list(board["complete"])
    assert names[:4] == ["ref: majority class", "ref: probe (minilm)",
                         "ref: teacher (answered 4/10)",
                         "ref: teacher (unanswered = majority class)"]
    assert names[4:6] == ["a", "b"] and names[6].startswith("mean ± std (2 checkpoints")
    assert board["groups"] == {"recipe": ["a", "b"]}  # one recipe; the references in none
    assert board["complete"][names[6]]["acc"][0] == pytest.approx(0.6)  # a and b only
    assert board["references"]["ref: probe (minilm)"]["kind"] == "probe"
    assert board["references"]["ref: teacher (answered 4/10)"]["kind"] == "teacher"
    out = tmp_path / "board"
    write_leaderboard(evals, out, refs)
    md = (out / "leaderboard.md").read_text()
    assert "| ref: majority class |" in md and "Reference rows" in md
    res = json.loads((out / "results.json").read_text())
    assert res["leaderboard"]["ref: majority class"] == M1  # (results.json sorts its keys)
    assert res["meta"]["references"]["ref: majority class"]["source"].endswith("results.json")
    assert "ref:" not in (out / "runs.csv").read_text()


def test_a_row_name_two_files_share_gets_its_directory(tmp_path):
    evals = [fake_eval(tmp_path / "runs", "a", 1, M1)]
    refs = [written(tmp_path, table("teacher", rows={"teacher (answered 4/10)": M1}), "ctx"),
            written(tmp_path, table("teacher", rows={"teacher (answered 4/10)": M2}), "noctx")]
    rows = list(leaderboard(evals, refs)["complete"])
    assert rows[:2] == ["ref: teacher (answered 4/10)", "ref: teacher (answered 4/10) [noctx]"]


def test_other_split_metric_set_or_data_is_refused(tmp_path):
    evals = [fake_eval(tmp_path / "runs", "a", 1, M1)]
    with pytest.raises(EvalError, match=r"on the 'valid' split, the checkpoints on 'test'"):
        leaderboard(evals, [table(split="valid")])
    with pytest.raises(EvalError, match="computed on other data.*fingerprint fpX"):
        leaderboard(evals, [table(fp="fpX")])
    mosi = table()
    mosi.metric_set = "mosi"
    with pytest.raises(EvalError, match="metric set 'mosi'"):
        leaderboard(evals, [mosi])
    check_references([table(split="valid")], split="valid")  # split only: before evaluating


def test_files_without_reference_rows_are_refused(tmp_path):
    with pytest.raises(EvalError, match="no results.json there.*workbench baselines"):
        read_references([tmp_path])
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "results.json").write_text(json.dumps({"leaderboard": {"complete": M1},
                                                 "meta": {"checkpoint": "x"}}))
    with pytest.raises(EvalError, match="holds no reference rows.*pass a checkpoint"):
        read_reference(ck)
    (ck / "results.json").write_text("{not json")
    with pytest.raises(EvalError, match="cannot read it as JSON"):
        read_reference(ck)
