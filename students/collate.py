"""Turn a list of samples (and their teacher signals) into a batch dict of tensors.

Batch keys (B samples, L tokens, T frames):

* ``ids`` list[str]; ``input_ids``, ``attention_mask``, ``special_tokens_mask`` (and
  ``token_type_ids`` when the tokenizer makes them) (B, L) long; ``text_avail`` (B,).
* per feature modality ``m`` the student has (``audio`` / ``vision``): ``m`` float
  (B, T, d) for sequences or (B, d) for vectors; ``m_lengths`` (B,) long (real frames;
  1 / 0 for vectors); ``m_keep`` bool (B, T) or (B, 1): real, unmasked units;
  ``m_avail`` (B,) float, 1 when the sample has ``m`` (feature present, length > 0,
  something left after masking).
* ``labels`` (B,) float (NaN where unlabelled), ``label_class`` (B,) long (-1 where
  none), ``label_mask`` (B,) float: 1 where the task's label exists (the score for
  regression, the class for classification).
* teacher signals: ``teacher_mask`` (B,) (1 where a teacher output exists),
  ``teacher_probs`` (B, n_bins) (zeros where none) and ``teacher_probs_mask`` (B,)
  (1 where the teacher gave probabilities; both only with ``n_bins``),
  ``teacher_expected``, ``teacher_entropy``, ``teacher_off_mass`` (B,) (NaN where none),
  ``descriptions`` list[str] ('' where none), ``consistency`` (B,) (NaN where the sample
  is not augmented), ``n_bins`` int or None.
* ``domain`` (B,) long: the item's domain index (-1 where none; MIDG).
* with a mask spec: the masked tensors and ``missing_rates`` (see
  :mod:`students.robustness`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from students.encoders import feature_modalities
from students.robustness import MaskSpec, mask_batch
from workbench.data.schema import DataError, Sample
from workbench.data.store import DataInfo


@dataclass
class TeacherSignal:
    """What the teacher cache holds for one sample (any field may be missing)."""

    probs: Sequence[float] | np.ndarray | None = None
    """Probabilities over the label bins, in bin order."""
    expected: float | None = None
    entropy: float | None = None
    """Entropy of ``probs`` in nats."""
    off_mass: float | None = None
    """Probability the teacher put on answers that are none of the bins."""
    description: str | None = None


@dataclass
class StudentItem:
    """One training item: a sample, its teacher signal, and (augmented samples) the
    similarity to the source sample in [0, 1]."""

    sample: Sample
    teacher: TeacherSignal | None = None
    consistency: float | None = None
    domain: int = -1
    """Index of the sample's domain (``data.domain``; MIDG's invariance penalty); -1: none."""


def _nan(x: float | None) -> float:
    return float("nan") if x is None else float(x)


class Collator:
    """Picklable collate function for a ``DataLoader`` (``collate_fn=Collator(...)``).

    ``masking`` applies a missing-modality spec (seeded per sample, see
    :mod:`students.robustness`); for LNLN training set a new spec each epoch with
    :meth:`set_masking` before creating the epoch's iterator, or apply
    :func:`students.robustness.mask_batch` to batches in the training loop.
    """

    def __init__(self, tokenizer: Any, info: DataInfo, max_text_len: int,
                 n_bins: int | None = None, masking: MaskSpec | None = None,
                 inputs_only: bool = False) -> None:
        self.tokenizer = tokenizer
        self.info = info
        self.max_text_len = max_text_len
        self.n_bins = n_bins
        self.masking = masking
        self.modalities = feature_modalities(info)
        self.unk_id: int | None = tokenizer.unk_token_id
        self.inputs_only = inputs_only

    @classmethod
    def for_model(cls, model: Any, masking: MaskSpec | None = None,
                  inputs_only: bool = False) -> Collator:
        """A collator matching a :class:`students.model.StudentModel` (``inputs_only``:
        what ``forward`` reads, no labels or teacher signals; for serving)."""
        bins = model.bin_values
        return cls(model.tokenizer, model.info, model.cfg.max_text_len,
                   n_bins=len(bins) if bins is not None else None, masking=masking,
                   inputs_only=inputs_only)

    def set_masking(self, masking: MaskSpec | None) -> None:
        self.masking = masking

    def __call__(self, items: Sequence[Sample | StudentItem]) -> dict[str, Any]:
        return collate(items, self.tokenizer, self.info, self.max_text_len,
                       n_bins=self.n_bins, masking=self.masking, modalities=self.modalities,
                       unk_id=self.unk_id, inputs_only=self.inputs_only)


def _features(samples: list[Sample], m: str, kind: str, dim: int) -> dict[str, torch.Tensor]:
    b = len(samples)
    if kind == "vector":
        x = torch.zeros(b, dim)
        lengths = torch.zeros(b, dtype=torch.long)
        for i, s in enumerate(samples):
            f = s.feature(m)
            if f is None or f.size == 0:
                continue
            if f.ndim != 1 or f.shape[0] != dim:
                raise DataError(f"sample {s.id!r}: {m} has shape {f.shape}, but the dataset's "
                                f"{m} features are utterance vectors of size {dim}")
            x[i] = torch.tensor(f, dtype=torch.float32)  # copies: f may view read-only Arrow memory
            lengths[i] = 1
        keep = (lengths > 0).unsqueeze(1)
        return {m: x, f"{m}_lengths": lengths, f"{m}_keep": keep,
                f"{m}_avail": keep[:, 0].float()}
    lens = []
    for s in samples:
        f = s.feature(m)
        if f is None:
            lens.append(0)
            continue
        if f.ndim != 2 or f.shape[1] != dim:
            raise DataError(f"sample {s.id!r}: {m} has shape {f.shape}, but the dataset's "
                            f"{m} features are sequences (T, {dim})")
        n = s.length(m)
        n = f.shape[0] if n is None else int(n)
        if not 0 <= n <= f.shape[0]:
            raise DataError(f"sample {s.id!r}: {m}_length={n} but the sequence has "
                            f"{f.shape[0]} frames")
        lens.append(n)
    t = max(1, max(lens))
    x = torch.zeros(b, t, dim)
    for i, (s, n) in enumerate(zip(samples, lens, strict=True)):
        if n:
            x[i, :n] = torch.tensor(s.feature(m)[:n], dtype=torch.float32)
    lengths = torch.tensor(lens, dtype=torch.long)
    keep = torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)
    return {m: x, f"{m}_lengths": lengths, f"{m}_keep": keep,
            f"{m}_avail": (lengths > 0).float()}


def _teacher(items: list[StudentItem], n_bins: int | None) -> dict[str, Any]:
    b = len(items)
    out: dict[str, Any] = {
        "teacher_mask": torch.tensor([1.0 if it.teacher is not None else 0.0 for it in items]),
        "teacher_expected": torch.tensor([_nan(it.teacher.expected if it.teacher else None)
                                          for it in items]),
        "teacher_entropy": torch.tensor([_nan(it.teacher.entropy if it.teacher else None)
                                         for it in items]),
        "teacher_off_mass": torch.tensor([_nan(it.teacher.off_mass if it.teacher else None)
                                          for it in items]),
        "descriptions": [(it.teacher.description or "") if it.teacher else "" for it in items],
        "consistency": torch.tensor([_nan(it.consistency) for it in items]),
        "n_bins": n_bins,
    }
    if n_bins is not None:
        probs = torch.zeros(b, n_bins)
        has_probs = torch.zeros(b)
        for i, it in enumerate(items):
            if it.teacher is None or it.teacher.probs is None:
                continue
            p = np.asarray(it.teacher.probs, dtype=np.float32).reshape(-1)
            if p.shape[0] != n_bins:
                raise ValueError(f"sample {it.sample.id!r}: teacher probs have {p.shape[0]} "
                                 f"entries but the student has {n_bins} bins; cache and "
                                 "student must use the same label bins")
            probs[i] = torch.from_numpy(p)
            has_probs[i] = 1.0
        out["teacher_probs"] = probs
        out["teacher_probs_mask"] = has_probs
    return out


def collate(items: Sequence[Sample | StudentItem], tokenizer: Any, info: DataInfo,
            max_text_len: int, n_bins: int | None = None, masking: MaskSpec | None = None,
            modalities: list[str] | None = None, unk_id: int | None = None,
            inputs_only: bool = False) -> dict[str, Any]:
    """Collate ``items`` into a batch dict (keys in the module docstring); ``inputs_only``
    (without a mask spec): only the keys ``forward`` reads (``ids``, text, features)."""
    if not items:
        raise ValueError("collate got an empty list of items")
    its = [it if isinstance(it, StudentItem) else StudentItem(sample=it) for it in items]
    samples = [it.sample for it in its]
    mods = feature_modalities(info) if modalities is None else modalities
    enc = tokenizer([s.text or "" for s in samples], padding=True, truncation=True,
                    max_length=max_text_len, return_special_tokens_mask=True,
                    return_tensors="pt")
    batch: dict[str, Any] = {"ids": [s.id for s in samples]}
    for key in ("input_ids", "attention_mask", "token_type_ids", "special_tokens_mask"):
        if key in enc:
            batch[key] = enc[key]
    batch["text_avail"] = torch.tensor([1.0 if s.has("text") else 0.0 for s in samples])
    for m in mods:
        batch.update(_features(samples, m, info.feature_kind[m], info.feature_dims[m]))
    if inputs_only and masking is None:
        return batch
    classification = info.task == "classification"
    batch["labels"] = torch.tensor([_nan(s.label) for s in samples], dtype=torch.float32)
    batch["label_class"] = torch.tensor(
        [-1 if s.label_class is None else int(s.label_class) for s in samples], dtype=torch.long)
    batch["label_mask"] = (batch["label_class"] >= 0).float() if classification else (
        ~torch.isnan(batch["labels"])).float()
    batch.update(_teacher(its, n_bins))
    batch["domain"] = torch.tensor([it.domain for it in its], dtype=torch.long)
    if masking is not None:
        batch = mask_batch(batch, masking, unk_id if unk_id is not None
                           else tokenizer.unk_token_id)
    return batch
