"""Inference: a student's predictions for samples, in input order.

:func:`predict` is what evaluation, ``workbench predict``, the cost report and the
training loop's helpers call: eval mode, one process, batches of similar text length (less
padding), results put back in input order, optional missing-modality masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

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
            batch_size: int = 64, masking: MaskSpec | None = None) -> np.ndarray:
    """Predictions of ``model`` (eval mode, one process) for ``items``, in order.

    Regression: (N,) scores; classification: (N, C) logits. A prompted network reads the
    descriptions in the items' teacher signals; ``masking`` applies missing-modality masks.
    ``model`` is a :class:`~students.model.StudentModel` or a served export
    (:class:`students.serving.OrtStudent`, :func:`students.serving.load_served`).

    Only the model is on the hot path: items are sorted by text length so each batch pads
    to its own longest text, the collator makes only the inputs ``forward`` reads, a LoRA
    text encoder runs merged (:meth:`~students.encoders.TextEncoder.merged`, made once per
    set of weights), under ``torch.inference_mode``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: use at least 1")
    if not items:
        raise ValueError("predict got no items")
    if not isinstance(model, StudentModel):  # a served export: it runs its own batches
        return _predict_served(model, items, batch_size, masking)
    was_training, was_merged = model.training, model.serve_merged
    model.eval()
    model.serve_merged = True
    collator = Collator.for_model(model, masking=masking, inputs_only=model.prompt is None)
    # Batches of similar text length pad less; the results are put back in input order.
    order = _length_order(items)
    preds: list[np.ndarray] = []
    try:
        with torch.inference_mode():
            for i in range(0, len(items), batch_size):
                chunk = [items[j] for j in order[i:i + batch_size]]
                batch = to_device(collator(chunk), model.device)
                preds.append(model(batch).pred.float().cpu().numpy())
    finally:
        model.train(was_training)
        model.serve_merged = was_merged
    return _restore(preds, order)


def _length_order(items: Sequence[Sample | StudentItem]) -> np.ndarray:
    return np.argsort([-len(item_text(it)) for it in items], kind="stable")


def _restore(preds: list[np.ndarray], order: np.ndarray) -> np.ndarray:
    out = np.concatenate(preds, axis=0)
    restored = np.empty_like(out)
    restored[order] = out
    return restored


def _predict_served(model: Any, items: Sequence[Sample | StudentItem], batch_size: int,
                    masking: MaskSpec | None) -> np.ndarray:
    collator = Collator.for_model(model, masking=masking, inputs_only=True)
    order = _length_order(items)
    preds = [model.predict_batch(collator([items[j] for j in order[i:i + batch_size]]))
             for i in range(0, len(items), batch_size)]
    return _restore(preds, order)


def item_text(item: Sample | StudentItem) -> str:
    """The transcript of a sample or item ('' when it has none)."""
    sample = item.sample if isinstance(item, StudentItem) else item
    return sample.text or ""
