"""eval.report and eval.plots: summaries, tables, results files, robustness curve."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest

from eval.plots import robustness_curve
from eval.report import (
    csv_table,
    format_cell,
    is_percent_metric,
    markdown_table,
    means_only,
    order_metrics,
    robustness_summary,
    robustness_table,
    robustness_variants,
    summarize,
    to_jsonable,
    write_results,
)

RUNS = [
    {"acc2_non0": 0.80, "f1_non0": 0.79, "mae": 0.75, "corr": 0.70},
    {"acc2_non0": 0.82, "f1_non0": 0.81, "mae": 0.73, "corr": 0.72},
    {"acc2_non0": 0.84, "f1_non0": 0.80, "mae": 0.71, "corr": 0.74},
]


def sweep(rates=(0.0, 0.3, 0.6, 0.9), seeds=3, base=0.85):
    """A synthetic missing-rate sweep: metrics degrade linearly with the rate."""
    rng = np.random.default_rng(0)
    out = {}
    for r in rates:
        out[r] = [
            {
                "acc2_non0": base - 0.3 * r + 0.01 * rng.normal(),
                "f1_non0": base - 0.01 - 0.3 * r + 0.01 * rng.normal(),
                "mae": 0.7 + 0.5 * r + 0.01 * rng.normal(),
            }
            for _ in range(seeds)
        ]
    return out


# --------------------------------------------------------------------------- summarize


def test_summarize_mean_and_sample_std():
    s = summarize(RUNS)
    assert list(s) == ["acc2_non0", "f1_non0", "mae", "corr"]
    mean, std = s["acc2_non0"]
    assert mean == pytest.approx(0.82)
    # sample std (ddof=1) of 0.80, 0.82, 0.84 is 0.02
    assert std == pytest.approx(0.02)
    assert s["mae"] == pytest.approx((0.73, 0.02))


def test_summarize_single_run_std_zero():
    assert summarize([{"mae": 0.5}]) == {"mae": (0.5, 0.0)}


def test_summarize_errors():
    with pytest.raises(ValueError, match="at least one run"):
        summarize([])
    with pytest.raises(ValueError, match=r"run 1 .* missing \['corr'\]"):
        summarize([{"mae": 1.0, "corr": 0.1}, {"mae": 1.0}])


# --------------------------------------------------------------------------- formatting


def test_formatting_by_metric_name():
    assert is_percent_metric("acc2_non0") and is_percent_metric("f1_weighted")
    assert not is_percent_metric("mae") and not is_percent_metric("corr")
    assert format_cell("acc7", (0.4567, 0.0123)) == "45.7 ± 1.2"
    assert format_cell("f1", 0.8) == "80.0"
    assert format_cell("mae", (0.71234, 0.0201)) == "0.712 ± 0.020"
    assert format_cell("corr", [0.5, 0.01]) == "0.500 ± 0.010"  # lists as read from JSON
    assert format_cell("mae", None) == "n/a"
    assert format_cell("acc2", float("nan")) == "nan"


def test_markdown_table():
    rows = {"student": summarize(RUNS), "teacher|api": {"acc2_non0": 0.9, "mae": 0.6}}
    text = markdown_table(rows, ["acc2_non0", "mae", "corr"])
    lines = text.strip().splitlines()
    assert lines[0] == "| run | acc2_non0 | mae | corr |"
    assert lines[1] == "|---|---:|---:|---:|"
    assert lines[2] == "| student | 82.0 ± 2.0 | 0.730 ± 0.020 | 0.720 ± 0.020 |"
    assert lines[3] == "| teacher\\|api | 90.0 | 0.600 | n/a |"


def test_csv_table():
    rows = {"student": summarize(RUNS), "base, no teacher": {"acc2_non0": 0.8}}
    parsed = list(csv.reader(io.StringIO(csv_table(rows, ["acc2_non0", "mae"]))))
    assert parsed == [
        ["run", "acc2_non0", "mae"],
        ["student", "82.0 ± 2.0", "0.730 ± 0.020"],
        ["base, no teacher", "80.0", "n/a"],
    ]
    split = list(csv.reader(io.StringIO(csv_table(rows, ["mae"], split_std=True))))
    assert split[0] == ["run", "mae", "mae_std"]
    assert split[1] == ["student", "0.730", "0.020"]


def test_order_metrics():
    assert order_metrics(["mae", "zeta", "acc7", "acc2_has0"], "mosi") == [
        "acc2_has0", "acc7", "mae", "zeta"
    ]
    assert order_metrics(["corr", "acc2"], "sims") == ["acc2", "corr"]


# --------------------------------------------------------------------------- robustness


def test_robustness_summary_by_hand():
    per_rate = {
        0.5: [{"acc2": 0.6, "mae": 1.0}],
        0.0: [{"acc2": 0.8, "mae": 0.5}, {"acc2": 0.9, "mae": 0.7}],
    }
    s = robustness_summary(per_rate)
    assert s["rates"] == [0.0, 0.5]
    assert s["n_runs"] == {0.0: 2, 0.5: 1}
    assert s["per_rate"][0.0]["acc2"] == pytest.approx((0.85, math.sqrt(0.005)))
    assert s["per_rate"][0.5]["mae"] == (1.0, 0.0)
    # mean over rates of per-rate means: each rate counts once
    assert s["average"]["acc2"] == pytest.approx((0.85 + 0.6) / 2)
    assert s["average"]["mae"] == pytest.approx((0.6 + 1.0) / 2)


def test_robustness_summary_errors():
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        robustness_summary({1.5: [{"mae": 1.0}]})
    with pytest.raises(ValueError, match="rate 0.5 has no runs"):
        robustness_summary({0.0: [{"mae": 1.0}], 0.5: []})
    with pytest.raises(ValueError, match="missing rate 0.5 reports metrics"):
        robustness_summary({0.0: [{"mae": 1.0}], 0.5: [{"acc2": 1.0}]})
    with pytest.raises(ValueError, match="at least one missing rate"):
        robustness_summary({})


# --------------------------------------------------------------------------- results files


def test_to_jsonable():
    got = to_jsonable({0.1: (np.float32(0.5), np.int64(3)), "a": np.arange(2), 2: [None]})
    assert got == {"0.1": [0.5, 3], "a": [0, 1], "2": [None]}
    with pytest.raises(TypeError, match=r"results\.x: cannot write a set"):
        to_jsonable({"x": {1, 2}})


def test_write_results_round_trip(tmp_path):
    summary = robustness_summary(sweep())
    results = {
        "metric_set": "mosi",
        "leaderboard": {"student": summarize(RUNS), "single": {"mae": 0.8123456789}},
        "robustness": {"student": summary},
        "meta": {"checkpoint": tmp_path / "ckpt", "seeds": [0, 1, 2]},
        "cost": {"params_m": 23.5},
    }
    json_path, md_path = write_results(tmp_path / "out", results)
    text = json_path.read_text()
    data = json.loads(text)
    assert text == json.dumps(data, sort_keys=True, indent=2) + "\n"  # keys sorted
    assert data["leaderboard"]["single"]["mae"] == 0.8123456789  # floats as is
    assert data["leaderboard"]["student"]["acc2_non0"] == list(summarize(RUNS)["acc2_non0"])
    rob = data["robustness"]["student"]
    assert rob["rates"] == [0.0, 0.3, 0.6, 0.9]
    assert set(rob["per_rate"]) == {"0.0", "0.3", "0.6", "0.9"}
    assert rob["average"]["mae"] == summary["average"]["mae"]
    assert data["meta"]["checkpoint"] == str(tmp_path / "ckpt")

    md = md_path.read_text()
    assert "## Leaderboard" in md
    assert "| condition | acc2_non0 | f1_non0 | mae | corr |" in md  # a checkpoint's rows
    assert "| student | 82.0 ± 2.0 |" in md
    assert "### student" in md and "| missing rate |" in md and "| average |" in md
    assert "- **seeds**: [0, 1, 2]" in md
    assert "## cost" in md and '"params_m": 23.5' in md
    # what was read back renders the same
    assert robustness_variants(data["robustness"])["student"]["average"] == summary["average"]
    assert not list((tmp_path / "out").glob(".*.tmp*"))


def test_write_results_single_sweep_named_model(tmp_path):
    json_path, md_path = write_results(tmp_path, {"robustness": robustness_summary(sweep())})
    data = json.loads(json_path.read_text())
    assert list(data["robustness"]) == ["model"]
    assert data["robustness"]["model"]["rates"] == [0.0, 0.3, 0.6, 0.9]
    assert "### model" in md_path.read_text()


def test_one_seed_shows_no_spread(tmp_path):
    one = robustness_summary({0.0: [{"mae": 0.5}], 0.5: [{"mae": 0.9}]})
    table = robustness_table(one, ["mae"])
    assert "±" not in table and "| 0.5 | 0.900 |" in table
    assert means_only({"r": {"mae": (0.5, 0.0), "n": 3}}) == {"r": {"mae": 0.5, "n": 3}}
    _, md = write_results(tmp_path, {"leaderboard": {"a": {"mae": 0.5}}}, row_header="checkpoint")
    assert "| checkpoint | mae |" in md.read_text()


def test_write_results_nan_written_and_read_back(tmp_path):
    json_path, _ = write_results(tmp_path, {"leaderboard": {"x": {"acc2_non0": float("nan")}}})
    data = json.loads(json_path.read_text())
    assert math.isnan(data["leaderboard"]["x"]["acc2_non0"])


# --------------------------------------------------------------------------- plots


def png_ok(path) -> bool:
    return path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_robustness_curve_single(tmp_path):
    out = robustness_curve(robustness_summary(sweep()), out_path=tmp_path / "plots" / "r.png")
    assert out == tmp_path / "plots" / "r.png"
    assert png_ok(out)


def test_robustness_curve_several_variants_and_json(tmp_path):
    variants = {
        "distilled": robustness_summary(sweep()),
        "gold only": robustness_summary(sweep(base=0.8)),
    }
    out = robustness_curve(variants, ("acc2_non0", "mae"), out_path=tmp_path / "two.png")
    assert png_ok(out)
    # the section read back from results.json plots too
    json_path, _ = write_results(tmp_path, {"robustness": variants})
    data = json.loads(json_path.read_text())
    assert png_ok(robustness_curve(data["robustness"], out_path=tmp_path / "again.png"))


def test_robustness_curve_missing_metric(tmp_path):
    with pytest.raises(ValueError, match=r"lacks metric\(s\) \['corr'\]"):
        robustness_curve(robustness_summary(sweep()), ("corr",), out_path=tmp_path / "x.png")
