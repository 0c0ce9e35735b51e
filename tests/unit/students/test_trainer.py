"""The trainer's parts: data order, loss plan, collation for the plain student, a training
step, selection rules, and the checks that refuse to start a run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from students.batching import EpochSampler, PrivilegedTarget, TrainCollator
from students.collate import Collator
from students.objective import compute_losses
from students.privileged import privileged_targets
from students.recipe import selection_mode
from students.trainer import TrainError, train
from tests.support.distill import distill_cfg, make_cache, tiny_data
from tests.support.paths import LEGACY_CONFIG
from tests.support.students import BINS, plan_for, tiny_info, tiny_student, train_items
from workbench.cache.store import CacheError
from workbench.config import ConfigError, DistillConfig, WeightingConfig, load_config
from workbench.data import load_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- sampler


def test_epoch_sampler_order_depends_only_on_seed_and_epoch():
    a, b = EpochSampler(50, seed=3), EpochSampler(50, seed=3)
    a.set_epoch(4)
    b.set_epoch(4)
    assert list(a) == list(b) and sorted(a) == list(range(50))
    b.set_epoch(5)
    assert list(a) != list(b)
    c = EpochSampler(50, seed=4)
    c.set_epoch(4)
    assert list(a) != list(c)


def test_epoch_sampler_groups_by_length_with_the_short_batch_last():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 60, size=53).tolist()
    s = EpochSampler(53, seed=1, lengths=lengths, batch_size=8, group=3)
    s.set_epoch(2)
    order = list(s)
    assert sorted(order) == list(range(53))
    batches = [order[i:i + 8] for i in range(0, 53, 8)]
    assert len(batches[-1]) == 53 % 8
    # within each batch, lengths are sorted (they came from one sorted group)
    for bt in batches[:-1]:
        ls = [lengths[i] for i in bt]
        assert ls == sorted(ls, reverse=True)
    s2 = EpochSampler(53, seed=1, lengths=lengths, batch_size=8, group=3)
    s2.set_epoch(2)
    assert list(s2) == order
    # padding shrinks against random batches
    rand = EpochSampler(53, seed=1)
    rand.set_epoch(2)
    ro = list(rand)

    def pad(o):
        return sum(max(lengths[i] for i in o[j:j + 8]) * len(o[j:j + 8]) for j in range(0, 53, 8))

    assert pad(order) < pad(ro)


# ---------------------------------------------------------------------- model and step


@pytest.fixture(scope="module")
def student():
    return tiny_student()


def test_a_training_step_reduces_the_loss(student, data):
    cfg = load_config(DistillConfig, None, ["loss.unimodal_aux=0.3"])
    plan = plan_for(cfg, soft_labels=True, privileged=False)
    assert plan.soft_kd > 0 and plan.expected > 0 and plan.unimodal_aux == pytest.approx(0.3)
    coll = TrainCollator(Collator.for_model(student), weighting=WeightingConfig(enabled=True))
    batch = coll(train_items())
    assert batch["weights"].shape == (8,) and (batch["weights"] > 0).all()
    opt = torch.optim.AdamW(student.param_groups(3e-3, 1e-3, 0.0))
    student.train()
    losses = []
    for _ in range(12):
        out = student(batch)
        parts = compute_losses(out, batch, plan, student.bins)
        assert set(parts) == {"task", "unimodal", "soft_kd", "expected", "total"}
        opt.zero_grad()
        parts["total"].backward()
        opt.step()
        losses.append(float(parts["total"].detach()))
    assert losses[-1] < 0.8 * losses[0]


def test_total_is_the_weighted_sum_of_the_terms(student):
    cfg = load_config(DistillConfig, None, [
        "loss.soft_label_kd=0.7", "loss.expected_score=0.2", "train.privileged.pred_weight=0.5",
        "train.privileged.repr_weight=0.3", "train.privileged.attn_weight=0.4",
        "loss.unimodal_aux=0.1"])
    plan = plan_for(cfg, soft_labels=True, privileged=True)
    items = train_items()
    student.eval()
    with torch.no_grad():
        ref = student(Collator.for_model(student)(items), return_attention=True)
    n_tok = Collator.for_model(student)(items)["attention_mask"].sum(1).tolist()
    priv = {it.sample.id: PrivilegedTarget(
        pred=ref.pred[b] + 0.5, fused=ref.fused[b].flip(0),
        attention={m: ref.attention[f"text_to_{m}"][b, :, :int(n_tok[b])] for m in ("audio", "vision")})
        for b, it in enumerate(items)}
    batch = TrainCollator(Collator.for_model(student), privileged=priv)(items)
    with torch.no_grad():
        out = student(batch, return_attention=True)
        parts = compute_losses(out, batch, plan, student.bins)
    w = {"task": 1.0, "unimodal": 0.1, "soft_kd": 0.7, "expected": 0.2, "priv_pred": 0.5,
         "priv_repr": 0.3, "priv_attn": 0.4}
    assert set(parts) == set(w) | {"total"}
    assert float(parts["total"]) == pytest.approx(sum(w[k] * float(parts[k]) for k in w), rel=1e-5)
    assert float(parts["priv_pred"]) == pytest.approx(0.5, abs=1e-4)  # pred offset by 0.5
    assert float(parts["priv_attn"]) == pytest.approx(0.0, abs=1e-5)  # same maps


def test_plain_batches_carry_no_descriptions_and_pad_privileged_attention(student):
    prompted = tiny_student(prompted=True)
    items = train_items(description=True)
    targets = privileged_targets(prompted, items, batch_size=3, with_attention=True)
    assert set(targets) == {it.sample.id for it in items}
    batch = TrainCollator(Collator.for_model(student), privileged=targets)(items)
    assert "descriptions" not in batch
    length = batch["attention_mask"].shape[1]
    for m in ("audio", "vision"):
        a = batch["priv_attn"][m]
        assert a.shape == (8, 2, length, 2)
        # rows beyond a sample's real tokens are zero padding
        for b in range(8):
            n = int(batch["attention_mask"][b].sum())
            assert torch.allclose(a[b, :, :n].sum(-1), torch.ones(2, n), atol=1e-5)
            assert (a[b, :, n:] == 0).all()
    kept = TrainCollator(Collator.for_model(prompted), drop_descriptions=False)(items)
    assert kept["descriptions"][0].startswith(("the speaker", "sad"))


# -------------------------------------------------------------------------- selection


def test_selection_direction_comes_from_the_metric():
    info = tiny_info()
    assert selection_mode(load_config(DistillConfig).train, info) == ("mae", "min")
    cfg = load_config(DistillConfig, None, ["train.select_metric=valid_acc2_non0"])
    assert selection_mode(cfg.train, info) == ("acc2_non0", "max")
    bad = load_config(DistillConfig, None, ["train.select_metric=valid_acc7",
                                            "train.select_mode=min"])
    with pytest.raises(ConfigError, match="train.select_mode='min'.*set train.select_mode=auto"):
        selection_mode(bad.train, info)
    with pytest.raises(ConfigError, match="valid_f1_macro.*metric set 'mosi'"):
        selection_mode(load_config(DistillConfig, None,
                                   ["train.select_metric=valid_f1_macro"]).train, info)
    with pytest.raises(ConfigError, match="validation split only"):
        load_config(DistillConfig, None, ["train.select_metric=test_mae"])


@pytest.mark.parametrize("overrides,needle", [
    (["train.privileged.enabled=true"],
     "signals.cache_dir='' is invalid: train.privileged.enabled=true"),
    (["train.weighting=true"], "train.weighting.enabled=True is invalid: quality weights"),
    (["train.task_loss=ce"], "train.task_loss='ce' is invalid: use l1 or mse"),
    (["train.privileged.checkpoint=x"], "train.privileged.checkpoint='x' is invalid"),
    (["signals.cache_dir=c", "train.privileged=true", "student.prompted=true"],
     "student.prompted=True is invalid"),
    (["loss.temperature=0"], "loss.temperature=0.0 is invalid"),
    (["loss.soft_label_kd=-1"], "loss.soft_label_kd=-1.0 is invalid"),
])
def test_config_cross_field_checks(overrides, needle):
    with pytest.raises(ConfigError) as e:
        load_config(DistillConfig, None, overrides)
    assert needle in str(e.value)


# ------------------------------------------------------------------ refusals to start


def test_refuses_a_missing_cache(tmp_path, data):
    cfg = distill_cfg(tmp_path / "run", data, f"signals.cache_dir={tmp_path / 'nowhere'}")
    with pytest.raises(CacheError, match="no teacher cache there.*signals.cache_dir=''"):
        train(cfg)


def test_refuses_a_cache_made_from_other_data(tmp_path, cache):
    other = tiny_data(tmp_path / "other", n=48, seed=5)
    cfg = distill_cfg(tmp_path / "run", other, f"signals.cache_dir={cache}")
    fp = load_dataset(cfg.data).fingerprint
    with pytest.raises(CacheError) as e:
        train(cfg)
    msg = str(e.value)
    assert "made from other data" in msg and fp in msg and "soft_label_template" in msg
    assert not (tmp_path / "run" / "checkpoint-best").exists()


def test_refuses_too_few_ok_rows(tmp_path, data):
    cache = tmp_path / "flaky"
    make_cache(cache, data, "sentiment_score", fail_every=2)
    cfg = distill_cfg(tmp_path / "run", data, f"signals.cache_dir={cache}")
    n_train = load_dataset(cfg.data).num_rows("train")
    with pytest.raises(CacheError) as e:
        train(cfg)
    msg = str(e.value)
    assert f"of {n_train} samples" in msg and "min_ok_fraction=90%" in msg
    # the threshold is a config field
    cfg = distill_cfg(tmp_path / "run2", data, f"signals.cache_dir={cache}",
                      "signals.min_ok_fraction=0.99", "train.epochs=1")
    with pytest.raises(CacheError, match="min_ok_fraction=99%"):
        train(cfg)


def test_refuses_gold_label_descriptions_for_valid_samples(tmp_path, data, cache):
    make_cache(cache, data, "context_aware_gold", splits=["train", "valid"])
    cfg = distill_cfg(tmp_path / "run", data, f"signals.cache_dir={cache}",
                      "train.privileged.enabled=true",
                      "signals.description_template=context_aware_gold")
    with pytest.raises(CacheError, match="showed the gold label.*\\['valid'\\]"):
        train(cfg)


def test_refuses_a_template_of_the_wrong_kind(tmp_path, data, cache):
    cfg = distill_cfg(tmp_path / "run", data, f"signals.cache_dir={cache}",
                      "signals.soft_label_template=context_aware")
    with pytest.raises(CacheError, match="produced 'description' outputs.*need 'soft_label'"):
        train(cfg)


def test_refuses_an_output_dir_holding_a_run_and_a_resume_without_one(tmp_path, data):
    out = tmp_path / "run"
    (out / "checkpoint-best").mkdir(parents=True)
    with pytest.raises(TrainError, match="already holds a run.*--resume.*train.overwrite=true"):
        train(distill_cfg(out, data))
    with pytest.raises(TrainError, match="holds no run to continue"):
        train(distill_cfg(tmp_path / "fresh", data), resume=True)


def test_resume_accepts_fields_added_since_the_run_started_only_at_their_default(tmp_path, data):
    import yaml

    from students.rundir import prepare_output_dir
    from workbench.config import to_dict

    out = tmp_path / "run"
    out.mkdir()
    cfg = distill_cfg(out, data)
    saved = to_dict(cfg)
    del saved["train"]["msmix"]  # a run whose config has no msmix section
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    prepare_output_dir(cfg, out, True, None)  # msmix at its defaults: nothing changed
    cfg.train.msmix.enabled = True
    with pytest.raises(TrainError, match=r"config differs.*train\.msmix\.enabled: False -> True"):
        prepare_output_dir(cfg, out, True, None)


def test_resume_reads_a_run_with_flat_method_keys(tmp_path):
    """A run whose config.yaml has flat method keys
    (train.msmix_alpha, loss.conflict_tau, student.enhance_k, ...) resumes with the same
    config; a real change is still refused."""
    import shutil

    from students.rundir import prepare_output_dir

    legacy = LEGACY_CONFIG
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(legacy, out / "config.yaml")
    cfg = load_config(DistillConfig, legacy)
    prepare_output_dir(cfg, out, True, None)
    cfg.train.conflict.tau = 2.0
    with pytest.raises(TrainError, match=r"train\.conflict\.tau: 1\.2 -> 2\.0"):
        prepare_output_dir(cfg, out, True, None)
    (out / "config.yaml").write_text("train:\n  no_such_field: 1\n")
    with pytest.raises(TrainError, match="does not load here.*no_such_field"):
        prepare_output_dir(cfg, out, True, None)


def test_refuses_unlabelled_valid_samples():
    from students.trainer import _check_labels
    from workbench.data import DataError
    from workbench.data.schema import Sample

    samples = [Sample(id=f"v{i}", text="t", split="valid", label=None if i else 1.0)
               for i in range(3)]
    _check_labels(samples[:1], tiny_info(), "valid")
    with pytest.raises(DataError, match=r"2 of 3 'valid' samples of 'tiny' have no label "
                                        r"\(e\.g\. \['v1', 'v2'\]\); validation metrics need "
                                        "every label"):
        _check_labels(samples, tiny_info(), "valid")


class _OneProcess:
    """The part of an accelerator the run directory uses, for one process."""

    is_main_process = True

    def __init__(self) -> None:
        self.barriers = 0

    def wait_for_everyone(self) -> None:
        self.barriers += 1

    def save_state(self, path: str) -> None:
        from pathlib import Path

        (Path(path) / "model.safetensors").write_text("state")


def test_overwrite_clears_the_run_and_every_leftover_sibling(tmp_path, data):
    from students.rundir import RUN_SUBDIRS, prepare_output_dir
    from workbench.io import old_path, temp_dir

    out = tmp_path / "run"
    cfg = distill_cfg(out, data, "train.overwrite=true")
    out.mkdir()
    (out / "config.yaml").write_text("x: 1\n")
    (out / "notes.txt").write_text("not the run's")
    for d in RUN_SUBDIRS:
        # the folder, the atomic-directory helpers' leftovers, and older runs' siblings
        for p in (out / d, temp_dir(out / d), old_path(out / d), out / f"{d}.tmp",
                  out / f"{d}.old"):
            p.mkdir()
            (p / "f").write_text("x")
    acc = _OneProcess()
    prepare_output_dir(cfg, out, False, acc)
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and acc.barriers == 1


def test_save_last_swaps_the_state_in_whole_and_leaves_no_temporaries(tmp_path):
    from students.rundir import STATE_FILE, TrainState, save_last
    from workbench.io import temp_dir

    last = tmp_path / "last"
    temp_dir(last).mkdir()  # what a save that crashed left
    (temp_dir(last) / "stale").write_text("x")
    acc = _OneProcess()
    save_last(acc, last, TrainState(epochs_done=1))
    save_last(acc, last, TrainState(epochs_done=2, history=[{"epoch": 2}]))
    assert [p.name for p in tmp_path.iterdir()] == ["last"]
    assert sorted(p.name for p in last.iterdir()) == ["model.safetensors", STATE_FILE]
    assert TrainState.load(last / STATE_FILE) == TrainState(epochs_done=2,
                                                            history=[{"epoch": 2}])
    assert acc.barriers == 4  # every rank saves into the one temporary, between barriers


def test_tensorboard_tracking_says_what_is_missing(tmp_path, data):
    from accelerate.utils import is_tensorboard_available

    if is_tensorboard_available():
        pytest.skip("tensorboard is installed here")
    with pytest.raises(TrainError, match="needs the tensorboard package.*train.log_with=none"):
        train(distill_cfg(tmp_path / "run", data, "train.log_with=tensorboard"))


# ------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("mode", ["full", "frozen"])
def test_checkpoint_roundtrip_in_full_and_frozen_text_modes(tmp_path, mode):
    from students.checkpoint import load_checkpoint, save_checkpoint

    model = tiny_student(text_mode=mode)
    with torch.no_grad():  # move the weights a checkpoint holds away from their init
        for name, p in model.named_parameters():
            if mode == "full" or not name.startswith("text.model."):
                p.add_(0.01 * torch.randn_like(p))
    cfg = load_config(DistillConfig, None, [f"student.text_mode={mode}", "student.hidden=16",
                                            "student.heads=2", "student.bottleneck_tokens=2",
                                            "student.max_text_len=16", "student.lora.r=2",
                                            "student.lora.alpha=4", "student.dropout=0.0",
                                            "student.prompt_max_len=16"])
    with pytest.raises(ValueError, match="validation split only"):
        save_checkpoint(model, cfg, tmp_path / "bad", selection={"split": "test"},
                        teacher_manifest={})
    sel = {"split": "valid", "metric": "valid_mae", "epoch": 1, "value": 0.5}
    path = save_checkpoint(model, cfg, tmp_path / "ckpt", selection=sel, teacher_manifest={})
    assert (path / "text_encoder.safetensors").is_file() == (mode == "full")
    assert not (path / "adapter").exists()
    loaded, _, meta = load_checkpoint(path)
    items = train_items()
    model.eval()
    batch = Collator.for_model(model)(items)
    with torch.no_grad():
        a, b = model(batch).pred, loaded(batch).pred
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert meta.bins == BINS and meta.selection == sel
