"""Protocol guards: refuse to report numbers that the checkpoint's own history makes unfair.

Two rules, checked from what a checkpoint records (:mod:`students.checkpoint`):

1. **Selection.** ``selection.json`` says on which split the checkpoint was chosen (the
   trainer always writes ``split: valid``). Reporting that split would report a number the
   checkpoint was picked to maximise, so it is refused. The same holds for the prompted
   (privileged) network a student learned from: its ``selection`` is recorded inside
   ``teacher_manifest.json`` (``privileged.selection``) and is checked too.
2. **Gold-label prompts.** ``teacher_manifest.json`` lists the teacher cache jobs the run
   trained on -- ``soft_labels`` and ``descriptions``, each with ``job.uses_gold_label``
   and ``splits`` (the splits whose samples the run read that job's outputs for), and
   recursively the prompted network's own manifest under ``privileged.teacher_manifest``.
   A job whose prompt showed the gold label is accepted only when its recorded ``splits``
   are train only. A gold-label job that covered the reported split, any split other than
   train, or that records no ``splits`` at all is refused.

   *Assumption:* a job's ``splits`` are the splits the run actually read its outputs for.
   The trainer guarantees this (``workbench.cache.join.teacher_view`` is called with
   exactly those samples and refuses gold-label outputs for anything but train samples),
   but the manifest cannot prove it after the fact; a hand-edited manifest is trusted.

Evaluating on the training split itself is allowed (for diagnosis) but flagged: the
report says ``trained_on_split: true`` and a warning is logged.

:func:`check_protocol` raises :class:`ProtocolError` (message: what is wrong, where, what
to do) or returns the protocol statement that goes into ``results.json``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from workbench.errors import WorkbenchError

log = logging.getLogger(__name__)

SELECTION_FILE = "selection.json"
MANIFEST_FILE = "teacher_manifest.json"
TEACHER_ROLES = ("soft_labels", "descriptions")
"""Keys of ``teacher_manifest.json`` that describe one cache job each (or null)."""

GOLD_LABEL_ASSUMPTION = (
    "teacher_manifest.json records, per cache job, the splits whose samples the run read "
    "that job's outputs for ('splits'); a job whose prompt showed the gold label "
    "(job.uses_gold_label) is accepted only when those splits are train only. We assume the "
    "recorded splits are the ones the run used, which the trainer enforces "
    "(workbench.cache.join.teacher_view refuses gold-label outputs for non-train samples)."
)


class ProtocolError(WorkbenchError, ValueError):
    """Reporting this checkpoint on this split would break the evaluation protocol."""


def iter_jobs(manifest: Mapping[str, Any], where: str = MANIFEST_FILE
              ) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every cache-job entry of a teacher manifest, with a dotted path naming where it is.

    Yields ``("soft_labels", entry)``, ``("descriptions", entry)`` and, for a student that
    learned from a prompted network, ``("privileged.teacher_manifest.descriptions", ...)``
    and so on. Entries that are null (no such signal) are skipped.
    """
    for role in TEACHER_ROLES:
        entry = manifest.get(role)
        if entry is None:
            continue
        if not isinstance(entry, Mapping):
            raise ProtocolError(f"{where}: {role!r} should be a job entry or null, got "
                                f"{type(entry).__name__}; the manifest is damaged")
        yield role, entry
    privileged = manifest.get("privileged")
    if isinstance(privileged, Mapping):
        nested = privileged.get("teacher_manifest")
        if isinstance(nested, Mapping):
            for path, entry in iter_jobs(nested, where):
                yield f"privileged.teacher_manifest.{path}", entry


def _selection_statement(sel: Mapping[str, Any]) -> str:
    value = sel.get("value")
    shown = f"{float(value):.4f}" if isinstance(value, (int, float)) else str(value)
    stage = f" (stage {sel['stage']})" if sel.get("stage") else ""
    averaged = sel.get("averaged_epochs")
    if isinstance(averaged, list) and len(averaged) == 2:
        return (f"weights averaged over epochs {averaged[0]}-{averaged[1]} (no epoch "
                f"selected); {sel.get('metric')} on the {sel.get('split')!r} split = "
                f"{shown}{stage}")
    return (f"selected on the {sel.get('split')!r} split by {sel.get('metric')} "
            f"({sel.get('mode')}) at epoch {sel.get('epoch')} = {shown}{stage}")


def check_selection(selection: Mapping[str, Any], split: str, where: Path | str) -> str:
    """Refuse when ``selection`` (a ``selection.json``) used ``split``; return a statement."""
    sel_split = selection.get("split")
    if not sel_split:
        raise ProtocolError(
            f"{where}: {SELECTION_FILE} records no 'split', so it cannot be shown that the "
            f"{split!r} split was not used to choose this checkpoint; re-save the checkpoint "
            "with the trainer (it records split: valid)")
    if sel_split == split:
        raise ProtocolError(
            f"{where}: the checkpoint was selected on the {split!r} split "
            f"({SELECTION_FILE}: metric {selection.get('metric')}, epoch "
            f"{selection.get('epoch')}); its {split!r} numbers are optimistic by construction. "
            "Report another split (e.g. --split test)")
    return _selection_statement(selection)


def check_gold_labels(manifest: Mapping[str, Any], split: str, where: Path | str
                      ) -> list[dict[str, Any]]:
    """Refuse gold-label jobs that covered ``split`` or anything but train.

    Returns one record per gold-label job found (all of them acceptable).
    """
    found: list[dict[str, Any]] = []
    for path, entry in iter_jobs(manifest):
        job = entry.get("job") or {}
        if not job.get("uses_gold_label"):
            continue
        splits = entry.get("splits")
        name = f"{path} (job {job.get('job')}, template {job.get('template')!r})"
        if not isinstance(splits, list) or not splits:
            raise ProtocolError(
                f"{where}/{MANIFEST_FILE}: {name} showed the gold label to the teacher but "
                "records no 'splits', so it cannot be shown that it covered train samples "
                "only; retrain with this workbench (it records the splits) or with a template "
                "that does not show the label")
        if split in splits:
            raise ProtocolError(
                f"{where}/{MANIFEST_FILE}: {name} showed the gold label to the teacher for "
                f"{splits} samples, including the {split!r} split being reported; these "
                "numbers would be contaminated. Report a split the job did not cover, or "
                "retrain without gold-label prompts on that split")
        if any(s != "train" for s in splits):
            raise ProtocolError(
                f"{where}/{MANIFEST_FILE}: {name} showed the gold label to the teacher for "
                f"{splits} samples; gold-label prompts are allowed for train samples only. "
                "Retrain with a template that does not show the label for valid/test")
        found.append({"where": path, "job": job.get("job"), "template": job.get("template"),
                      "splits": list(splits)})
    if manifest.get("uses_gold_label") and not found:
        raise ProtocolError(
            f"{where}/{MANIFEST_FILE}: says uses_gold_label=true but names no gold-label job "
            "with its splits; the manifest is inconsistent, re-save the checkpoint")
    return found


def check_protocol(selection: Mapping[str, Any], manifest: Mapping[str, Any], split: str,
                   where: Path | str) -> dict[str, Any]:
    """Apply both rules to one checkpoint for one reported ``split``.

    ``selection`` and ``manifest`` are the checkpoint's ``selection.json`` and
    ``teacher_manifest.json``; ``where`` names the checkpoint in messages. Returns the
    protocol statement for ``results.json``: ``selection`` (statement and record),
    ``privileged_selection`` (when a prompted network was used), ``gold_label_jobs``,
    ``trained_on_split`` and ``assumptions``. Raises :class:`ProtocolError`.
    """
    statement = check_selection(selection, split, where)
    out: dict[str, Any] = {
        "split": split,
        "selection": statement,
        "selection_record": {k: selection.get(k)
                             for k in ("split", "metric", "mode", "epoch", "value", "stage",
                                       "averaged_epochs")
                             if k != "averaged_epochs" or k in selection},
    }
    privileged = manifest.get("privileged")
    if isinstance(privileged, Mapping) and isinstance(privileged.get("selection"), Mapping):
        out["privileged_selection"] = check_selection(
            privileged["selection"], split,
            f"{where}/{MANIFEST_FILE} (privileged network {privileged.get('checkpoint')})")
    out["gold_label_jobs"] = check_gold_labels(manifest, split, where)
    out["trained_on_split"] = split == "train"
    if split == "train":
        log.warning("%s: reporting the train split, which the checkpoint was trained on; "
                    "these are training-set numbers, not a generalisation estimate", where)
    out["assumptions"] = [GOLD_LABEL_ASSUMPTION]
    return out
