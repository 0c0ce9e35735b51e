"""Standalone exports of student checkpoints: the LoRA adapter merged into the text encoder.

``workbench export CHECKPOINT --out DIR`` (:func:`export_checkpoint`) writes:

=========================  ==============================================================
``export.json``            format version, model kind, the student config (its text
                           encoder fields pointing at the directories below, ``text_mode:
                           full``, ``quantize: none``), the dataset's info, label bins,
                           modalities, the batch keys ``forward`` reads, how the text
                           encoder was made (``merged_lora`` / ``full`` / ``frozen``,
                           dequantized or not), the source checkpoint, package versions
``model.safetensors``      every weight except the text encoders (the same keys as the
                           checkpoint's ``model.safetensors``)
``text_encoder/``          the text encoder with the adapter merged in
                           (``merge_and_unload``), a plain ``transformers`` directory:
                           ``config.json``, ``model.safetensors``, the tokenizer
``prompt_encoder/``        prompted networks only: the frozen description encoder
``model.onnx``             with ``--onnx`` (:func:`export_onnx`)
=========================  ==============================================================

With ``--int8`` (:func:`export_checkpoint`'s ``int8``) ``export.json`` gets an ``int8``
section and :func:`load_exported` applies dynamic int8 quantization
(:func:`quantize_int8`: every ``nn.Linear``, weights int8 per tensor, activations
quantized per batch at run time) to the float weights it loads; the files stay float32
(``model.onnx`` too; with ``--onnx``, ``model.int8.onnx`` is ONNX Runtime's own dynamic
int8 model), ``load_exported(path, int8=False)`` gives the float model. The
accuracy change on the validation split is measured by the caller
(:func:`eval.export_check.measure_int8`, what ``workbench export --int8`` runs) and
written into that section.

:func:`load_exported` (one call, no PEFT import) rebuilds the model: a
:class:`~students.model.StudentModel` in eval mode whose ``forward`` takes the batch dicts
:class:`~students.collate.Collator` makes (``Collator.for_model(model)``) and returns the
same :class:`~students.model.StudentOutput` as the checkpoint. The export does not depend
on the ``minilm`` package or the checkpoint any more: the tokenizer and every weight are
in the directory.

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

import contextlib
import copy
import importlib.util
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from students.model import StudentModel, build_student
from workbench.config import DataConfig, StudentConfig, from_dict, to_dict, versions
from workbench.data.store import DataInfo
from workbench.errors import WorkbenchError
from workbench.io import atomic_dir

log = logging.getLogger(__name__)

EXPORT_FORMAT = 1
EXPORT_FILE = "export.json"
WEIGHTS_FILE = "model.safetensors"
TEXT_DIR = "text_encoder"
PROMPT_DIR = "prompt_encoder"
ONNX_FILE = "model.onnx"
ONNX_INT8_FILE = "model.int8.onnx"


class ExportError(WorkbenchError, RuntimeError):
    """A checkpoint cannot be exported as asked, or an export directory is damaged."""


# ------------------------------------------------------------------------------- merging


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


def _save_encoder(encoder: nn.Module, tokenizer: Any, out: Path) -> None:
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


# -------------------------------------------------------------------------------- export


def batch_keys(model: StudentModel) -> list[str]:
    """Tensor keys of a collated batch that ``forward`` reads (also the ONNX inputs,
    ``token_type_ids`` only when the tokenizer makes them)."""
    keys = ["input_ids", "attention_mask"]
    if "token_type_ids" in model.tokenizer.model_input_names:
        keys.append("token_type_ids")
    for m in model.modalities:
        keys.append(m)
        if model.feature_kind[m] == "sequence":
            keys.append(f"{m}_lengths")
        keys += [f"{m}_keep", f"{m}_avail"]
    return keys


def export_model(model: StudentModel, out_dir: str | Path, *, source: dict[str, Any] | None = None,
                 overwrite: bool = False) -> Path:
    """Write ``model`` (eval mode, unwrapped) as a standalone export in ``out_dir``.

    The directory is written beside the target and moved into place at the end.
    ``source`` is recorded in ``export.json`` (e.g. the checkpoint path and its selection).
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"--out {out} exists and is not empty; choose a new directory or "
                          "pass --force to replace it")
    with atomic_dir(out) as tmp:
        spec = _write_export(model, tmp, source)
    how = spec["text_encoder"]
    log.info("exported a %s model to %s (text encoder: %s%s)", spec["kind"], out,
             how["made_by"], f", dequantized from {how['dequantized_from']}"
             if how["dequantized_from"] else "")
    return out


def _write_export(model: StudentModel, tmp: Path, source: dict[str, Any] | None
                  ) -> dict[str, Any]:
    """The export's files into the (temporary) directory ``tmp``; returns the spec."""
    encoder, how = merged_text_encoder(model)
    _save_encoder(encoder, model.tokenizer, tmp / TEXT_DIR)
    scfg = copy.deepcopy(model.cfg)
    scfg.text_encoder = TEXT_DIR
    scfg.text_mode = "full"
    scfg.quantize = "none"
    scfg.gradient_checkpointing = False
    if model.prompt is not None:
        penc = model.prompt.encoder
        if penc.quantize != "none":
            raise ExportError(f"the prompted network's description encoder is quantized "
                              f"({penc.quantize}); export supports a quantized text encoder "
                              "only for the student's own (LoRA) text encoder")
        _save_encoder(copy.deepcopy(penc.model), penc.tokenizer, tmp / PROMPT_DIR)
        scfg.prompt_encoder = PROMPT_DIR
    from students.checkpoint import split_state_dict

    _, rest = split_state_dict(model, model.state_dict())
    save_file({k: v.detach().to("cpu").contiguous() for k, v in rest.items()},
              str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
    spec = {
        "format_version": EXPORT_FORMAT,
        "kind": "prompted" if model.prompt is not None else "student",
        "student": to_dict(scfg),
        "data_info": _data_info(model.info),
        "bins": model.bin_values,
        "modalities": ["text", *model.modalities],
        "task": model.task,
        "class_names": list(model.info.class_names),
        "inputs": batch_keys(model) + (["descriptions"] if model.prompt is not None else []),
        "outputs": {"pred": "(B,) score" if model.task == "regression" else "(B, C) logits",
                    "bin_logits": "(B, n_bins) or null"},
        "text_encoder": how,
        "onnx": None,
        "int8": None,
        "source": source or {},
        "versions": versions(),
    }
    (tmp / EXPORT_FILE).write_text(json.dumps(spec, indent=2, default=str) + "\n")
    return spec


def _data_info(info: DataInfo) -> dict[str, Any]:
    """The dataset's info as export.json records it: a classification set has classes,
    not a score range (``label_range`` null)."""
    out = info.to_json()
    if info.task == "classification":
        out["label_range"] = None
    return out


def export_checkpoint(path: str | Path, out_dir: str | Path, *, onnx: bool = False,
                      overwrite: bool = False, device: str | torch.device = "cpu",
                      int8: bool = False) -> Path:
    """Load a checkpoint and export it (:func:`export_model`; with ``onnx``, also
    :func:`export_onnx`; with ``int8``, :func:`mark_int8`). A quantized base is loaded on
    ``device`` (bitsandbytes places weights at load time); the exported weights are
    written from the CPU."""
    from students.checkpoint import load_checkpoint

    if onnx:
        require_onnx()
    model, _, meta = load_checkpoint(path, device=device)
    if onnx and model.prompt is not None:
        raise ExportError(f"checkpoint {path} is a prompted network: it tokenizes teacher "
                          "descriptions inside forward, which ONNX cannot hold; export it "
                          "without --onnx")
    out = export_model(model, out_dir, overwrite=overwrite, source={
        "checkpoint": str(Path(path).resolve()), "selection": meta.selection,
        "trained_with": meta.versions})
    if onnx:
        export_onnx(out)
    if int8:
        mark_int8(out)
    return out


# ---------------------------------------------------------------------------------- load


def read_export(path: str | Path) -> dict[str, Any]:
    """``export.json`` of an export directory (checked for its format version)."""
    p = Path(path)
    spec_path = p / EXPORT_FILE
    if not spec_path.is_file():
        raise ExportError(f"{p} is not a student export (no {EXPORT_FILE}); write one with "
                          "`workbench export CHECKPOINT --out DIR`")
    try:
        spec = json.loads(spec_path.read_text())
    except json.JSONDecodeError as e:
        raise ExportError(f"{spec_path}: not valid JSON ({e}); re-export the checkpoint") from None
    if spec.get("format_version") != EXPORT_FORMAT:
        raise ExportError(f"{p}: export format v{spec.get('format_version')}, this workbench "
                          f"reads v{EXPORT_FORMAT}; re-export the checkpoint")
    return spec


def load_exported(path: str | Path, device: str | torch.device = "cpu",
                  int8: bool | None = None) -> StudentModel:
    """Load an export directory: a :class:`~students.model.StudentModel` in eval mode on
    ``device``, with no gradients and no PEFT.

    ``model(Collator.for_model(model)(samples))`` gives what the checkpoint gives.
    ``int8``: quantize (:func:`quantize_int8`, CPU only); None: as ``export.json`` says.
    """
    p = Path(path).resolve()
    spec = read_export(p)
    scfg = from_dict(StudentConfig, spec["student"], "student")
    for field_name, sub in (("text_encoder", TEXT_DIR), ("prompt_encoder", PROMPT_DIR)):
        if getattr(scfg, field_name) == sub:
            if not (p / sub / "config.json").is_file():
                raise ExportError(f"export {p} has no {sub}/config.json; it is incomplete, "
                                  "re-export the checkpoint")
            setattr(scfg, field_name, str(p / sub))
    recorded = dict(spec["data_info"])
    if recorded.get("label_range") is None:  # a classification set records none
        recorded["label_range"] = DataConfig().label_range
    info = DataInfo.from_json(recorded)
    model = build_student(scfg, info, spec.get("bins"), device=device)
    weights = p / WEIGHTS_FILE
    if not weights.is_file():
        raise ExportError(f"export {p} has no {WEIGHTS_FILE}; it is incomplete")
    from students.checkpoint import FROZEN_PREFIXES, TEXT_PREFIX, load_weights

    res = model.load_state_dict(load_weights(weights, "the student's weights",
                                             "re-export the checkpoint"), strict=False)

    missing = [k for k in res.missing_keys
               if not k.startswith(TEXT_PREFIX) and not k.startswith(FROZEN_PREFIXES)]
    if missing or res.unexpected_keys:
        raise ExportError(f"export {p}: {WEIGHTS_FILE} does not fit the model its "
                          f"{EXPORT_FILE} describes (missing {missing[:8]}, unexpected "
                          f"{res.unexpected_keys[:8]}); re-export the checkpoint")
    model.requires_grad_(False)
    model.eval()
    if int8 if int8 is not None else bool(spec.get("int8")):
        quantize_int8(model)
    return model


# ---------------------------------------------------------------------------------- int8


def quantize_int8(model: StudentModel) -> int:
    """Dynamic int8 quantization of every ``nn.Linear`` of ``model`` in place
    (``torch.ao.quantization.quantize_dynamic``: int8 weights per output channel,
    activations quantized per batch; CPU only); returns the number of layers quantized.
    ``nn.MultiheadAttention``'s output projection stays float (PyTorch does not quantize
    it dynamically)."""
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    if model.device.type != "cpu":
        raise ExportError(f"int8 (dynamic quantization) runs on the CPU; load the export with "
                          f"device='cpu' (not {model.device})")
    with warnings.catch_warnings():  # torch.ao's own deprecation notes, once per layer
        warnings.simplefilter("ignore")
        for name, child in list(model.named_children()):
            if name != "bins":
                setattr(model, name, quantize_dynamic(
                    child, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8))
    return sum(1 for m in model.modules()
               if type(m).__module__.startswith("torch.ao.nn.quantized.dynamic"))


def quantize_onnx_int8(export_dir: str | Path) -> Path:
    """``model.int8.onnx`` beside ``model.onnx``: ONNX Runtime's dynamic int8 quantization
    of its MatMul / Gemm nodes (int8 weights per output channel, uint8 activations
    quantized per batch); recorded in ``export.json``'s ``int8.onnx_file``."""
    if importlib.util.find_spec("onnxruntime") is None:
        raise ExportError("--int8 with --onnx needs onnxruntime (its quantization tool): pip "
                          "install onnxruntime; or export without --onnx")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    p = Path(export_dir)
    target = p / ONNX_INT8_FILE
    with _quiet_loggers("root"):
        quantize_dynamic(str(p / ONNX_FILE), str(target), weight_type=QuantType.QInt8,
                         per_channel=True, op_types_to_quantize=["MatMul", "Gemm"])
    return target


def mark_int8(export_dir: str | Path, accuracy: dict[str, Any] | None = None,
              onnx_accuracy: dict[str, Any] | None = None) -> dict[str, Any]:
    """Record int8 serving in ``export.json`` (:func:`load_exported` then quantizes; with an
    ONNX model, :func:`quantize_onnx_int8` writes ``model.int8.onnx``), with the measured
    accuracy changes when given; returns the ``int8`` section."""
    p = Path(export_dir)
    spec = read_export(p)
    layers = quantize_int8(load_exported(p, int8=False))
    onnx_file = None
    if spec.get("onnx"):
        onnx_file = ONNX_INT8_FILE if (p / ONNX_INT8_FILE).is_file() else \
            quantize_onnx_int8(p).name
    section = {"method": "torch.ao.quantization.quantize_dynamic (per-channel qint8)",
               "modules": "nn.Linear", "layers": layers, "weights_stored": "float32",
               "accuracy": accuracy, "onnx_file": onnx_file,
               "onnx_method": ("onnxruntime.quantization.quantize_dynamic (per-channel QInt8, "
                               "MatMul/Gemm)") if onnx_file else None,
               "onnx_accuracy": onnx_accuracy}
    spec["int8"] = section
    (p / EXPORT_FILE).write_text(json.dumps(spec, indent=2, default=str) + "\n")
    return section


# ---------------------------------------------------------------------------------- ONNX


def require_onnx() -> None:
    """Raise a clear error unless the packages ``torch.onnx.export`` needs are installed."""
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(f"--onnx needs {' and '.join(missing)}, which are not installed: "
                          f"pip install {' '.join(missing)} (the workbench does not depend on "
                          "them); or export without --onnx")


class OnnxStudent(nn.Module):
    """The student with positional tensor inputs (:func:`batch_keys`) and tensor outputs
    (``pred``, plus ``bin_logits`` for a regression student with a bin head)."""

    def __init__(self, model: StudentModel) -> None:
        super().__init__()
        self.model = model
        self.keys = batch_keys(model)
        self.with_bins = model.task == "regression" and model.bin_head is not None

    def output_names(self) -> list[str]:
        return ["pred", "bin_logits"] if self.with_bins else ["pred"]

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(dict(zip(self.keys, tensors, strict=True)))
        return (out.pred, out.bin_logits) if self.with_bins else (out.pred,)


def _example_batch(model: StudentModel) -> dict[str, Any]:
    from students.collate import collate
    from workbench.data.schema import Sample

    samples = []
    for i in range(2):
        feats: dict[str, Any] = {}
        for m in model.modalities:
            dim = model.info.feature_dims[m]
            shape = (dim,) if model.feature_kind[m] == "vector" else (3 + i, dim)
            feats[m] = torch.randn(*shape, generator=torch.Generator().manual_seed(i)).numpy()
        samples.append(Sample(id=f"onnx{i}", text="an example sentence " * (i + 1),
                              split="test", **feats))
    return collate(samples, model.tokenizer, model.info, model.cfg.max_text_len)


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """Raise the named loggers to ERROR: the ONNX optimizer logs every initializer it
    dedupes and every constant it does not fold."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_onnx(export_dir: str | Path, opset: int = 18) -> Path:
    """Write ``model.onnx`` for an export directory (batch, token and frame axes dynamic);
    record its inputs and outputs in ``export.json``."""
    require_onnx()
    p = Path(export_dir)
    spec = read_export(p)
    model = load_exported(p, int8=False)
    if model.prompt is not None:
        raise ExportError("a prompted network tokenizes descriptions inside forward; ONNX "
                          "export supports plain students only")
    wrapper = OnnxStudent(model).eval()
    batch = _example_batch(model)
    args = tuple(batch[k] for k in wrapper.keys)
    auto = torch.export.Dim.AUTO
    shapes: list[dict[int, Any]] = []
    for k in wrapper.keys:
        dims = {0: auto}
        frames = batch[k].dim() >= 2 and (
            model.feature_kind.get(k.removesuffix("_keep")) == "sequence")
        if k in ("input_ids", "attention_mask", "token_type_ids") or frames:
            dims[1] = auto
        shapes.append(dims)
    target = p / ONNX_FILE
    with torch.no_grad(), _quiet_loggers("onnxscript", "onnx_ir", "torch.onnx"):
        torch.onnx.export(wrapper, args, str(target), input_names=wrapper.keys,
                          output_names=wrapper.output_names(),
                          dynamic_shapes=(tuple(shapes),), opset_version=opset, dynamo=True,
                          external_data=False, verbose=False)
    spec["onnx"] = {"file": ONNX_FILE, "inputs": wrapper.keys,
                    "outputs": wrapper.output_names(), "opset": opset,
                    "dtypes": {k: str(batch[k].dtype).removeprefix("torch.")
                               for k in wrapper.keys}}
    (p / EXPORT_FILE).write_text(json.dumps(spec, indent=2, default=str) + "\n")
    log.info("wrote %s", target)
    return target
