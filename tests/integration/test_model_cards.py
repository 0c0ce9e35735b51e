"""The cards written beside shared artefacts: the model card (``README.md``) of
``workbench export`` on the tiny trained checkpoints of tests/support/checkpoints.py,
evaluated with reference rows or not evaluated, and the dataset card of ``workbench cache
export --format hf`` on a cache with ok, error and pending keys. Each card's YAML front
matter is parsed and its figures compared with the files they come from (results.json,
the checkpoint's records, the cache's status)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from eval.card_sources import find_eval
from eval.cost_text import cost_lines
from eval.options import EvalError
from eval.report import format_cell
from students.checkpoint import read_meta
from tests.support.checkpoints import tiny_checkpoints
from workbench.cache import CacheStore, JobSpec, SoftLabel, TeacherOutput
from workbench.cache.card import COLUMNS
from workbench.cli import app

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]
runner = CliRunner()
HUB = importlib.util.find_spec("huggingface_hub") is not None


def run(*args: Any):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "100"})


def split_card(path: Path) -> tuple[dict[str, Any], str]:
    """(YAML front matter, Markdown body) of a card."""
    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def section(body: str, title: str) -> str:
    """The text of the ``## title`` section."""
    part = body.split(f"## {title}\n", 1)[1]
    return part.split("\n## ", 1)[0]


def table_rows(text: str) -> dict[str, dict[str, str]]:
    """A Markdown table in ``text`` as {first cell: {header: cell}}."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header[1:], cells[1:], strict=True))
    return rows


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    return tiny_checkpoints(tmp_path_factory)


@pytest.fixture(scope="module")
def evaluated(ck, tmp_path_factory):
    """A copy of checkpoint ``a`` evaluated where `workbench eval` writes by default, with
    the baselines as reference rows, and exported."""
    root = tmp_path_factory.mktemp("card")
    ckpt = root / "run_a" / "checkpoint-best"
    shutil.copytree(ck["a"], ckpt)
    base = root / "baselines"
    r = run("baselines", ck["data_yaml"], "--out", base, "--threads", "1", "--device", "cpu",
            "--folds", "3")
    assert r.exit_code == 0, r.output
    r = run("eval", ckpt, "--device", "cpu", "--threads", "1", "--missing-rates", "0,0.5",
            "--seeds", "1,2", "--latency-samples", "3", "--speed-samples", "3", "-r", base)
    assert r.exit_code == 0, r.output
    out = root / "export"
    r = run("export", ckpt.parent, "--out", out)
    assert r.exit_code == 0, r.output
    assert "model card" in r.output and "evaluation from" in " ".join(r.output.split())
    results = json.loads((ckpt.parent / "eval-test" / "results.json").read_text())
    board = json.loads((ckpt.parent / "leaderboard-test" / "results.json").read_text())
    return {"ckpt": ckpt, "out": out, "results": results, "board": board, "root": root}


def test_model_card_figures_are_the_evaluation(evaluated):
    res, board = evaluated["results"], evaluated["board"]
    meta = read_meta(evaluated["ckpt"])
    head, body = split_card(evaluated["out"] / "README.md")
    assert head["library_name"] and head["pipeline_tag"] == "text-classification"
    assert {"multimodal", "sentiment-analysis", "lora"} <= set(head["tags"])
    assert head["datasets"] == [meta.info.name]
    complete = res["leaderboard"]["complete"]
    assert set(head["metrics"]) == set(complete)
    [entry] = head["model-index"]
    [result] = entry["results"]
    assert result["dataset"]["split"] == "test"
    assert result["dataset"]["revision"] == meta.info.fingerprint
    # every value exactly as results.json has it
    assert {m["type"]: m["value"] for m in result["metrics"]} == complete
    # the metrics table: this model and the reference rows, formatted as workbench eval does
    rows = table_rows(section(body, "Evaluation metrics"))
    refs = {k: v for k, v in board["leaderboard"].items() if k.startswith("ref: ")}
    assert "ref: train mean" in refs and set(rows) == {"this model", *refs}
    for name, metrics in {"this model": complete, **refs}.items():
        assert rows[name] == {m: format_cell(m, v) for m, v in metrics.items()}
    # missing modalities: every pattern, and the sweep's rates and average
    miss = section(body, "Missing modalities")
    patterns = table_rows(miss.split("Missing-rate sweep")[0])
    assert set(patterns) == set(res["leaderboard"])
    for name, metrics in res["leaderboard"].items():
        assert patterns[name] == {m: format_cell(m, v) for m, v in metrics.items()}
    sweep = table_rows(miss.split("Missing-rate sweep")[1])
    [summary] = res["robustness"].values()
    assert set(sweep) == {"0", "0.5", "average"}
    assert sweep["average"] == {m: format_cell(m, v) for m, v in summary["average"].items()}
    assert sweep["0.5"]["mae"] == format_cell("mae", summary["per_rate"]["0.5"]["mae"])
    # cost, split sizes, teacher job, parameters
    cost = section(body, "Student and teacher cost")
    assert all(f"- {line}" in cost for line in cost_lines(res["cost"]))
    sizes = res["meta"]["data"]["splits"]
    assert ", ".join(f"{k} {v}" for k, v in sizes.items()) in section(body, "Training data")
    job = meta.teacher_manifest["soft_labels"]["job"]
    teacher = section(body, "Teacher, template and cache")
    for value in (job["teacher"], job["template"], job["job"], job["template_hash"]):
        assert f"`{value}`" in teacher
    assert f"{meta.student['parameters']['all']['total']:,} total" in body
    assert "Not evaluated" not in body
    if HUB:
        from huggingface_hub import ModelCard

        card = ModelCard.load(evaluated["out"] / "README.md")
        assert card.data.library_name == head["library_name"]
        assert {e.metric_type: e.metric_value for e in card.data.eval_results} == complete
        assert {e.dataset_split for e in card.data.eval_results} == {"test"}


def test_a_checkpoint_without_evaluation_says_not_evaluated(ck, tmp_path):
    out = tmp_path / "export_b"
    r = run("export", ck["b"], "--out", out)
    assert r.exit_code == 0, r.output
    assert "not evaluated" in " ".join(r.output.split())
    head, body = split_card(out / "README.md")
    assert "model-index" not in head and head["datasets"] == [read_meta(ck["b"]).info.name]
    for title in ("Evaluation metrics", "Missing modalities", "Student and teacher cost"):
        text = section(body, title)
        assert text.strip().startswith("Not evaluated") and f"workbench eval {ck['b']}" in text
        assert "|" not in text  # no table
    assert "trained on gold labels only" in section(body, "Teacher, template and cache")
    if HUB:
        from huggingface_hub import ModelCard

        assert ModelCard.load(out / "README.md").data.eval_results is None


def test_evaluation_files_are_tied_to_their_checkpoint(ck, evaluated, tmp_path):
    ckpt = evaluated["ckpt"]
    # the leaderboard folder of `eval --out DIR` and the results folder both name it
    found = find_eval(ckpt, ckpt.parent / "eval-test")
    assert found.results == evaluated["results"] and "ref: train mean" in found.references
    board = tmp_path / "board"  # the layout of `workbench eval CKPT --out board -r ...`
    shutil.copytree(ckpt.parent / "leaderboard-test", board)
    name = evaluated["results"]["meta"]["name"]
    shutil.copytree(ckpt.parent / "eval-test", board / name)
    found = find_eval(ckpt, board)
    assert found.path == board / name / "results.json"
    assert found.reference_path == board / "results.json"
    assert set(found.references) == {k for k in evaluated["board"]["leaderboard"]
                                     if k.startswith("ref: ")}
    # another checkpoint's results: refused when named, left out (and said why) by default
    with pytest.raises(EvalError, match="is not the evaluation of"):
        find_eval(ck["b"], ckpt.parent / "eval-test")
    other = tmp_path / "run_b" / "checkpoint-best"
    shutil.copytree(ck["b"], other)
    shutil.copytree(ckpt.parent / "eval-test", other.parent / "eval-test")
    found = find_eval(other)
    assert found.results is None and "not this checkpoint's evaluation" in found.note
    # a wrong --eval stops the export before anything is written
    r = run("export", other, "--out", tmp_path / "x", "--eval", ckpt.parent / "eval-test")
    assert r.exit_code == 2 and "is not the evaluation of" in " ".join(r.output.split())
    assert not (tmp_path / "x").exists()
    r = run("export", other, "--out", tmp_path / "x", "--eval", tmp_path / "nowhere")
    assert r.exit_code == 2 and "no results.json there" in " ".join(r.output.split())


# --------------------------------------------------------------------------- dataset card


def _cache(path: Path) -> CacheStore:
    """Two jobs: ok, timeout, no_label and a pending key; the second job all ok."""
    store = CacheStore(path)
    for template, statuses in (("sentiment_score", ["ok", "timeout", "ok", "no_label", None]),
                               ("context_aware", ["ok"] * 5)):
        spec = JobSpec(template=template, template_version=2, template_hash="h" + template,
                       uses_gold_label=False,
                       output="soft_label" if template == "sentiment_score" else "description",
                       teacher="org/model@rev", backend="openai", decoding={"temperature": 0},
                       data_name="d", data_fingerprint="fp1")
        job = store.register_job(spec)
        samples = [("a", "train"), ("b", "train"), ("c", "valid"), ("d", "test"), ("e", "test")]
        store.add_requests(job, [(sid, split, f"{template}_{sid}", {"prompt": sid})
                                 for sid, split in samples])
        for (sid, _), st in zip(samples, statuses, strict=True):
            if st is None:
                continue
            soft = SoftLabel(labels=["n", "p"], values=[-1, 1], probs=[0.3, 0.7], expected=0.4,
                             variance=0.0, entropy=0.6, off_label_mass=0.0, argmax=1)
            store.put(TeacherOutput(
                key=f"{template}_{sid}", status=st, error="" if st == "ok" else "boom",
                soft_label=soft if st == "ok" and template == "sentiment_score" else None,
                description="calm voice" if template == "context_aware" else None,
                tokens_in=10, tokens_out=2, cost_usd=0.0125, created_at=time.time()))
    return store


def test_dataset_card_and_files(tmp_path):
    store = _cache(tmp_path / "cache")
    jobs = {j["job"]: j for j in store.jobs()}
    status = {j: store.status(j) for j in jobs}
    store.close()
    out = tmp_path / "hf"
    r = run("cache", "export", tmp_path / "cache", "--out", out, "--format", "hf")
    assert r.exit_code == 0, r.output
    assert "wrote 10 rows" in r.output
    head, body = split_card(out / "README.md")
    assert head["license"] == "unknown"
    assert head["task_categories"] == ["text-classification", "text-generation"]
    assert head["size_categories"] == ["n<1K"]
    [config] = head["configs"]
    files = {f["split"]: f["path"] for f in config["data_files"]}
    assert files == {s: f"data/{s}.parquet" for s in ("train", "valid", "test")}
    import datasets

    ds = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf_cache"))
    assert {s: ds[s].num_rows for s in ds} == {"train": 4, "valid": 2, "test": 4}
    assert "Rows per split: train 4, valid 2, test 4 (10 in all)." in body
    assert set(ds["train"].column_names) == set(COLUMNS)
    # per job: teacher, template and version, counts and spend as the cache's status has them
    for job, spec in jobs.items():
        part = body.split(f"### Job `{job}`", 1)[1].split("### Job", 1)[0]
        st = status[job]
        assert f"`{spec['teacher']}` (backend `openai`)" in part
        assert f"`{spec['template']}` version 2" in part
        errs = ", ".join(f"{k} {v}" for k, v in st["errors"].items()) or "none"
        assert (f"**Keys**: {st['keys']}: ok {st['ok']}, errors {errs}, pending "
                f"{st['pending']}") in part
        assert f"**Spend**: ${st['cost_usd']:.6f}" in part
    score = next(j for j, s in jobs.items() if s["template"] == "sentiment_score")
    assert status[score]["errors"] == {"no_label": 1, "timeout": 1}
    assert status[score]["pending"] == 1 and status[score]["cost_usd"] == pytest.approx(0.05)
    counts = [ln for ln in section(body, "Counts per status").splitlines()
              if ln.startswith(f"| `{score}`")]
    assert sorted(counts) == sorted([f"| `{score}` | {k} | 1 |" for k in
                                     ("no_label", "timeout", "pending")]
                                    + [f"| `{score}` | ok | 2 |"])
    columns = table_rows(section(body, "Columns"))
    assert {k.strip("`") for k in columns} == set(COLUMNS)
    assert "not described" not in section(body, "Columns")
    if HUB:
        from huggingface_hub import DatasetCard

        card = DatasetCard.load(out / "README.md")
        assert card.data.license == "unknown" and card.data.configs == head["configs"]
    # again over its own earlier export: replaced; a folder holding other files: refused
    r = run("cache", "export", tmp_path / "cache", "--out", out, "--format", "hf",
            "--job", score)
    assert r.exit_code == 0, r.output
    assert "wrote 5 rows" in r.output and "context_aware" not in (out / "README.md").read_text()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    r = run("cache", "export", tmp_path / "cache", "--out", tmp_path / "mine", "--format", "hf")
    assert r.exit_code == 2 and "not an earlier `--format hf` export" in " ".join(r.output.split())
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    r = run("cache", "export", tmp_path / "cache", "--out", tmp_path / "j", "--format", "hf",
            "--job", "nope")
    assert r.exit_code == 2 and "no such job" in r.output
