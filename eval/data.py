"""The data a checkpoint is evaluated on, and the checks it must pass first.

The data is the checkpoint's own training data config (``config.yaml``'s ``data``
section) unless another is given (:func:`load_data`, which reuses a dataset already loaded
for the same config); either must be the dataset the checkpoint was trained on: same
fingerprint, task, metric set and feature dims as its ``data_info.json``
(:func:`check_data_matches`). The evaluated split must exist and every sample of it be
labelled (:func:`split_samples`); :func:`eval_items` adds the teacher's descriptions for a
prompted network, and :func:`labels_of` gives the gold labels the metrics compare against.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from eval.options import EvalError
from students.checkpoint import CONFIG_FILE, DATA_INFO_FILE, CheckpointMeta
from students.collate import StudentItem, TeacherSignal
from workbench.cache.join import teacher_view
from workbench.cache.store import DB_FILE, CacheError
from workbench.config import DataConfig, to_dict
from workbench.data import DataError, MSADataset, load_dataset, require_labels
from workbench.data.schema import Sample
from workbench.data.store import DataInfo

log = logging.getLogger(__name__)


def check_data_matches(trained: DataInfo, ds: MSADataset, source: str, where: Path) -> None:
    """Refuse data other than the checkpoint's training data (fingerprint, task, features)."""
    have = ds.info
    problems = []
    for name in ("task", "metric_set"):
        if getattr(trained, name) != getattr(have, name):
            problems.append(f"{name} {getattr(have, name)!r} (checkpoint: "
                            f"{getattr(trained, name)!r})")
    for m, dim in trained.feature_dims.items():
        if m not in trained.modalities:
            continue  # in the data, but the checkpoint does not read it (e.g. a text-only student)
        if m not in have.feature_dims or m not in have.modalities:
            problems.append(f"no {m} features (checkpoint: {m} d={dim})")
        elif have.feature_dims[m] != dim or have.feature_kind.get(m) != trained.feature_kind.get(m):
            problems.append(f"{m} {have.feature_kind.get(m)} d={have.feature_dims[m]} "
                            f"(checkpoint: {trained.feature_kind.get(m)} d={dim})")
    if trained.fingerprint and have.fingerprint != trained.fingerprint:
        problems.append(f"fingerprint {have.fingerprint} (checkpoint: {trained.fingerprint})")
    if problems:
        raise EvalError(
            f"--data {source} is not the dataset checkpoint {where} was trained on "
            f"({trained.name!r} per its {DATA_INFO_FILE}): the data has "
            f"{'; '.join(problems)}. Evaluate on the data it was trained on: leave --data out "
            f"to use the data section of its {CONFIG_FILE}, or pass that data's config")


def _data_key(cfg: DataConfig) -> str:
    return json.dumps(to_dict(cfg), sort_keys=True, default=str)


def load_data(cfg: DataConfig, source: str, where: Path,
              cache: dict[str, MSADataset] | None = None) -> MSADataset:
    """The dataset ``cfg`` names (reused from ``cache`` when the same config was loaded)."""
    key = _data_key(cfg)
    if cache is not None and key in cache:
        return cache[key]
    try:
        ds = load_dataset(cfg)
    except (DataError, OSError) as e:
        hint = ("" if source != "checkpoint" else
                f" (the data section of {where / CONFIG_FILE}; relative paths are read from "
                f"the current directory {os.getcwd()}: run from where the training ran, or "
                "pass --data)")
        raise EvalError(f"cannot load the evaluation data{hint}: {e}") from None
    if cache is not None:
        cache[key] = ds
    return ds


def split_samples(ds: MSADataset, split: str, info: DataInfo) -> list[Sample]:
    """The samples of ``split``, every one labelled.

    Raises :class:`EvalError` naming the splits the data has when ``split`` is absent or
    empty, and :class:`workbench.data.DataError` (:func:`workbench.data.require_labels`)
    when a sample has no label."""
    present = {s: ds.num_rows(s) for s in ds.splits}
    if split not in present or present[split] == 0:
        raise EvalError(f"split {split!r} is not in dataset {ds.info.name!r} (it has "
                        f"{present}); choose one of those with --split, or map split names "
                        "in the data config (split_names)")
    samples = ds.samples(split)
    require_labels(samples, info.task, dataset=ds.info.name, split=split,
                   why="metrics need every label")
    return samples


def train_samples(ds: MSADataset, why: str) -> list[Sample]:
    """The train split, every sample labelled (``why`` it is needed goes into the errors)."""
    if "train" not in ds.splits or ds.num_rows("train") == 0:
        raise EvalError(f"dataset {ds.info.name!r} has no train split (it has "
                        f"{ {s: ds.num_rows(s) for s in ds.splits} }); {why}. Map split names "
                        "in the data config (split_names) or use data with a train split")
    samples = ds.samples("train")
    require_labels(samples, ds.info.task, dataset=ds.info.name, split="train",
                   why=f"{why}, with its labels")
    return samples


def labels_of(samples: Sequence[Sample], info: DataInfo) -> np.ndarray:
    """Gold labels: scores (regression) or class ids (classification)."""
    if info.task == "classification":
        return np.array([s.label_class for s in samples], dtype=np.int64)
    return np.array([s.label for s in samples], dtype=np.float64)


def eval_items(meta: CheckpointMeta, samples: list[Sample], ds: MSADataset, split: str
               ) -> list[Sample] | list[StudentItem]:
    """What ``predict`` gets: the samples, plus the teacher's descriptions for a prompted
    network (read from the description job it trained with; gold-label jobs refused)."""
    if meta.kind != "prompted":
        return samples
    entry = meta.teacher_manifest.get("descriptions") or {}
    job = entry.get("job") or {}
    cache_dir = entry.get("cache_dir") or ""
    if not job or not (Path(cache_dir) / DB_FILE).is_file():
        raise EvalError(
            f"checkpoint {meta.path} is a prompted network: it reads the teacher's descriptions, "
            f"which come from cache {cache_dir!r} (job {job.get('job')}), not found here. "
            "Mount that cache at the same path, or evaluate the plain student instead")
    try:
        view = teacher_view(cache_dir, {s.id: split for s in samples}, ds.fingerprint,
                            template=str(job.get("template", "")), job=str(job.get("job", "")),
                            whole_fingerprint=ds.info.whole_fingerprint)
    except CacheError as e:
        raise EvalError(f"checkpoint {meta.path} (prompted network): {e}") from None
    log.info("prompted network: teacher descriptions for %d of %d %s samples", len(view.outputs),
             len(samples), split)
    return [StudentItem(s, TeacherSignal(description=(view.outputs[s.id].description or "")
                                         if s.id in view.outputs else ""))
            for s in samples]
