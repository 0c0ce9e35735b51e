"""What every export step shares: the export directory's file names and format version,
:class:`ExportError`, ``export.json`` read and written, the batch keys ``forward`` reads,
and quieting the exporters' loggers."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from students.model import StudentModel
from workbench.errors import WorkbenchError

EXPORT_FORMAT = 1
EXPORT_FILE = "export.json"
WEIGHTS_FILE = "model.safetensors"
TEXT_DIR = "text_encoder"
PROMPT_DIR = "prompt_encoder"
ONNX_FILE = "model.onnx"
ONNX_INT8_FILE = "model.int8.onnx"


class ExportError(WorkbenchError, RuntimeError):
    """A checkpoint cannot be exported as asked, or an export directory is damaged."""


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


def write_export_spec(path: str | Path, spec: dict[str, Any]) -> None:
    """Write ``spec`` as the ``export.json`` of the directory ``path``."""
    (Path(path) / EXPORT_FILE).write_text(json.dumps(spec, indent=2, default=str) + "\n")


@contextlib.contextmanager
def quiet_loggers(*names: str) -> Iterator[None]:
    """Raise the named loggers to ERROR while the block runs: the ONNX optimizer logs every
    initializer it dedupes and every constant it does not fold, ONNX Runtime's quantizer
    logs to the root logger."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
