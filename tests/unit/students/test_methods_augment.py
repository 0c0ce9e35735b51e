"""Teacher augmentation with quality-aware weights (train.augment): the weights
against a plain reference, `workbench data augment` on a tiny cache, the weights in a
training batch, and a whole tiny run with every method switched on."""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

import students.recipe as recipe_mod
from students.augment import augment_weights, histogram_text, load_augmented, weight_summary
from students.batching import TrainCollator
from students.collate import Collator, StudentItem
from students.objective import training_losses
from students.trainer import train
from tests.support.distill import distill_cfg, make_cache
from tests.support.paths import REPO
from tests.support.students import BINS, plan_for, tiny_student, train_items
from workbench.cache import CacheStore, JobSpec, TeacherOutput
from workbench.cli import app
from workbench.config import (
    ConfigError,
    DataConfig,
    DistillConfig,
    WeightingConfig,
    load_config,
)
from workbench.data import load_dataset
from workbench.data.augment import split_variant_id

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------- the weights


def ref_weight(p, off, exp, gold, sim, scale, floor):
    if p is None:
        conf = offf = 0.0
        agree = 1.0
    else:
        s = sum(p)
        q = [x / s for x in p]
        h = -sum(x * math.log(x) for x in q if x > 0) / math.log(len(q))
        conf, offf = 1 - h, 1 - off
        agree = 1.0 if math.isnan(gold) else min(1.0, max(0.0, 1 - abs(exp - gold) / scale))
    cons = min(1.0, max(0.0, sim))
    return floor + (1 - floor) * conf * offf * agree * cons


def test_augment_weights_match_reference_and_never_drop():
    nan = float("nan")
    rows = [([0.1, 0.8, 0.1], 0.05, 0.0, 0.2, 0.9),      # confident, agreeing, similar
            ([1 / 3, 1 / 3, 1 / 3], 0.0, 0.0, 0.0, 0.9),  # uniform: confidence 0
            ([0.0, 0.1, 0.9], 0.2, 0.9, -1.0, 0.7),       # disagrees with gold
            ([0.7, 0.2, 0.1], 0.0, -0.6, nan, -0.3),      # no gold; dissimilar rewrite
            (None, nan, nan, 1.0, 0.95)]                  # no teacher soft label
    probs = torch.tensor([r[0] if r[0] is not None else [nan] * 3 for r in rows])
    got = augment_weights(probs=probs, off_mass=torch.tensor([r[1] for r in rows]),
                          expected=torch.tensor([r[2] for r in rows]),
                          gold=torch.tensor([r[3] for r in rows]),
                          similarity=torch.tensor([r[4] for r in rows]),
                          agreement_scale=1.5, floor=0.1)
    ref = [ref_weight(*r, 1.5, 0.1) for r in rows]
    assert got.weight.tolist() == pytest.approx(ref, abs=1e-5)
    assert got.has_teacher.tolist() == [True, True, True, True, False]
    assert (got.weight >= 0.1 - 1e-6).all() and (got.weight <= 1).all()
    assert got.weight[4].item() == pytest.approx(0.1)  # no teacher: the floor, not dropped
    assert got.consistency[3].item() == 0.0


def test_histogram_and_summary():
    w = [0.1, 0.1, 0.55, 0.95, 1.0]
    text = histogram_text(w, bins=4, width=8)
    lines = text.splitlines()
    assert len(lines) == 4 and lines[-1].endswith("2") and lines[0].endswith(" 2")
    assert lines[0].startswith("[0.00, 0.25)") and lines[-1].startswith("[0.75, 1.00]")
    assert "########" in lines[0]
    s = weight_summary(w, floor=0.1)
    assert s["n"] == 5 and s["at_floor"] == pytest.approx(0.4)
    assert s["mean"] == pytest.approx(np.mean(w)) and s["median"] == pytest.approx(0.55)


# --------------------------------------------------------------- `workbench data augment`


def _data_cfg(data: dict) -> DataConfig:
    return load_config(DataConfig, None, [f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
                                          for k, v in data.items()])


def _paraphrase_cache(cache: Path, data: dict) -> dict:
    """A paraphrase job (2 variants of every train sample, one valid sample too) with ok,
    failed, empty and unanswered rows, put through the cache store API."""
    ds = load_dataset(_data_cfg(data))
    train_ids = [s.id for s in ds.iter_samples("train")]
    valid_id = next(s.id for s in ds.iter_samples("valid"))
    spec = JobSpec(template="paraphrase", template_version=1, template_hash="h",
                   uses_gold_label=False, output="text", teacher="fake@1", backend="hf_local",
                   decoding={}, data_name="synth", data_fingerprint=ds.fingerprint)
    texts = {s.id: s.text for s in ds.iter_samples()}
    fate: dict[str, str] = {}
    with CacheStore(cache) as store:
        job = store.register_job(spec)
        reqs = [(f"{sid}#{v}", "train", f"p_{sid}_{v}", {"prompt": sid, "messages": []})
                for sid in train_ids for v in range(2)]
        reqs.append((f"{valid_id}#0", "valid", f"p_{valid_id}_0", {"prompt": "v", "messages": []}))
        store.add_requests(job, reqs)
        for i, (sid, _, key, _) in enumerate(reqs):
            src = sid.split("#")[0]
            if i == 1:
                continue  # never answered
            if i % 7 == 3:
                store.put(TeacherOutput(key=key, status="server_error", error="503"))
                fate[sid] = "server_error"
            elif i == 5:
                store.put(TeacherOutput(key=key, status="ok", description='  ""  '))
                fate[sid] = "empty"
            else:
                rewrite = f'"In other words: {texts[src]}, variant {sid[-1]}"'
                store.put(TeacherOutput(key=key, status="ok", description=rewrite,
                                        created_at=time.time()))
                fate[sid] = "ok"
        fate[reqs[1][0]] = "pending"
    return {"ds": ds, "train_ids": train_ids, "fate": fate, "valid_id": valid_id}


def test_split_variant_id():
    train = {"a", "b#1"}
    assert split_variant_id("a#3", train) == ("a", 3)
    assert split_variant_id("a", train) == ("a", 0)
    assert split_variant_id("b#1", train) == ("b#1", 0)  # an id that has a '#' itself
    assert split_variant_id("c#1", train) is None and split_variant_id("a#x", train) is None


def test_data_augment_writes_a_manifest_dataset(tmp_path, data):
    cache = tmp_path / "cache"
    made = _paraphrase_cache(cache, data)
    src_yaml = tmp_path / "src.yaml"
    src_yaml.write_text(yaml.safe_dump({**data, "name": "synth"}))
    out = tmp_path / "aug"
    r = CliRunner().invoke(app, ["data", "augment", "--data", str(src_yaml), "--cache",
                                 str(cache), "--out", str(out)])
    assert r.exit_code == 0, r.output
    fate = made["fate"]
    ok = sorted(k for k, v in fate.items() if v == "ok" and not k.startswith(made["valid_id"]))
    report = json.loads((out / "augment_report.json").read_text())
    n_train = len(made["train_ids"])
    assert report["sources"] == n_train and report["requested"] == 2 * n_train
    assert report["written"] == len(ok) and report["not_train"] == 1
    assert report["skipped"] == {"pending": 1, "empty": 1, "server_error": sum(
        1 for k, v in fate.items() if v == "server_error" and not k.startswith(made["valid_id"]))}
    assert f"wrote {len(ok)} rewrites" in r.output
    with (out / "manifest.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["id"] for r in rows) == ok
    src = {s.id: s for s in made["ds"].iter_samples()}
    for row in rows:
        s = src[row["source_id"]]
        assert row["id"].startswith(s.id + "#") and row["split"] == "train"
        assert float(row["label"]) == pytest.approx(s.label)
        assert row["text"].startswith("In other words: " + s.text)  # quotes stripped
    # the written data config loads as a dataset with the sources' features
    acfg = load_config(DataConfig, out / "data.yaml")
    ads = load_dataset(acfg)
    assert ads.num_rows("train") == len(ok) and ads.splits == ["train"]
    for s in ads.iter_samples():
        source = src[s.meta["source_id"]]
        for m in ("audio", "vision"):
            if source.feature(m) is None:
                assert s.feature(m) is None
            else:
                assert np.array_equal(s.feature(m), source.feature(m))
    # trainer side: it belongs to this data...
    _, _, samples = load_augmented(out, made["ds"])
    assert len(samples) == len(ok)
    # ...and is refused for other data (same samples under other train ids)
    with pytest.raises(ConfigError, match="no source_id among this run's train samples"):
        load_augmented(out, _renamed_train(made["ds"]))
    r = CliRunner().invoke(app, ["data", "augment", "--data", str(src_yaml), "--cache",
                                 str(cache), "--out", str(out)])
    assert r.exit_code == 2 and "not empty" in r.output
    r = CliRunner().invoke(app, ["data", "augment", "--data", str(src_yaml), "--cache",
                                 str(cache), "--out", str(tmp_path / "x"), "--template",
                                 "context_aware"])
    assert r.exit_code == 2 and "no job for template='context_aware'" in r.output


def _renamed_train(ds):
    from dataclasses import replace

    from workbench.data import MSADataset

    samples = [replace(s, id=f"other_{s.id}") if s.split == "train" else s for s in ds.samples()]
    return MSADataset.from_samples(samples, ds.info)


# ------------------------------------------------------------ weights in a training step


def test_augmented_items_carry_their_fixed_weights_into_the_loss():
    model = tiny_student(text_mode="frozen")
    items = train_items()
    aug = [StudentItem(it.sample, it.teacher) for it in items[:3]]
    for k, it in enumerate(aug):
        it.sample = type(it.sample)(**{**it.sample.__dict__, "id": f"{it.sample.id}#{k}"})
    fixed = {aug[0].sample.id: 0.1, aug[1].sample.id: 0.5, aug[2].sample.id: 1.0}
    quality = WeightingConfig(enabled=True)
    coll = TrainCollator(Collator.for_model(model), weighting=quality, item_weights=fixed)
    batch = coll(items + aug)
    base = TrainCollator(Collator.for_model(model), weighting=quality)(items + aug)
    assert batch["weights"][-3:].tolist() == pytest.approx([0.1, 0.5, 1.0])
    assert torch.equal(batch["weights"][:8], base["weights"][:8])  # originals untouched
    plan = plan_for(load_config(DistillConfig), soft_labels=True, privileged=False)
    with torch.no_grad():
        a = training_losses(model, batch, plan, model.bins)["task"]
        b = training_losses(model, base, plan, model.bins)["task"]
    assert torch.isfinite(a) and a.item() != pytest.approx(b.item())
    # no weighting at all: augmented rows still get theirs, originals 1
    plain = TrainCollator(Collator.for_model(model), item_weights=fixed)(items + aug)
    assert plain["weights"].tolist() == pytest.approx([1.0] * 8 + [0.1, 0.5, 1.0])


def test_augment_needs_a_soft_label_cache():
    with pytest.raises(ConfigError, match="train.augment.data='x' is invalid"):
        load_config(DistillConfig, None, ["train.augment.data=x"])


# --------------------------------------------------- a tiny run with every method switched on


def test_a_run_with_augmentation_msmix_conflict_and_enhancement(tmp_path, data, monkeypatch):
    cache = tmp_path / "cache"
    _paraphrase_cache(cache, data)
    make_cache(cache, data, "sentiment_score", splits=["train"])
    src_yaml = tmp_path / "src.yaml"
    src_yaml.write_text(yaml.safe_dump({**data, "name": "synth"}))
    aug = tmp_path / "aug"
    assert CliRunner().invoke(app, ["data", "augment", "--data", str(src_yaml), "--cache",
                                    str(cache), "--out", str(aug)]).exit_code == 0
    # the second teacher pass: soft labels on the rewrites, into the same cache
    acfg = yaml.safe_load((aug / "data.yaml").read_text())
    make_cache(cache, {k: v for k, v in acfg.items() if v not in ("", [], {})},
               "sentiment_score")
    seen_valid: list[str] = []
    real_validate = recipe_mod.validate

    def spy_validate(model, loader, accelerator, info, *rest):
        for batch in loader:
            seen_valid.extend(batch["ids"])
        return real_validate(model, loader, accelerator, info, *rest)

    monkeypatch.setattr(recipe_mod, "validate", spy_validate)
    out = tmp_path / "run"
    cfg = distill_cfg(out, data, f"signals.cache_dir={cache}", f"train.augment.data={aug}",
                      "train.msmix.enabled=true", "train.msmix.threshold=-1",
                      "train.conflict=true", "student.enhance.enabled=true",
                      "student.enhance.k=2", "student.enhance.bank=32",
                      "student.text_mode=frozen", "train.missing=true",
                      "train.epochs=1", "loss.unimodal_aux=0.1")
    best = train(cfg)
    # weights saved, one per written rewrite, within [floor, 1]
    with (out / "augment_weights.csv").open() as f:
        rows = list(csv.DictReader(f))
    n_aug = json.loads((aug / "augment_report.json").read_text())["written"]
    assert len(rows) == n_aug
    w = np.array([float(r["weight"]) for r in rows])
    assert ((w >= 0.1 - 1e-6) & (w <= 1.0)).all() and w.std() > 0
    sims = np.array([float(r["similarity"]) for r in rows])
    assert np.allclose([float(r["consistency"]) for r in rows], np.clip(sims, 0, 1), atol=1e-6)
    # validation never saw an augmented sample
    assert seen_valid and not any("#" in i for i in seen_valid)
    # the loop ran every method's terms
    state = json.loads((out / "last" / "trainer_state.json").read_text())
    logged = set(state["history"][0]["train"])
    assert {"msmix", "msmix_kl", "msmix_intensity", "conflict", "statistical"} <= logged
    assert all(math.isfinite(v) for v in state["history"][0]["train"].values())
    # the checkpoint: no training-only heads, the memory bank, the augmentation recorded
    from safetensors.torch import load_file

    from students.checkpoint import load_checkpoint

    keys = load_file(str(best / "model.safetensors"))
    assert not [k for k in keys if k.startswith("methods.msmix.")]
    assert keys["methods.enhance.bank_filled"].item() > 0
    model, _, meta = load_checkpoint(best)
    assert "msmix" not in model.methods and model.methods["enhance"].filled > 0
    assert meta.teacher_manifest["augment"]["samples"] == n_aug
    assert meta.bins == BINS


def test_each_method_is_one_override_on_the_mosi_recipe():
    import re

    recipe = REPO / "configs/distill/mosi_text_audio.yaml"
    listed = re.findall(r"\.{3,} ((?:train|student)\.[a-z_.]+=\S+)", recipe.read_text())
    methods = {o.split("=")[0]: o for o in listed}
    keys = ("train.augment.data", "train.msmix.enabled", "train.conflict.enabled",
            "student.enhance.enabled")
    assert set(keys) <= set(methods)
    base = load_config(DistillConfig, recipe)
    assert not (base.train.augment.enabled or base.train.msmix.enabled
                or base.train.conflict.enabled or base.student.enhance.enabled)
    for key in keys:
        cfg = load_config(DistillConfig, recipe, [methods[key]])
        section, name, _ = key.split(".")
        assert getattr(getattr(cfg, section), name).enabled
