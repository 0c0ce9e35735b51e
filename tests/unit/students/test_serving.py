"""``predict`` serves a LoRA student through its merged encoder (same predictions as the
adapter, a new merge after the weights change), and collates inputs only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from students.collate import Collator
from students.inference import predict
from students.model import build_student
from tests.support.students import BINS, make_info, make_samples
from workbench.config import LoraConfig, StudentConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def _lora_student():
    cfg = StudentConfig(hidden=16, heads=2, bottleneck_tokens=2, max_text_len=16, dropout=0.0,
                        lora=LoraConfig(r=2, alpha=4, dropout=0.0))
    model = build_student(cfg, make_info(), BINS).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def _adapter_preds(model, samples):
    with torch.no_grad():
        return model(Collator.for_model(model)(samples)).pred.numpy()


def test_predict_runs_the_merged_encoder_with_the_adapters_outputs():
    model = _lora_student()
    samples = make_samples(6)
    want = _adapter_preds(model, samples)
    got = predict(model, samples, batch_size=4)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    merged = model.text.merged()
    assert merged is not None and "lora" not in " ".join(n for n, _ in merged.named_parameters())
    assert model.text.merged() is merged  # kept while the weights are the same
    assert model.serve_merged is False and not model.training  # left as it was
    # a weight changes in place (an optimizer step): the next call merges again
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(-1.0)
    assert model.text.merged() is not merged
    np.testing.assert_allclose(predict(model, samples, 4), _adapter_preds(model, samples),
                               atol=1e-5, rtol=1e-5)
    model.train()
    assert model.text.merged() is None  # training runs the adapter


def test_inputs_only_batches_keep_what_forward_reads():
    model = _lora_student()
    samples = make_samples(3)
    full = Collator.for_model(model)(samples)
    lean = Collator.for_model(model, inputs_only=True)(samples)
    assert "labels" not in lean and "teacher_mask" not in lean
    for k, v in lean.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, full[k]), k
    with torch.no_grad():
        torch.testing.assert_close(model(lean).pred, model(full).pred)
