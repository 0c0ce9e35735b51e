"""Protocol guards on fabricated selection.json / teacher_manifest.json contents."""

from __future__ import annotations

import copy

import pytest

from eval.protocol import ProtocolError, check_protocol, iter_jobs

SELECTION = {"split": "valid", "metric": "valid_mae", "mode": "min", "epoch": 3,
             "value": 0.81, "metrics": {"valid_mae": 0.81}, "stage": "student"}


def job(template: str = "sentiment_score", gold: bool = False, splits=("train",)) -> dict:
    entry = {"cache_dir": "/nowhere", "ok": 10, "samples": 10,
             "job": {"job": f"j-{template}", "template": template, "uses_gold_label": gold,
                     "teacher": "t@1"}}
    if splits is not None:
        entry["splits"] = list(splits)
    return entry


def manifest(soft=None, desc=None, privileged=None, gold=None) -> dict:
    found = [e for e in (soft, desc) if e and e["job"]["uses_gold_label"]]
    return {"soft_labels": soft, "descriptions": desc,
            "uses_gold_label": bool(found) if gold is None else gold, "privileged": privileged}


def test_clean_checkpoint_passes_and_states_its_selection():
    out = check_protocol(SELECTION, manifest(job()), "test", "ck")
    assert out["selection"].startswith("selected on the 'valid' split by valid_mae (min) at "
                                       "epoch 3 = 0.8100")
    assert out["selection_record"]["split"] == "valid"
    assert out["gold_label_jobs"] == [] and out["trained_on_split"] is False
    assert "train only" in out["assumptions"][0]


def test_reporting_the_selection_split_is_refused():
    with pytest.raises(ProtocolError, match=r"selected on the 'valid' split.*--split test"):
        check_protocol(SELECTION, manifest(), "valid", "ck")
    sel = {**SELECTION, "split": "test"}
    with pytest.raises(ProtocolError, match="selected on the 'test' split"):
        check_protocol(sel, manifest(), "test", "ck")


def test_selection_without_a_split_is_refused():
    sel = {k: v for k, v in SELECTION.items() if k != "split"}
    with pytest.raises(ProtocolError, match="records no 'split'"):
        check_protocol(sel, manifest(), "test", "ck")


def test_gold_label_job_on_train_only_is_accepted_and_recorded():
    m = manifest(job("label_hint", gold=True, splits=["train"]))
    out = check_protocol(SELECTION, m, "test", "ck")
    assert out["gold_label_jobs"] == [{"where": "soft_labels", "job": "j-label_hint",
                                       "template": "label_hint", "splits": ["train"]}]


@pytest.mark.parametrize(("splits", "split", "pattern"), [
    (["train", "test"], "test", "including the 'test' split being reported"),
    (["train", "valid"], "test", "allowed for train samples only"),
    (["train"], "train", "including the 'train' split"),
    (None, "test", "records no 'splits'"),
])
def test_gold_label_jobs_beyond_train_are_refused(splits, split, pattern):
    m = manifest(desc=job("context_gold", gold=True, splits=splits))
    with pytest.raises(ProtocolError, match=pattern) as err:
        check_protocol(SELECTION, m, split, "runs/x/checkpoint-best")
    assert "teacher_manifest.json" in str(err.value) and "descriptions" in str(err.value)


def test_privileged_network_is_checked_too():
    inner = manifest(desc=job("context_gold", gold=True, splits=["train", "valid"]))
    priv = {"checkpoint": "runs/x/prompted", "selection": SELECTION, "teacher_manifest": inner,
            "kind": "prompted"}
    m = manifest(job(), privileged=priv)
    assert [w for w, _ in iter_jobs(m)] == ["soft_labels",
                                             "privileged.teacher_manifest.descriptions"]
    with pytest.raises(ProtocolError, match="privileged.teacher_manifest.descriptions"):
        check_protocol(SELECTION, m, "test", "ck")
    clean = copy.deepcopy(priv)
    clean["teacher_manifest"] = manifest(desc=job("context_aware"))
    out = check_protocol(SELECTION, manifest(job(), privileged=clean), "test", "ck")
    assert "privileged_selection" in out
    clean["selection"] = {**SELECTION, "split": "test"}
    with pytest.raises(ProtocolError, match="privileged network runs/x/prompted"):
        check_protocol(SELECTION, manifest(privileged=clean), "test", "ck")


def test_inconsistent_gold_flag_is_refused():
    with pytest.raises(ProtocolError, match="inconsistent"):
        check_protocol(SELECTION, manifest(job(), gold=True), "test", "ck")


def test_damaged_manifest_entry_is_refused():
    with pytest.raises(ProtocolError, match="damaged"):
        check_protocol(SELECTION, {"soft_labels": "oops"}, "test", "ck")


def test_train_split_is_flagged_not_refused():
    out = check_protocol(SELECTION, manifest(job()), "train", "ck")
    assert out["trained_on_split"] is True
