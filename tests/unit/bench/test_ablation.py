"""The ablation script's tables: means over seeds, and differences paired by seed."""

import pytest

from tests.support.paths import REPO as ROOT
from tests.support.paths import load_bench


@pytest.fixture(scope="module")
def ablation():
    return load_bench("ablation_mosi")


def run(seed: int, acc2: float, mae: float, lnln_acc2: float, minutes: float = 5.0):
    complete = {"acc2_non0": acc2, "f1_non0": acc2, "acc7": 0.4, "mae": mae, "corr": 0.7}
    robustness = {"ckpt": {"average": {"acc2_non0": lnln_acc2, "mae": mae + 0.3}}}
    return seed, {"leaderboard": {"complete": complete}, "robustness": robustness}, \
        {"epoch_seconds": minutes * 60}


def cells(md: str, label: str) -> list[str]:
    for line in md.splitlines():
        parts = [c.strip() for c in line.strip("|").split("|")]
        if parts[0] == label:
            return parts
    raise AssertionError(f"no row {label!r} in\n{md}")


def test_table_gives_mean_and_sample_std_over_seeds(ablation):
    rows = {"baseline": [run(1, 0.80, 0.90, 0.60), run(2, 0.82, 0.80, 0.62)]}
    md, csv = ablation.table(rows)
    row = cells(md, "baseline (gold labels)")
    assert row[1] == "2"
    assert row[2] == "81.0 ± 1.4"  # stdev([80, 82]) = sqrt(2)
    assert row[5] == "0.850 ± 0.071"
    assert row[7] == "61.0 ± 1.4"
    assert row[9] == "5.0 ± 0.0"
    assert csv.splitlines()[1].startswith('"baseline (gold labels)","2"')


def test_paired_table_subtracts_the_reference_seed_by_seed(ablation):
    # the variant is 1 point better than soft on each seed, though the seeds differ by 10
    rows = {"soft": [run(1, 0.70, 0.9, 0.6), run(2, 0.80, 0.8, 0.6), run(3, 0.75, 0.7, 0.6)],
            "msmix": [run(1, 0.71, 0.8, 0.65), run(2, 0.81, 0.7, 0.65)]}
    md = ablation.paired_table(rows)
    row = cells(md, "soft + MS-Mix")
    assert row[1] == "+ soft-label KD"
    assert row[2] == "2"  # seed 3 has no msmix run
    assert row[3] == "+1.0 ± 0.0"
    assert row[4] == "-0.100 ± 0.000"
    assert row[6] == "+5.0 ± 0.0"
    # soft's own reference (the baseline) is absent: no row, no error
    assert not any(line.startswith("| + soft-label KD |") for line in md.splitlines())


def test_every_reference_is_a_variant(ablation):
    assert set(ablation.REFERENCE) <= set(ablation.VARIANTS)
    assert set(ablation.REFERENCE.values()) <= set(ablation.VARIANTS)


def test_the_robust_recipe_is_the_measured_enhancement_row(ablation):
    """configs/distill/mosi_text_audio_robust.yaml quotes the "enhance" row's figures, so it
    must train what that row trained (fields only the prompted network reads aside)."""
    from students.rundir import flatten_config as _flat
    from workbench.config import DistillConfig, load_config, to_dict

    _, recipe, overrides = ablation.VARIANTS["enhance"]
    row = load_config(DistillConfig, ROOT / recipe, overrides)
    shipped = load_config(DistillConfig, ROOT / "configs/distill/mosi_text_audio_robust.yaml")

    a, b = _flat(to_dict(row)), _flat(to_dict(shipped))
    differ = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    assert not row.train.privileged.enabled
    assert differ <= {"train.output_dir", "train.privileged.epochs", "train.privileged.enabled",
                      "student.prompt_max_len"}


def test_cyin_table_averages_the_protocol_over_seeds(ablation):
    def with_cyin(seed, acc_t, mae_avg):
        s, res, timing = run(seed, 0.8, 0.9, 0.6)
        m = {"acc2_non0": acc_t, "mae": 1.0}
        res["cyin_protocol"] = {
            "fixed_subsets": {"t": m, "a": m, "t+a": m},
            "dataset_rate": {"average": {"acc2_non0": 0.7, "mae": mae_avg}},
            "instance_prob": {"average": {"acc2_non0": 0.75, "mae": 1.1}}}
        return s, res, timing

    rows = {"cyin": [with_cyin(1, 0.80, 1.2), with_cyin(2, 0.82, 1.4)],
            "soft": [run(1, 0.8, 0.9, 0.6)]}
    md = ablation.cyin_table(rows)
    row = cells(md, "soft + CyIN")
    assert row[1] == "2" and row[2] == "81.0 ± 1.4 / 1.000 ± 0.000"
    assert row[5] == "70.0 ± 0.0 / 1.300 ± 0.141"
    assert "+ soft-label KD" not in md  # a row without the protocol is left out
    assert ablation.cyin_table({"soft": rows["soft"]}) == ""
