"""Which evaluation a model card reports (:func:`find_eval`): the ``results.json`` of
``workbench eval`` for a checkpoint, tied to it by the selection and data fingerprint it
records, and the reference rows of the leaderboard written in the same call."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.evaluate import COMPLETE, default_out_dir
from eval.options import EvalError
from students.checkpoint import CONFIG_FILE, CheckpointMeta, checkpoint_name, read_meta
from workbench.config import ConfigError
from workbench.config.loader import load_yaml_text

RESULTS_FILE = "results.json"
SELECTION_KEYS = ("split", "metric", "mode", "epoch", "value", "stage")
"""Fields of ``selection.json`` that ``results.json`` repeats (``protocol.selection_record``):
equal ones tie an evaluation to this checkpoint, whatever its path is now."""


@dataclass
class EvalFound:
    """The evaluation outputs found for a checkpoint (:func:`find_eval`)."""

    results: dict[str, Any] | None = None
    """``results.json`` of ``workbench eval`` for this checkpoint; None: not evaluated."""
    path: Path | None = None
    """Where ``results`` was read."""
    note: str = ""
    """Without ``results``: where the card looked and why nothing was used."""
    references: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Reference rows (``ref: ...`` -> metrics) of the leaderboard written with it."""
    reference_about: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Reference row name -> its kind and source (``meta.references``)."""
    reference_path: Path | None = None


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        out = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise EvalError(f"{path}: cannot read {what} ({e}); write it again with `workbench "
                        "eval`") from None
    if not isinstance(out, dict):
        raise EvalError(f"{path}: {what} is not a JSON object; write it again with "
                        "`workbench eval`")
    return out


def run_config_data(checkpoint: Path) -> dict[str, Any]:
    """The checkpoint's ``config.yaml`` as plain data (what it records, not re-resolved),
    read with the bounded YAML loader every config goes through."""
    path = checkpoint / CONFIG_FILE
    try:
        out = load_yaml_text(path.read_text(encoding="utf-8"), str(path))
    except (OSError, ConfigError) as e:
        raise EvalError(f"checkpoint {checkpoint}: cannot read {CONFIG_FILE} ({e})") from None
    return out if isinstance(out, dict) else {}


def mismatch(results: dict[str, Any], meta: CheckpointMeta) -> str:
    """Why ``results`` is not the evaluation of the checkpoint ``meta`` describes ("" when
    it is): the selection it records (epoch, metric, value, ...) and the dataset
    fingerprint must be the checkpoint's."""
    record = (results.get("protocol") or {}).get("selection_record")
    if not isinstance(record, dict):
        return "it does not record which checkpoint selection it evaluated"
    mine = {k: meta.selection.get(k) for k in SELECTION_KEYS}
    theirs = {k: record.get(k) for k in SELECTION_KEYS}
    if mine != theirs:
        return (f"it evaluated a checkpoint selected at epoch {theirs['epoch']} "
                f"({theirs['metric']} = {theirs['value']}), this one was selected at epoch "
                f"{mine['epoch']} ({mine['metric']} = {mine['value']})")
    fp = ((results.get("meta") or {}).get("data") or {}).get("fingerprint")
    if fp != meta.info.fingerprint:
        return f"it evaluated data {fp}, the checkpoint was trained on {meta.info.fingerprint}"
    return ""


def _references(board_paths: list[Path], results: dict[str, Any], found: EvalFound) -> None:
    """Take the ``ref: ...`` rows of the first leaderboard in ``board_paths`` that holds this
    very evaluation (its row equals ``results``' complete metrics)."""
    name = (results.get("meta") or {}).get("name")
    complete = (results.get("leaderboard") or {}).get(COMPLETE)
    for board_path in board_paths:
        if not board_path.is_file():
            continue
        board = _read_json(board_path, "the leaderboard's results.json")
        rows = board.get("leaderboard") or {}
        if name in rows and rows[name] == complete:
            found.references = {k: v for k, v in rows.items() if k.startswith("ref: ")}
            found.reference_about = dict((board.get("meta") or {}).get("references") or {})
            found.reference_path = board_path
            return


def find_eval(checkpoint: str | Path, given: str | Path | None = None) -> EvalFound:
    """The evaluation of ``checkpoint`` the card reports.

    ``given`` (``workbench export --eval``): a ``results.json`` of ``workbench eval`` or its
    folder, or the leaderboard folder of ``workbench eval ... --out DIR`` (the checkpoint's
    own ``DIR/<name>/results.json`` is read); one that is not this checkpoint's
    evaluation is refused. Without it: ``<run>/eval-<split>/results.json``, where
    ``workbench eval`` writes by default (``split``: the checkpoint's ``eval.split``); a
    file there of another checkpoint is left out and the card says why.

    Reference rows come from the leaderboard written in the same call: the ``results.json``
    one folder above the checkpoint's (``--out DIR``), or ``<run>/leaderboard-<split>/``
    (the default), when its row for this checkpoint equals the evaluation's.
    """
    ckpt = Path(checkpoint)
    meta = read_meta(ckpt)
    split = str((run_config_data(ckpt).get("eval") or {}).get("split") or "test")
    default_board = ckpt.parent / f"leaderboard-{split}" / RESULTS_FILE
    if given is None:
        path = default_out_dir(ckpt, split) / RESULTS_FILE
        command = f"`workbench eval {ckpt}`"
        if not path.is_file():
            return EvalFound(note=f"no results.json at {path}, where {command} writes it")
        results = _read_json(path, "the evaluation's results.json")
        why = mismatch(results, meta)
        if why:
            return EvalFound(note=f"{path} is not this checkpoint's evaluation: {why}; run "
                                  f"{command} again")
        found = EvalFound(results=results, path=path)
        _references([default_board], results, found)
        return found
    path = Path(given)
    if path.is_dir():
        path = path / RESULTS_FILE
    if not path.is_file():
        raise EvalError(f"--eval {given}: no {RESULTS_FILE} there; write one with `workbench "
                        f"eval {ckpt} --out DIR` and pass DIR")
    results = _read_json(path, "the evaluation's results.json")
    board_path = path.parent.parent / RESULTS_FILE
    listed = (results.get("meta") or {}).get("checkpoints")
    if isinstance(listed, dict):  # a leaderboard: this checkpoint's own results sit below it
        same = [n for n, v in listed.items() if Path(str(v)).resolve() == ckpt.resolve()]
        name = same[0] if same else checkpoint_name(ckpt)
        if name not in listed:
            raise EvalError(f"--eval {given}: the leaderboard lists {sorted(listed)}, not "
                            f"{name}; pass the folder of this checkpoint's results.json")
        board_path, path = path, path.parent / name / RESULTS_FILE
        if not path.is_file():
            raise EvalError(f"--eval {given}: no {path}; pass the folder of this "
                            "checkpoint's results.json")
        results = _read_json(path, "the evaluation's results.json")
    why = mismatch(results, meta)
    if why:
        raise EvalError(f"--eval {given}: {path} is not the evaluation of {ckpt}: {why}; "
                        f"evaluate it with `workbench eval {ckpt}`")
    found = EvalFound(results=results, path=path)
    _references([board_path, default_board], results, found)
    return found
