"""MELD as a new user meets it, on a small slice built in code with MELD's CSV columns
(one file per split, ids repeating across files, curly quotes, speakers, dialogues):
import -> teacher cache (Gemma 3 270M, the dialogue template with context and few-shot
examples from train) -> distillation (tiny, soft labels) -> eval -> predict on unlabelled
lines -> export. Everything through the `workbench` command, as a user runs it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from workbench.cli import app

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]
REPO = Path(__file__).resolve().parents[2]
COLUMNS = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID",
           "Utterance_ID", "Season", "Episode", "StartTime", "EndTime"]
LINES = {
    "positive": ["Oh, that’s wonderful, I’m so happy for you!", "I love this place, it’s perfect.",
                 "You’re the best, thank you so much!", "This is great news!"],
    "negative": ["I can’t believe you did that to me.", "This is the worst day ever.",
                 "Get out, I hate this!", "Oh no, I ruined everything."],
    "neutral": ["The train leaves at nine.", "Where did you put the keys?",
                "I’m going to the store.", "It’s on the table."],
}
SPEAKERS = ["Rachel", "Ross", "Monica", "Chandler"]


def _write_split(path: Path, n_dialogues: int, offset: int, labelled: bool = True) -> None:
    rows = []
    words = list(LINES)
    for d in range(n_dialogues):
        for u in range(4):
            sentiment = words[(d + u) % 3]
            rows.append({"Sr No.": len(rows) + 1,
                         "Utterance": LINES[sentiment][(d + u + offset) % 4],
                         "Speaker": SPEAKERS[(d + u) % 4], "Emotion": "neutral",
                         "Sentiment": sentiment, "Dialogue_ID": d, "Utterance_ID": u,
                         "Season": 1, "Episode": 1, "StartTime": "00:00:01,000",
                         "EndTime": "00:00:02,000"})
    rows.reverse()  # file order must not matter for the context
    cols = COLUMNS if labelled else [c for c in COLUMNS if c not in ("Emotion", "Sentiment")]
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


@pytest.fixture(scope="module")
def gemma():
    from workbench.models import gemma_gguf_path

    try:
        return gemma_gguf_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))


def test_meld_slice_end_to_end(gemma, tmp_path):
    runner = CliRunner()

    def run(*args: str):
        r = runner.invoke(app, list(args))
        assert r.exit_code == 0, r.output
        return r

    raw = tmp_path / "meld"
    raw.mkdir()
    _write_split(raw / "train_sent_emo.csv", 4, 0)   # 16 utterances
    _write_split(raw / "dev_sent_emo.csv", 2, 1)     # 8
    _write_split(raw / "test_sent_emo.csv", 2, 2)    # 8
    # the shipped data config, pointed at the slice (a command-line path: relative to cwd)
    shipped = REPO / "configs" / "data" / "meld.yaml"
    r = run("data", "import", str(shipped), f"path={raw}", "few_shot=1", "--out",
            str(tmp_path / "imported"))
    info = json.loads((tmp_path / "imported" / "workbench_dataset.json").read_text())
    assert info["task"] == "classification" and info["metric_set"] == "classification"
    from workbench.data import MSADataset

    ds = MSADataset.load(tmp_path / "imported")
    assert {s: ds.num_rows(s) for s in ds.splits} == {"train": 16, "valid": 8, "test": 8}
    last = next(s for s in ds.samples("train") if s.id == "train_0_3")
    assert last.meta["speaker"] == "Chandler"
    assert [t["speaker"] for t in last.meta["context"]] == ["Rachel", "Ross", "Monica"]
    data_yaml = tmp_path / "slice.yaml"
    data_yaml.write_text(yaml.safe_dump({
        "name": "meld", "path": "imported", "task": "classification",
        "class_names": ["negative", "neutral", "positive"], "modalities": ["text"],
        "few_shot": 1}))

    # teacher cache: the shipped recipe, the slice as a data override, train only
    cache = tmp_path / "cache"
    run("cache", "run", "--config", str(REPO / "configs/cache/meld_dialogue_polarity.yaml"),
        f"data={data_yaml}", f"cache.dir={cache}", "--splits", "train",
        "teacher.batch_size=16", "teacher.num_threads=1", "cache.max_error_rate=1.0")
    from workbench.cache.store import CacheStore

    with CacheStore(cache) as store:
        (job,) = store.jobs()
        rendered = [json.loads(r[0]) for r in store.conn.execute("SELECT request FROM requests")]
        ok = [o for o in store.current(job["job"]).values() if o.ok]
    assert job["template"] == "dialogue_polarity" and len(ok) >= 12
    prompts = [r["prompt"] for r in rendered]
    assert any("Conversation so far:" in p and 'Ross: "' in p for p in prompts)
    assert all(p.count("Sentiment:") == 4 for p in prompts)  # 3 examples (1 per class) + answer
    status = json.loads(run("cache", "status", str(cache), "--json").stdout)
    assert status["jobs"][0]["status"]["pending"] == 0

    # distillation: the shipped soft-label recipe, data as an override, tiny student
    out = tmp_path / "runs" / "soft"
    run("distill", "--config", str(REPO / "configs/distill/meld_text_soft.yaml"),
        f"data={data_yaml}", f"signals.cache_dir={cache}", "signals.min_ok_fraction=0.5",
        f"train.output_dir={out}", "train.epochs=1", "train.batch_size=8",
        "student.hidden=16", "student.heads=2", "student.bottleneck_tokens=2",
        "student.max_text_len=16", "student.lora.r=2", "student.lora.alpha=4",
        "eval.batch_size=16")
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["train"]["task_loss"] == "ce"
    assert resolved["train"]["select_metric"] == "valid_f1_weighted"

    # evaluation on test
    r = run("eval", str(out), "--split", "test", "--no-cost", "--missing-modality", "none",
            "--missing-rates", "none", "--threads", "1", "--device", "cpu")
    res = json.loads((out / "eval-test" / "results.json").read_text())
    assert set(res["leaderboard"]["complete"]) >= {"acc", "f1_weighted", "f1_macro"}

    # predict on new, unlabelled lines (no Sentiment column), with their dialogue context
    new = tmp_path / "new"
    new.mkdir()
    _write_split(new / "lines.csv", 1, 3, labelled=False)
    new_yaml = tmp_path / "new.yaml"
    cfg = yaml.safe_load(shipped.read_text())
    cfg.update({"path": "new", "split_files": {"test": "lines.csv"}, "class_column": ""})
    new_yaml.write_text(yaml.safe_dump(cfg))
    r = runner.invoke(app, ["data", "validate", str(new_yaml)])
    assert r.exit_code == 2 and "class_column" in r.output
    run("data", "validate", str(new_yaml), "--unlabeled")
    preds = tmp_path / "preds.csv"
    run("predict", str(out), "--data", str(new_yaml), "--new-data", "--out", str(preds),
        "--device", "cpu")
    with preds.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["label"] for r in rows} == {""}
    assert all(r["class"] in ("negative", "neutral", "positive") for r in rows)

    # export: a classification set records no score range
    run("export", str(out), "--out", str(tmp_path / "exported"))
    spec = json.loads((tmp_path / "exported" / "export.json").read_text())
    assert spec["task"] == "classification" and spec["data_info"]["label_range"] is None
    # docs/serving.md's load_exported usage, as written there
    import torch

    from students.collate import Collator
    from students.export import load_exported
    from workbench.data.schema import Sample

    model = load_exported(tmp_path / "exported")
    samples = [Sample(id="u1", text="I can't believe you did that!", split="test")]
    with torch.no_grad():
        out = model(Collator.for_model(model)(samples))
    assert tuple(out.pred.shape) == (1, len(spec["class_names"]))
