"""8-bit and 4-bit (QLoRA) text bases through bitsandbytes, on CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from students.collate import Collator
from students.model import build_student
from workbench.config import LoraConfig, StudentConfig
from workbench.data.schema import Sample
from workbench.data.store import DataInfo

bnb = pytest.importorskip("bitsandbytes", reason="the quant extra is not installed")

INFO = DataInfo(name="tiny", task="regression", metric_set="mosi", label_range=(-3.0, 3.0),
                class_names=[], modalities=["text", "audio"], feature_dims={"audio": 3},
                feature_kind={"audio": "vector"})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def samples() -> list[Sample]:
    rng = np.random.default_rng(0)
    return [Sample(id=f"q{i}", text=f"a {'fine' if i % 2 else 'dull'} film {i}", split="train",
                   label=float(i % 3 - 1), audio=rng.normal(size=3).astype(np.float32))
            for i in range(4)]


@pytest.mark.parametrize("quantize,layer", [("8bit", "Linear8bitLt"), ("4bit", "Linear4bit")])
def test_quantized_base_forward_and_lora_backward(quantize, layer):
    cfg = StudentConfig(hidden=16, heads=2, bottleneck_tokens=1, max_text_len=16, dropout=0.0,
                        quantize=quantize, lora=LoraConfig(r=2, alpha=4, dropout=0.0))
    m = build_student(cfg, INFO, [-1.0, 0.0, 1.0])
    kinds = {type(mod).__name__ for mod in m.text.modules()}
    assert layer in kinds
    # heads and the small encoders stay full precision
    assert not any(type(mod).__name__.startswith("Linear") and type(mod).__name__ != "Linear"
                   for name, mod in m.named_modules() if not name.startswith("text."))
    text_trainable = [n for n, p in m.text.named_parameters() if p.requires_grad]
    assert text_trainable and all("lora_" in n for n in text_trainable)
    batch = Collator.for_model(m)(samples())
    out = m(batch)
    assert out.pred.shape == (4,) and torch.isfinite(out.pred).all()
    assert out.bin_logits.shape == (4, 3)
    out.pred.sum().backward()
    # lora_B: lora_A's gradient is zero while B still has its zero initialisation
    grads = [p.grad for n, p in m.text.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    total = m.parameter_counts()["text_encoder"].total
    assert 22_000_000 < total < 23_000_000  # 4-bit weights counted unpacked
