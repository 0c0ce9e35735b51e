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
``README.md``              the model card, written by ``workbench export`` after
                           :func:`export_checkpoint` (:mod:`eval.model_card`: it reads
                           the checkpoint's evaluation)
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
same :class:`~students.model.StudentOutput` as the checkpoint. The export depends on
neither the ``minilm`` package nor the checkpoint: the tokenizer and every weight are in
the directory. A quantized (QLoRA) text encoder is exported dequantized
(:mod:`students.export.merge` says how close its outputs are).

The package, lowest first: :mod:`~students.export.common` (file names, format version,
``export.json``, :class:`ExportError`), :mod:`~students.export.merge` (the text encoder
merged, a quantized base dequantized), :mod:`~students.export.int8` (dynamic int8 in
PyTorch and ONNX Runtime), :mod:`~students.export.files` (an export written and loaded),
:mod:`~students.export.onnx` (``model.onnx``), :mod:`~students.export.run` (a checkpoint
exported, int8 recorded). The names below are the public ones.
"""

from students.export.common import (
    EXPORT_FILE,
    EXPORT_FORMAT,
    ONNX_FILE,
    ONNX_INT8_FILE,
    PROMPT_DIR,
    TEXT_DIR,
    WEIGHTS_FILE,
    ExportError,
    batch_keys,
    quiet_loggers,
    read_export,
)
from students.export.files import export_model, load_exported
from students.export.int8 import quantize_int8, quantize_onnx_int8
from students.export.merge import merged_text_encoder
from students.export.onnx import OnnxStudent, export_onnx, require_onnx
from students.export.run import export_checkpoint, mark_int8

__all__ = [
    "EXPORT_FILE", "EXPORT_FORMAT", "ONNX_FILE", "ONNX_INT8_FILE", "PROMPT_DIR", "TEXT_DIR",
    "WEIGHTS_FILE", "ExportError", "OnnxStudent", "batch_keys", "export_checkpoint",
    "export_model", "export_onnx", "load_exported", "mark_int8", "merged_text_encoder",
    "quantize_int8", "quantize_onnx_int8", "quiet_loggers", "read_export", "require_onnx",
]
