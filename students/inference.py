"""Inference: a student's predictions for samples, in input order.

:func:`predict` is what evaluation, ``workbench predict``, the cost report and the
training loop's helpers call: eval mode, one process, batches cut by token count
(:func:`students.batching.length_batches`: sorted by tokens, each batch filled up to a
token budget, so little padding), results put back in input order, optional
missing-modality masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from students.batching import length_batches
from students.collate import Collator, StudentItem
from students.model import StudentModel
from students.robustness import MaskSpec
from workbench.data import Sample


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch with every tensor (also inside nested dicts) moved to ``device``."""
    out: dict[str, Any] = {}
    for k, v in batch.items():
        if isinstance(v, Tensor):
            out[k] = v.to(device)
        elif isinstance(v, dict):
            out[k] = to_device(v, device)
        else:
            out[k] = v
    return out


def predict(model: StudentModel | Any, items: Sequence[Sample | StudentItem],
            batch_size: int = 64, masking: MaskSpec | None = None,
            batch_tokens: int | None = None) -> np.ndarray:
    """Predictions of ``model`` (eval mode, one process) for ``items``, in order.

    Regression: (N,) scores; classification: (N, C) logits. A prompted network reads the
    descriptions in the items' teacher signals; ``masking`` applies missing-modality masks.
    ``model`` is a :class:`~students.model.StudentModel` or a served export
    (:class:`students.serving.OrtStudent`, :func:`students.serving.load_served`).

    Only the model is on the hot path: items are sorted by their token count and cut into
    batches of at most ``batch_tokens`` padded tokens (samples x the batch's longest text;
    ``None``: ``batch_size`` x the items' mean token count, so batches hold ``batch_size``
    items on average; 0: ``batch_size`` items each), the collator makes only the inputs
    ``forward`` reads, a LoRA text encoder runs merged
    (:meth:`~students.encoders.TextEncoder.merged`, made once per set of weights), under
    ``torch.inference_mode``. Batching changes no prediction beyond float rounding.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: use at least 1")
    if batch_tokens is not None and batch_tokens < 0:
        raise ValueError(f"batch_tokens={batch_tokens}: use None (batch_size x the mean token "
                         "count), 0 (batch_size items per batch) or a positive budget")
    if not items:
        raise ValueError("predict got no items")
    batches = predict_batches(model, items, batch_size, batch_tokens)
    if not isinstance(model, StudentModel):  # a served export: it runs its own batches
        return _predict_served(model, items, batches, masking)
    was_training, was_merged = model.training, model.serve_merged
    model.eval()
    model.serve_merged = True
    collator = Collator.for_model(model, masking=masking, inputs_only=model.prompt is None)
    preds: list[np.ndarray] = []
    try:
        with torch.inference_mode():
            for idx in batches:
                batch = to_device(collator([items[j] for j in idx]), model.device)
                preds.append(model(batch).pred.float().cpu().numpy())
    finally:
        model.train(was_training)
        model.serve_merged = was_merged
    return _restore(preds, batches)


def token_counts(model: StudentModel | Any, items: Sequence[Sample | StudentItem]) -> list[int]:
    """Each item's text tokens as ``model``'s collator makes them (special tokens
    included, cut at ``student.max_text_len``)."""
    enc = model.tokenizer([item_text(it) for it in items], truncation=True,
                          max_length=model.cfg.max_text_len)
    return [len(ids) for ids in enc["input_ids"]]


def predict_batches(model: StudentModel | Any, items: Sequence[Sample | StudentItem],
                    batch_size: int = 64, batch_tokens: int | None = None) -> list[np.ndarray]:
    """The batches :func:`predict` runs (arrays of positions into ``items``), longest
    texts first: :func:`students.batching.length_batches` of :func:`token_counts`."""
    return length_batches(token_counts(model, items), batch_size, batch_tokens)


def _restore(preds: list[np.ndarray], batches: list[np.ndarray]) -> np.ndarray:
    out = np.concatenate(preds, axis=0)
    restored = np.empty_like(out)
    restored[np.concatenate(batches)] = out
    return restored


def _predict_served(model: Any, items: Sequence[Sample | StudentItem],
                    batches: list[np.ndarray], masking: MaskSpec | None) -> np.ndarray:
    collator = Collator.for_model(model, masking=masking, inputs_only=True)
    preds = [model.predict_batch(collator([items[j] for j in idx])) for idx in batches]
    return _restore(preds, batches)


def item_text(item: Sample | StudentItem) -> str:
    """The transcript of a sample or item ('' when it has none)."""
    sample = item.sample if isinstance(item, StudentItem) else item
    return sample.text or ""
