"""Student checkpoints: what a trained run leaves behind, and how to load it again.

A checkpoint directory (``<output_dir>/checkpoint-best/``) holds:

==========================  ===========================================================
``config.yaml``             the resolved :class:`~workbench.config.DistillConfig`
``versions.json``           Python and package versions that produced it
``student.json``            format version, model kind (``student`` / ``prompted``),
                            label bins, text mode, parameter counts
``data_info.json``          the dataset's :class:`~workbench.data.store.DataInfo`
                            (name, task, metric set, feature dims, fingerprint)
``model.safetensors``       every weight except the text encoder's (feature encoders,
                            fusion, heads, projections, the description branch's
                            trainable projection)
``adapter/``                ``text_mode: lora``: the PEFT adapter (``save_pretrained``:
                            ``adapter_config.json`` + ``adapter_model.safetensors``)
``text_encoder.safetensors`` ``text_mode: full``: the fine-tuned text encoder's weights
``teacher_manifest.json``   the cache jobs the run trained on (with each job's
                            ``uses_gold_label``) and the privileged network it learned from
``selection.json``          how it was chosen: ``split: valid``, metric, mode, epoch,
                            value, every validation metric of that epoch
==========================  ===========================================================

Frozen text encoders (``text_mode: frozen``, the description branch's encoder) are not
copied: they are rebuilt from ``student.text_encoder`` / ``student.prompt_encoder``, which
must therefore exist where the checkpoint is loaded (``minilm`` ships as a package).

:func:`load_checkpoint` rebuilds the model from the config, loads the weights and
returns ``(model, cfg, meta)``; the model is in eval mode.

Finding checkpoints (what ``workbench eval`` / ``predict`` / ``export`` accept): a
checkpoint directory, a run directory holding ``checkpoint-best/``, a directory of runs, or
a glob of these (:func:`find_checkpoints`); :func:`checkpoint_name` / :func:`unique_names`
give them short names, and :func:`check_files` names every missing file
(:data:`REQUIRED_FILES`) with what writes it before anything is loaded.

Loading refuses weights that do not fit the model the config builds (:func:`check_shapes`:
the file, the tensor, the expected and the found shape) and weights that are not finite
(:func:`check_finite`: a diverged run). Saving on a full disk ends in one
:class:`DiskFullError` naming the directory (:func:`disk_full_named`); what was there before
stays as it was.
"""

from __future__ import annotations

import errno
import glob
import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from students.model import StudentModel, build_student
from workbench.config import ConfigError, DistillConfig, dump_config, load_config
from workbench.data.store import DataInfo
from workbench.errors import WorkbenchError
from workbench.io import atomic_dir

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
BEST_DIR = "checkpoint-best"
"""The folder of a run directory holding the checkpoint selected on validation."""
CONFIG_FILE = "config.yaml"
VERSIONS_FILE = "versions.json"
STUDENT_FILE = "student.json"
DATA_INFO_FILE = "data_info.json"
WEIGHTS_FILE = "model.safetensors"
ADAPTER_DIR = "adapter"
TEXT_ENCODER_FILE = "text_encoder.safetensors"
TEACHER_MANIFEST_FILE = "teacher_manifest.json"
SELECTION_FILE = "selection.json"

TEXT_PREFIX = "text.model."
"""State-dict prefix of the student's text encoder (saved as adapter / full weights)."""
FROZEN_PREFIXES = ("prompt.encoder.",)
"""State-dict prefixes of frozen encoders that are rebuilt from their base, never saved."""


class CheckpointError(WorkbenchError, RuntimeError):
    """A checkpoint directory is incomplete or does not fit the model it describes."""


class DiskFullError(WorkbenchError, RuntimeError):
    """A checkpoint or export could not be written: its disk is full."""


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
"""OS errors that mean "no space left": the disk is full, or the user's quota is."""


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a disk-full error: an
    ``OSError`` with ENOSPC / EDQUOT, or safetensors' error wrapping one (it carries only
    the message, ``I/O error: No space left on device (os error 28)``)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
            return True
        text = str(e)
        if "No space left on device" in text or "Disk quota exceeded" in text or any(
                f"os error {n})" in text for n in DISK_FULL_ERRNOS):
            return True
        e = e.__cause__ or e.__context__
    return False


def _free_mb(path: Path) -> str:
    """Free space on the disk holding ``path`` (its nearest existing folder), in MB."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return f"{shutil.disk_usage(p).free / 1e6:.1f} MB"
    except OSError:
        return "unknown"


@contextmanager
def disk_full_named(target: str | Path, what: str, fix: str) -> Iterator[None]:
    """Turn a disk-full error raised inside into one :class:`DiskFullError` naming
    ``target`` (the directory being written), ``what`` was being written, the free space
    left and ``fix``; any other error passes unchanged."""
    try:
        yield
    except Exception as e:
        if not is_disk_full(e):
            raise
        target = Path(target)
        raise DiskFullError(
            f"{target}: the disk is full (ENOSPC, no space left on device) while writing "
            f"{what}; {_free_mb(target)} free there. {fix}") from e


@dataclass
class CheckpointMeta:
    """Everything a checkpoint records besides the weights and the config."""

    path: Path
    """The checkpoint directory."""
    info: DataInfo
    """The dataset the model was trained on (task, metric set, features, fingerprint)."""
    bins: list[float] | None
    """Label bins of the model's bin head (the teacher's soft-label bins), or None."""
    kind: str
    """``student`` (plain) or ``prompted`` (reads teacher descriptions)."""
    selection: dict[str, Any]
    """``split`` (always ``valid``), ``metric``, ``mode``, ``epoch``, ``value``, ``metrics``."""
    teacher_manifest: dict[str, Any]
    """Cache jobs and privileged network the run trained on."""
    versions: dict[str, str]
    student: dict[str, Any]
    """The whole ``student.json``."""


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path.parent} has no {path.name}; it is incomplete "
                              "or not a student checkpoint (expected the files written by "
                              "students.checkpoint.save_checkpoint)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); the checkpoint is damaged") from None


def split_state_dict(model: StudentModel, state_dict: dict[str, torch.Tensor]
                     ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(text encoder weights without their prefix, every other saved weight).

    Frozen encoders (:data:`FROZEN_PREFIXES`) are dropped from both.
    """
    text: dict[str, torch.Tensor] = {}
    rest: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        if k.startswith(TEXT_PREFIX):
            text[k[len(TEXT_PREFIX):]] = v
        elif k.startswith(FROZEN_PREFIXES):
            continue
        else:
            rest[k] = v
    return text, rest


def _cpu(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def save_checkpoint(
    model: StudentModel,
    cfg: DistillConfig,
    out_dir: str | Path,
    *,
    selection: dict[str, Any],
    teacher_manifest: dict[str, Any],
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``model`` (unwrapped from any DDP / FSDP wrapper) as a checkpoint in ``out_dir``.

    ``state_dict`` is the model's full state dict when it had to be gathered from shards
    (``accelerator.get_state_dict``); by default ``model.state_dict()``. The directory is
    written beside the target and swapped in at the end (:func:`workbench.io.atomic_dir`),
    so a crash never leaves a half written ``out_dir``. Returns ``out_dir``.
    """
    if selection.get("split") != "valid":
        raise ValueError(f"selection.split={selection.get('split')!r}: checkpoints are "
                         "selected on the validation split only")
    out = Path(out_dir)
    sd = state_dict if state_dict is not None else model.state_dict()
    text_sd, rest = split_state_dict(model, sd)
    kept = (f"The checkpoint already in {out} is left as it was" if (out / WEIGHTS_FILE).exists()
            else f"Nothing was left in {out}")
    with disk_full_named(out, "the checkpoint", f"{kept}. Free space on that disk (or set "
                         "train.output_dir to another disk) and run again; a distillation "
                         "run continues from its last finished epoch with --resume"):
        _write_checkpoint(model, cfg, out, text_sd, rest, selection, teacher_manifest)
    return out


def _write_checkpoint(model: StudentModel, cfg: DistillConfig, out: Path,
                      text_sd: dict[str, torch.Tensor], rest: dict[str, torch.Tensor],
                      selection: dict[str, Any], teacher_manifest: dict[str, Any]) -> None:
    """The checkpoint's files, written beside ``out`` and swapped in at the end."""
    with atomic_dir(out) as tmp:
        save_file(_cpu(rest), str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        mode = model.cfg.text_mode
        if mode == "lora":
            from peft import get_peft_model_state_dict

            adapter = get_peft_model_state_dict(model.text.model, state_dict=text_sd)
            model.text.model.save_pretrained(str(tmp / ADAPTER_DIR), state_dict=_cpu(adapter),
                                             safe_serialization=True)
        elif mode == "full":
            save_file(_cpu(text_sd), str(tmp / TEXT_ENCODER_FILE), metadata={"format": "pt"})
        dump_config(cfg, tmp, CONFIG_FILE)  # also writes versions.json
        counts = {k: {"total": v.total, "trainable": v.trainable}
                  for k, v in model.parameter_counts().items()}
        _write_json(tmp / STUDENT_FILE, {
            "format_version": FORMAT_VERSION,
            "kind": "prompted" if model.prompt is not None else "student",
            "bins": model.bin_values,
            "text_mode": mode,
            "modalities": ["text", *model.modalities],
            "parameters": counts,
        })
        _write_json(tmp / DATA_INFO_FILE, model.info.to_json())
        _write_json(tmp / TEACHER_MANIFEST_FILE, teacher_manifest)
        _write_json(tmp / SELECTION_FILE, selection)


def read_meta(path: str | Path) -> CheckpointMeta:
    """The recorded facts of a checkpoint, without building the model."""
    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"checkpoint {p} does not exist or is not a directory; pass a "
                              "run's checkpoint-best/ directory")
    student = _read_json(p / STUDENT_FILE)
    if student.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{p}: checkpoint format v{student.get('format_version')}, this "
                              f"workbench reads v{FORMAT_VERSION}; retrain or use the workbench "
                              "version in its versions.json")
    info = DataInfo.from_json(_read_json(p / DATA_INFO_FILE))
    return CheckpointMeta(
        path=p, info=info, bins=student.get("bins"), kind=student.get("kind", "student"),
        selection=_read_json(p / SELECTION_FILE),
        teacher_manifest=_read_json(p / TEACHER_MANIFEST_FILE),
        versions=_read_json(p / VERSIONS_FILE), student=student)


def load_weights(path: Path, what: str,
                 fix: str = "re-save it from its run") -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file ``path`` (``what`` it holds, for messages); a
    missing, truncated or damaged file is a :class:`CheckpointError` naming it and ``fix``."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path.parent} has no {path.name} ({what}); it is "
                              f"incomplete: {fix}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(
            f"{path} ({what}, {path.stat().st_size} bytes) is not a readable safetensors file: "
            f"{e}. It is truncated or damaged (an interrupted copy or save?): copy it again "
            f"whole, or {fix}") from None


DIVERGED_FIX = ("the run that wrote it diverged (its loss went NaN or infinite): retrain "
                "with a lower train.lr (and train.max_grad_norm clipping on), or use a "
                "checkpoint saved before it diverged")


def check_shapes(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                 file: Path, fix: str, error: type[WorkbenchError] = CheckpointError) -> None:
    """Raise ``error`` naming ``file``, its first tensor whose shape differs from the same
    name in ``expected`` (the model's own state dict), both shapes and ``fix``. Names the
    model lacks are left to the caller's missing / unexpected check."""
    wrong = [(k, list(v.shape), list(expected[k].shape)) for k, v in tensors.items()
             if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if not wrong:
        return
    name, found, want = wrong[0]
    more = ""
    if len(wrong) > 1:
        more = (f" ({len(wrong) - 1} more tensor(s) differ too: "
                f"{', '.join(w[0] for w in wrong[1:4])}{', …' if len(wrong) > 4 else ''})")
    raise error(f"{file}: tensor {name!r} has shape {found}, but the model its config builds "
                f"expects {want}{more}. The file was edited or comes from a model with other "
                f"settings (student.hidden, student.lora.r, feature dims): {fix}")


def check_finite(tensors: dict[str, torch.Tensor], file: Path, fix: str = DIVERGED_FIX,
                 error: type[WorkbenchError] = CheckpointError) -> None:
    """Raise ``error`` naming ``file`` and its tensors holding NaN or infinite values (with
    how many of their values are), and ``fix``."""
    bad = []
    for name, t in tensors.items():
        if t.is_floating_point() or t.is_complex():
            n = int((~torch.isfinite(t)).sum())
            if n:
                bad.append(f"{name!r} ({n} of {t.numel()} values)")
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise error(f"{file}: {len(bad)} tensor(s) hold NaN or infinite weights: {shown}; a "
                    f"model with them cannot predict: {fix}")


def _check_loaded(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                  file: Path) -> None:
    """A checkpoint's weight file fits its model (:func:`check_shapes`) and is finite
    (:func:`check_finite`)."""
    check_shapes(tensors, expected, file, "put back the file its run wrote, or load the "
                 "checkpoint directory whole, as saved, with the config.yaml beside it")
    check_finite(tensors, file)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu"
                    ) -> tuple[StudentModel, DistillConfig, CheckpointMeta]:
    """Rebuild the model a checkpoint holds and load its weights.

    Returns ``(model, cfg, meta)``: the model in eval mode on ``device``, the run's
    resolved config, and :class:`CheckpointMeta`. Raises :class:`CheckpointError` naming
    the missing or mismatching file.
    """
    meta = read_meta(path)
    p = meta.path
    cfg_path = p / CONFIG_FILE
    if not cfg_path.is_file():
        raise CheckpointError(f"checkpoint {p} has no {CONFIG_FILE}; it is incomplete")
    try:
        cfg = load_config(DistillConfig, cfg_path)
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {p}: its {CONFIG_FILE} does not load with this "
                              f"workbench: {e}") from None
    if cfg.student.prompted != (meta.kind == "prompted"):
        raise CheckpointError(f"checkpoint {p}: {STUDENT_FILE} says kind={meta.kind!r} but its "
                              f"config has student.prompted={cfg.student.prompted}")
    model = build_student(cfg.student, meta.info, meta.bins, device=device)
    rest = load_weights(p / WEIGHTS_FILE, "heads, feature encoders and fusion")
    _check_loaded(rest, model.state_dict(), p / WEIGHTS_FILE)
    result = model.load_state_dict(rest, strict=False)
    missing = [k for k in result.missing_keys
               if not k.startswith(TEXT_PREFIX) and not k.startswith(FROZEN_PREFIXES)]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"checkpoint {p}: {WEIGHTS_FILE} does not fit the model its config builds "
            f"(missing {missing[:8]}, unexpected {result.unexpected_keys[:8]}); was it written "
            "by another workbench version or edited by hand?")
    mode = cfg.student.text_mode
    if mode == "lora":
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        adapter_dir = p / ADAPTER_DIR
        if not (adapter_dir / "adapter_config.json").is_file():
            raise CheckpointError(f"checkpoint {p} has no {ADAPTER_DIR}/adapter_config.json "
                                  "(student.text_mode=lora); it is incomplete")
        adapter = load_weights(adapter_dir / "adapter_model.safetensors", "the LoRA adapter")
        _check_loaded(adapter, get_peft_model_state_dict(model.text.model),
                      adapter_dir / "adapter_model.safetensors")
        res = set_peft_model_state_dict(model.text.model, adapter)
        bad = [k for k in getattr(res, "unexpected_keys", []) if "lora_" in k]
        if bad:
            raise CheckpointError(f"checkpoint {p}: the adapter does not fit the text encoder "
                                  f"(unexpected {bad[:8]}); check student.lora in its config")
    elif mode == "full":
        text_sd = load_weights(p / TEXT_ENCODER_FILE, "the fine-tuned text encoder")
        _check_loaded(text_sd, model.text.model.state_dict(), p / TEXT_ENCODER_FILE)
        res = model.text.model.load_state_dict(text_sd, strict=False)
        if res.unexpected_keys or [k for k in res.missing_keys if "position_ids" not in k]:
            raise CheckpointError(f"checkpoint {p}: {TEXT_ENCODER_FILE} does not fit "
                                  f"{cfg.student.text_encoder} (missing {res.missing_keys[:8]}, "
                                  f"unexpected {res.unexpected_keys[:8]})")
    model.eval()
    log.info("loaded %s checkpoint %s (selected on %s %s=%.4f at epoch %s)", meta.kind, p,
             meta.selection.get("split"), meta.selection.get("metric"),
             float(meta.selection.get("value", float("nan"))), meta.selection.get("epoch"))
    return model, cfg, meta


# ---------------------------------------------------------------- discovery and file rules


WRITTEN_BY = "the trainer's save_checkpoint (students.checkpoint), run by `distill.py` after " \
             "each epoch that improves the validation metric"
REQUIRED_FILES: dict[str, str] = {
    CONFIG_FILE: "the resolved training config",
    STUDENT_FILE: "format version, model kind, label bins, text mode",
    DATA_INFO_FILE: "the training dataset's info and fingerprint",
    WEIGHTS_FILE: "the heads, feature encoders and fusion weights",
    SELECTION_FILE: "how the checkpoint was selected",
    TEACHER_MANIFEST_FILE: "the teacher cache jobs the run trained on",
    VERSIONS_FILE: "the package versions that produced it",
}
"""Every file a complete checkpoint holds (beside the text-mode files), with what it is."""
CHECKPOINT_MARKERS = (STUDENT_FILE, DATA_INFO_FILE, WEIGHTS_FILE, SELECTION_FILE,
                      TEACHER_MANIFEST_FILE)
"""Files only a checkpoint directory holds (a run directory has config.yaml too)."""


def checkpoint_name(path: Path) -> str:
    """``runs/x/checkpoint-best`` -> ``x``; any other directory -> its own name."""
    return path.parent.name if path.name == BEST_DIR and path.parent.name else path.name


def _is_checkpoint(p: Path) -> bool:
    """Whether ``p`` looks like a checkpoint (complete or not: check_files names the gaps)."""
    return p.is_dir() and any((p / f).is_file() for f in CHECKPOINT_MARKERS)


def find_checkpoints(args: Sequence[str]) -> list[Path]:
    """Checkpoint directories from arguments: checkpoints, run dirs, dirs of runs, globs.

    An argument may be a checkpoint directory, a run directory holding ``checkpoint-best/``,
    a directory of runs (each run's ``checkpoint-best/``), or a glob of any of these
    (``runs/*``; glob matches that are none of them are skipped). Duplicates are dropped;
    raises :class:`CheckpointError` for an argument that yields no checkpoint.
    """
    found: list[Path] = []
    for arg in args:
        is_glob = any(c in arg for c in "*?[") and not Path(arg).exists()
        paths = [Path(p) for p in sorted(glob.glob(arg))] if is_glob else [Path(arg)]
        if is_glob and not paths:
            raise CheckpointError(f"{arg!r} matches nothing; pass checkpoint directories "
                                  "(e.g. runs/*/checkpoint-best) or run directories")
        hits: list[Path] = []
        for p in paths:
            if _is_checkpoint(p / BEST_DIR):
                hits.append(p / BEST_DIR)
            elif _is_checkpoint(p):
                hits.append(p)
            elif p.is_dir():
                hits += [c / BEST_DIR for c in sorted(p.iterdir())
                         if c.is_dir() and _is_checkpoint(c / BEST_DIR)]
        if not hits:
            if not any(p.exists() for p in paths):
                raise CheckpointError(f"checkpoint {arg} does not exist; pass a run's "
                                      f"{BEST_DIR}/ directory (written by distill.py)")
            raise CheckpointError(
                f"{arg} is not a checkpoint (no {STUDENT_FILE}), holds no {BEST_DIR}/, and "
                f"holds no run directories with one; {BEST_DIR}/ is written by {WRITTEN_BY}")
        found += hits
    unique: dict[Path, Path] = {}
    for p in found:
        unique.setdefault(p.resolve(), p)
    return list(unique.values())


def unique_names(paths: Sequence[Path]) -> list[str]:
    """Short names for checkpoints (:func:`checkpoint_name`); when two collide, every name
    becomes its path relative to the checkpoints' common parent (without
    ``/checkpoint-best``)."""
    names = [checkpoint_name(p) for p in paths]
    if len(set(names)) == len(names):
        return names
    resolved = [p.resolve() for p in paths]
    common = Path(os.path.commonpath(resolved))
    out = []
    for r in resolved:
        rel = r.relative_to(common) if r != common else Path(r.name)
        if rel.name == BEST_DIR and len(rel.parts) > 1:
            rel = rel.parent
        out.append(rel.as_posix())
    return out


def check_files(path: Path) -> None:
    """Raise :class:`CheckpointError` naming every missing checkpoint file and what writes it."""
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a directory; pass a "
                              f"run's {BEST_DIR}/ directory (written by distill.py)")
    missing = [f"{name} ({what})" for name, what in REQUIRED_FILES.items()
               if not (path / name).is_file()]
    student = path / STUDENT_FILE
    if student.is_file():
        try:
            mode = json.loads(student.read_text()).get("text_mode")
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{student}: not valid JSON ({e}); the checkpoint is "
                                  "damaged, re-save it from its run") from None
        if mode == "lora":
            for name in ("adapter_config.json", "adapter_model.safetensors"):
                if not (path / ADAPTER_DIR / name).is_file():
                    missing.append(f"{ADAPTER_DIR}/{name} (the LoRA adapter, text_mode lora)")
        elif mode == "full" and not (path / TEXT_ENCODER_FILE).is_file():
            missing.append(f"{TEXT_ENCODER_FILE} (the fine-tuned text encoder, text_mode full)")
    if missing:
        raise CheckpointError(
            f"checkpoint {path} is missing {', '.join(missing)}. These files are written by "
            f"{WRITTEN_BY}; the run may have stopped before its first validation or the "
            "directory was copied in part. Point at a complete checkpoint or re-run training")
