"""Text lengths in the student's tokens: what ``student.max_text_len`` cuts, said before
training and by ``workbench data stats`` (real MiniLM tokenizer, data built here)."""

import csv
import json
import logging

import pytest
from typer.testing import CliRunner

from workbench.cli import app
from workbench.config import StudentConfig
from workbench.data import Sample
from workbench.data.lengths import (
    length_stats,
    percent,
    token_counter,
    truncation_warning,
    warn_truncation,
)
from workbench.models import ModelNotFound, minilm_path

try:
    minilm_path()
except ModelNotFound as e:  # the models extra is not installed
    pytest.skip(str(e), allow_module_level=True)

UTTERANCE = "Oh my God, I am so happy for you both!"


def _context_first(i: int, turns: int) -> str:
    """An utterance with ``turns`` previous lines written before it, as a context-prepending
    dataset has them."""
    lines = [f"Speaker {k}: we talked about the apartment and the rent, number {i}." for k in range(turns)]
    return " ".join([*lines, f"Now: {UTTERANCE}"])


def test_counter_is_the_students_tokenizer():
    from transformers import AutoTokenizer

    texts = ["", "Hi.", "Café naïve résumé — “quotes” 日本語 😀", _context_first(0, 6), "   "]
    count, max_positions = token_counter("minilm")
    tok = AutoTokenizer.from_pretrained(str(minilm_path()))
    assert count(texts) == [len(ids) for ids in tok(texts, verbose=False)["input_ids"]]
    assert count(["Hi."]) == [4]  # [CLS] hi . [SEP]: special tokens count, as in a batch
    assert count([]) == [] and max_positions == 512
    with pytest.raises(ModelNotFound):
        token_counter("no/such/encoder")


def test_length_stats():
    lengths = list(range(1, 101))
    assert length_stats(lengths) == {"n": 100, "p50": 50, "p95": 95, "max": 100}
    s = length_stats(lengths, 64)
    assert (s["over"], s["share"], s["limit"]) == (36, 0.36, 64)
    assert length_stats([7]) == {"n": 1, "p50": 7, "p95": 7, "max": 7}
    assert length_stats([], 64) == {}
    assert percent(0.0002) == "<0.1%" and percent(0) == "0.0%" and percent(0.25) == "25.0%"


def test_truncation_warning_counts_and_says_what_to_set():
    assert truncation_warning({"train": [10, 20], "valid": [30]}, 64) is None
    lengths = {"train": [10] * 90 + [80] * 8 + [200, 300], "valid": [10, 90]}
    msg = truncation_warning(lengths, 64)
    assert "student.max_text_len=64 cuts 11 of 102 texts (10.8%; train 10 of 100, valid 1 of 2)" in msg
    assert "the longest has 300 tokens" in msg
    assert "student.max_text_len=80 covers 95% of them" in msg
    # the 95% length is within the limit already: the longest is what to set
    assert "max_text_len=300 covers all of them" in truncation_warning({"train": [10] * 99 + [300]}, 64)
    # never more than the encoder reads
    assert "student.max_text_len=512 is the most the encoder reads" in truncation_warning(
        {"train": [600] * 10}, 64, max_positions=512)
    assert "text_len=" in truncation_warning({"t": [9]}, 8, field="text_len")


def test_warn_truncation_before_training_counts_the_lost_utterances(caplog):
    """Half the texts carry six context lines before the utterance: at 64 tokens those
    lose the utterance; the warning counts them with the student's tokenizer and names a
    length that keeps it."""
    train = [Sample(id=f"t{i}", text=_context_first(i, 6 if i % 2 else 0), split="train") for i in range(20)]
    valid = [Sample(id=f"v{i}", text=_context_first(i, 6 if i < 2 else 0), split="valid") for i in range(4)]
    count, _ = token_counter("minilm")
    long = count([train[1].text])[0]
    assert long > 64 >= count([train[0].text])[0]
    cfg = StudentConfig(max_text_len=64)
    with caplog.at_level(logging.WARNING, logger="workbench.data.lengths"):
        msg = warn_truncation(cfg, {"train": train, "valid": valid})
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [msg]
    assert "cuts 12 of 24 texts (50.0%; train 10 of 20, valid 2 of 4)" in msg
    assert f"the longest has {max(count([s.text for s in train + valid]))} tokens" in msg
    suggested = int(msg.split("covers")[0].rsplit("=", 1)[1])
    assert suggested >= long  # every text here is one of two lengths: the long one is kept whole
    caplog.clear()
    assert warn_truncation(StudentConfig(max_text_len=suggested), {"train": train}) is None
    assert not caplog.records


def _manifest(tmp_path, n=20, turns=6):
    path = tmp_path / "m.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "label", "split"])
        for i in range(n):
            split = "train" if i < n // 2 else "valid"
            w.writerow([f"u{i}", _context_first(i, turns if i % 2 else 0), (i % 5) - 2.0, split])
    return path


def test_data_stats_shows_token_lengths_and_the_cut(tmp_path):
    runner = CliRunner()
    src = str(_manifest(tmp_path))
    r = runner.invoke(app, ["data", "stats", src, "modalities=[text]", "--json", "--max-text-len", "64"])
    assert r.exit_code == 0, r.output
    tokens = json.loads(r.stdout)["tokens"]
    assert tokens["encoder"] == "minilm" and tokens["limit"] == 64
    assert tokens["splits"]["train"]["n"] == 10 and tokens["splits"]["train"]["over"] == 5
    assert tokens["splits"]["train"]["share"] == 0.5 and tokens["splits"]["train"]["max"] > 64
    assert "cuts 10 of 20 texts" in tokens["warning"]
    # a recipe's student gives the limit (and the encoder); the table says what is cut
    recipe = tmp_path / "r.yaml"
    recipe.write_text("student: {text_encoder: minilm, max_text_len: 64}\n")
    r = runner.invoke(app, ["data", "stats", src, "modalities=[text]", "--recipe", str(recipe)],
                      env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "over 64" in r.output and "student.max_text_len=64 cuts 10 of 20 texts (50.0%" in r.output
    # without a limit: the lengths and how to count the cut
    r = runner.invoke(app, ["data", "stats", src, "modalities=[text]"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "p95" in r.output and "--max-text-len N" in r.output


def test_data_stats_without_the_tokenizer_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr("workbench.models.minilm_path", _raise_not_found)
    r = CliRunner().invoke(app, ["data", "stats", str(_manifest(tmp_path)), "modalities=[text]"],
                           env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "note" in r.output and "no token lengths" in r.output and "models extra" in r.output
    assert "train" in r.output  # the rest of the stats still show


def _raise_not_found():
    raise ModelNotFound("the default text encoder 'minilm' needs the models extra: pip install -e '.[models]'")
