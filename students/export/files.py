"""An export directory written from a student (:func:`export_model`) and loaded back into
one (:func:`load_exported`)."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from students.export.common import (
    EXPORT_FILE,
    EXPORT_FORMAT,
    PROMPT_DIR,
    TEXT_DIR,
    WEIGHTS_FILE,
    ExportError,
    batch_keys,
    read_export,
    write_export_spec,
)
from students.export.int8 import quantize_int8
from students.export.merge import merged_text_encoder, save_encoder
from students.model import StudentModel, build_student
from workbench.config import DataConfig, StudentConfig, from_dict, to_dict, versions
from workbench.data.store import DataInfo
from workbench.io import atomic_dir

log = logging.getLogger(__name__)


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
    from students.checkpoint import disk_full_named

    kept = (f"The export already in {out} is left as it was" if out.exists() and any(out.iterdir())
            else f"Nothing was left in {out}")
    need = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6
    with disk_full_named(out, "the export", f"{kept}. It needs about {need:.0f} MB: free space "
                         "on that disk, or pass --out on another disk, and export again"):
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
    save_encoder(encoder, model.tokenizer, tmp / TEXT_DIR)
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
        save_encoder(copy.deepcopy(penc.model), penc.tokenizer, tmp / PROMPT_DIR)
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
    write_export_spec(tmp, spec)
    return spec


def _data_info(info: DataInfo) -> dict[str, Any]:
    """The dataset's info as export.json records it: a classification set has classes,
    not a score range (``label_range`` null)."""
    out = info.to_json()
    if info.task == "classification":
        out["label_range"] = None
    return out


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
