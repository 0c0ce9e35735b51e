"""The student's text encoder as a plain ``transformers`` model (the LoRA adapter merged
in), and the directory it is written to.

Quantized bases (``student.quantize: 8bit / 4bit``)
---------------------------------------------------
PEFT's ``merge_and_unload`` on a bitsandbytes base re-quantizes the merged weights, which
adds a second rounding to weights that were already rounded, and the result is still a
bitsandbytes model. The export does not do that. It **dequantizes** instead: every
bitsandbytes linear layer of the text encoder becomes a float32 ``nn.Linear`` holding the
dequantized weight, plus the LoRA delta where the adapter wraps it. The exported model is
a float model (four to eight times the text encoder's quantized size) that needs no
bitsandbytes. Its outputs match the quantized checkpoint's:

* 4-bit NF4: the quantized layer dequantizes its weight and multiplies in the compute
  dtype, so with ``quant_compute_dtype: float32`` the outputs agree to float rounding;
* 8-bit (LLM.int8): the quantized layer also rounds its *activations* to int8, the export
  does not, so outputs differ by that rounding (close, not equal).

``export.json`` records ``text_encoder.dequantized_from``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from students.export.common import ExportError
from students.model import StudentModel


def _bnb_kind(module: nn.Module) -> str | None:
    name = type(module).__name__
    if name in ("Linear8bitLt", "Linear4bit") and type(module).__module__.startswith(
            "bitsandbytes"):
        return name
    return None


def _dequantized_linear(layer: nn.Module) -> nn.Linear:
    """A float32 ``nn.Linear`` with the bitsandbytes ``layer``'s dequantized weight."""
    from peft.utils.integrations import dequantize_bnb_weight

    weight = dequantize_bnb_weight(layer.weight, state=getattr(layer, "state", None))
    out = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                    device=weight.device, dtype=torch.float32)
    with torch.no_grad():
        out.weight.copy_(weight.float())
        if layer.bias is not None:
            out.bias.copy_(layer.bias.float())
    return out


def _set_child(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, leaf, new)


def _merge_dequantized(peft_model: nn.Module) -> nn.Module:
    """Replace every bitsandbytes layer by a float ``nn.Linear`` (dequantized weight, plus
    the LoRA delta where an adapter wraps it); return the plain base model."""
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    merged = 0
    for name, module in list(base.named_modules()):
        if isinstance(module, LoraLayer) and _bnb_kind(module.get_base_layer()):
            lin = _dequantized_linear(module.get_base_layer())
            with torch.no_grad():
                for adapter in module.active_adapters:
                    if adapter in module.lora_A:
                        lin.weight += module.get_delta_weight(adapter).float()
            _set_child(base, name, lin)
            merged += 1
    for name, module in list(base.named_modules()):
        if _bnb_kind(module):
            _set_child(base, name, _dequantized_linear(module))
    if merged == 0:
        raise ExportError("the quantized text encoder has no LoRA layer to merge; the "
                          "checkpoint does not look like a QLoRA student")
    if hasattr(base.config, "quantization_config"):
        del base.config.quantization_config
    for flag in ("is_loaded_in_8bit", "is_loaded_in_4bit", "is_quantized"):
        if flag in base.__dict__:
            base.__dict__[flag] = False
    base.hf_quantizer = None
    return base


def merged_text_encoder(model: StudentModel) -> tuple[nn.Module, dict[str, Any]]:
    """The student's text encoder as a plain ``transformers`` model, and how it was made.

    ``lora``: a copy of the PEFT model with the adapter merged (``merge_and_unload``;
    dequantized first for a bitsandbytes base, see the module docstring); ``full`` /
    ``frozen``: a copy of the encoder as it is. ``model`` itself is left unchanged.
    """
    text = model.text
    how: dict[str, Any] = {"source_mode": text.mode, "dequantized_from": None}
    if text.mode != "lora":
        how["made_by"] = text.mode
        return copy.deepcopy(text.model), how
    lora = model.cfg.lora
    how.update(made_by="merged_lora", lora={"r": lora.r, "alpha": lora.alpha,
                                             "target_modules": list(lora.target_modules)})
    if text.quantize != "none":
        how["dequantized_from"] = text.quantize
        return _merge_dequantized(copy.deepcopy(text.model)), how
    return copy.deepcopy(text.model).merge_and_unload(), how


def save_encoder(encoder: nn.Module, tokenizer: Any, out: Path) -> None:
    out.mkdir(parents=True)
    config = copy.deepcopy(encoder.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(str(out))
    # Written by hand rather than save_pretrained: the weights as they are in memory
    # (the student drops the encoder's pooler; a dequantized model still carries its
    # quantizer's flags), contiguous and on the CPU.
    state = {k: v.detach().to("cpu").contiguous()
             for k, v in encoder.state_dict().items()}
    # Weights the student removed (the encoder's pooler: it mean-pools) are written as
    # zeros, so that from_pretrained loads the directory without a missing-weights report;
    # load_text_backbone drops them again and nothing reads them.
    with torch.device("meta"):
        fresh = type(encoder)(config)
    for k, v in fresh.state_dict().items():
        if k not in state:
            state[k] = torch.zeros(v.shape, dtype=v.dtype)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(str(out))
