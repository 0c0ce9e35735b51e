"""Domains: the synthetic generator's domains (vocabulary and feature shift), what
data.domain reads, train.holdout_domain, and MIDG's leave-one-domain-out protocol."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eval.domains import declared_domains, leave_one_domain_out
from eval.options import EvalError, EvalOptions
from students.trainer import _held_in
from tests.support.distill import distill_cfg
from workbench.config import ConfigError, DataConfig
from workbench.data import load_dataset
from workbench.data.domains import domain_names, sample_domain
from workbench.data.schema import DataError, Sample
from workbench.data.synth import SynthSpec, generate, write

pytestmark = pytest.mark.usefixtures("one_thread")


def test_synth_domains_differ_in_vocabulary_and_features():
    rows, feats = generate(SynthSpec(n=300, domains=3, seed=1))
    plain_rows, plain = generate(SynthSpec(n=300, seed=1))
    assert [r["label"] for r in rows] == [r["label"] for r in plain_rows]  # same latent
    assert "domain" not in plain_rows[0]
    by = {d: [r for r in rows if r["domain"] == d] for d in ("movies", "food", "gadgets")}
    assert all(len(v) == 100 for v in by.values())
    vocab = {d: {w for r in v for w in r["text"].split()} for d, v in by.items()}
    assert "soup" in vocab["food"] and "soup" not in vocab["movies"]
    assert vocab["food"] - vocab["gadgets"] and vocab["gadgets"] - vocab["food"]
    # feature shift: the domains' mean audio vectors are apart, the plain data's are not
    ids = list(feats["audio_ids"])
    dom = {r["id"]: r["domain"] for r in rows}
    means = {d: feats["audio"][[dom[i] == d for i in ids]].mean(0) for d in by}
    assert np.linalg.norm(means["food"] - means["movies"]) > 1.0
    with pytest.raises(ValueError):
        SynthSpec(domains=1)


def test_data_domain_specs():
    s = Sample(id="vid3_7", text="x", split="train", meta={"site": "a"})
    assert sample_domain(s, "", "mosi") == ""
    assert sample_domain(s, "name", "mosi") == "mosi"
    assert sample_domain(s, "column:site", "mosi") == "a"
    src = sample_domain(s, "source:3", "mosi")
    assert src in {"source0", "source1", "source2"}
    assert sample_domain(Sample(id="vid3_9", text="y", split="test"), "source:3", "m") == src
    with pytest.raises(DataError, match="column 'other'"):
        sample_domain(s, "column:other", "mosi")
    for bad in ("column:", "source:1", "speaker"):
        with pytest.raises(ConfigError, match="data.domain"):
            DataConfig(domain=bad)


@pytest.fixture(scope="module")
def domain_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("domains")
    manifest = write(root / "synth", SynthSpec(n=72, seed=2, domains=2, audio_dim=6,
                                               vision_dim=5))
    return root, {"name": "synth", "path": str(manifest),
                  "features": str(root / "synth/features.npz"),
                  "feature_keys": {"audio": "audio", "vision": "vision"},
                  "modalities": ["text", "audio", "vision"], "domain": "column:domain"}


def test_holdout_domain_removes_its_samples(domain_data):
    root, data = domain_data
    cfg = distill_cfg(root / "h", data, "train.holdout_domain=food")
    ds = load_dataset(cfg.data)
    train = ds.samples("train")
    kept = _held_in(cfg, ds.info, train, "train")
    assert kept and all(s.meta["domain"] == "movies" for s in kept)
    assert len(kept) == sum(s.meta["domain"] == "movies" for s in train)
    with pytest.raises(ConfigError, match="no train sample"):
        _held_in(distill_cfg(root / "h2", data, "train.holdout_domain=space"), ds.info, train,
                 "train")
    assert declared_domains(cfg) == ["food", "movies"]
    with pytest.raises(EvalError, match="needs domains"):
        declared_domains(distill_cfg(root / "h3", {**data, "domain": ""}))


def test_leave_one_domain_out_reports_each_held_out_domain(domain_data):
    root, data = domain_data
    cfg = distill_cfg(root / "lodo-run", data, "student.text_mode=frozen", "train.epochs=1",
                      "student.experts=midg", "student.midg.n_experts=2")
    out = root / "lodo"
    res = leave_one_domain_out(cfg, out, EvalOptions(split="test", cost=False, patterns=[],
                                                     device="cpu", batch_size=32))
    assert set(res["domains"]) == {"food", "movies"}
    test = load_dataset(cfg.data).samples("test")
    for d in ("food", "movies"):
        assert res["n_samples"][d] == sum(s.meta["domain"] == d for s in test)
        assert np.isfinite(res["domains"][d]["mae"])
        run_cfg = (out / d / "config.yaml").read_text()
        assert f"holdout_domain: {d}" in run_cfg
    mean, std = res["mean"]["mae"]
    vals = [res["domains"][d]["mae"] for d in ("food", "movies")]
    assert mean == pytest.approx(np.mean(vals)) and std == pytest.approx(np.std(vals, ddof=1))
    assert json.loads((out / "lodo.json").read_text())["domains"].keys() == {"food", "movies"}
    md = (out / "lodo.md").read_text()
    assert "held out: food" in md and "mean over domains" in md
    assert domain_names(test, "column:domain", "synth") == ["food", "movies"]
