"""Reference rows: systems a student is compared with that are not checkpoints -- the
majority class of train (or the train mean), a frozen-encoder linear probe
(:mod:`eval.baselines`), and the teacher itself scored from its cache
(:mod:`eval.teacher_eval`).

A :class:`ReferenceTable` is written (:func:`write_reference`) as a ``results.json`` in the
shape of a checkpoint's (schema of :mod:`eval.report`): ``metric_set``, ``leaderboard`` (row
name -> metrics) and ``meta``, whose ``kind`` is ``"reference"`` and whose ``rows`` say per
row what it is (``kind``: ``majority``, ``mean``, ``probe`` or ``teacher``, and how it was
made). :func:`read_references` reads such files back for the leaderboard
(``workbench eval CKPT... --reference DIR``), which shows their rows named ``ref: ...`` and
never pools them into a recipe group; :func:`check_references` refuses rows computed on
another split, metric set or evaluated data.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.options import EvalError
from eval.report import write_results
from workbench.config import DataConfig, dump_config
from workbench.data import MSADataset, fingerprint
from workbench.data.schema import Sample

REFERENCE = "reference"
"""``meta.kind`` of a reference ``results.json``."""
PREFIX = "ref: "
"""How a reference row is named in a leaderboard."""
RESULTS = "results.json"


@dataclass
class ReferenceTable:
    """Reference rows on one split of one dataset."""

    title: str
    """What made them: ``baselines`` or ``teacher``."""
    metric_set: str
    split: str
    n_samples: int
    data: dict[str, Any]
    """:func:`data_summary` of the evaluated data."""
    rows: dict[str, dict[str, float]]
    """Row name -> metrics (the dataset's metric set)."""
    about: dict[str, dict[str, Any]]
    """Row name -> what it is (``kind``) and how it was made."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Other facts (train size, timings, the teacher's answer rate, ...)."""
    source: str = ""
    """The file it was read from ("" when computed here)."""

    def results(self) -> dict[str, Any]:
        """``results.json`` content (module docstring)."""
        return {"metric_set": self.metric_set, "leaderboard": self.rows,
                "meta": {**self.meta, "kind": REFERENCE, "title": self.title,
                         "split": self.split, "n_samples": self.n_samples, "data": self.data,
                         "rows": self.about}}


def data_summary(cfg: DataConfig, ds: MSADataset, samples: Sequence[Sample]) -> dict[str, Any]:
    """The evaluated data as results record it: name, fingerprints (the dataset's and the
    evaluated split's own, which a train subset does not change), path, subset, split sizes."""
    return {"name": ds.info.name, "fingerprint": ds.fingerprint,
            "split_fingerprint": fingerprint(list(samples)), "path": cfg.path,
            "subset": dict(cfg.subset), "splits": {s: ds.num_rows(s) for s in ds.splits}}


def write_reference(table: ReferenceTable, out_dir: str | Path, config: Any) -> list[Path]:
    """``results.json`` / ``results.md`` of ``table``, and the resolved ``config`` (a
    dataclass or a mapping of them) as ``config.yaml`` with ``versions.json``."""
    out = Path(out_dir)
    paths = list(write_results(out, table.results(), row_header="system"))
    paths.append(dump_config(config, out))
    return paths


def _results_file(path: Path) -> Path:
    target = path / RESULTS if path.is_dir() else path
    if not target.is_file():
        raise EvalError(f"--reference {path}: no {RESULTS} there; write one with "
                        "`workbench baselines DATA --out DIR` or `workbench eval-teacher CACHE "
                        "--data DATA --out DIR`")
    return target


def read_reference(path: str | Path) -> ReferenceTable:
    """The reference rows of a ``results.json`` (or a directory holding one)."""
    target = _results_file(Path(path))
    try:
        res = json.loads(target.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise EvalError(f"--reference {target}: cannot read it as JSON ({e})") from None
    meta = res.get("meta") if isinstance(res, dict) else None
    if not isinstance(meta, dict) or meta.get("kind") != REFERENCE:
        raise EvalError(f"--reference {target} holds no reference rows (its meta.kind is "
                        f"{meta.get('kind') if isinstance(meta, dict) else None!r}); --reference "
                        "takes what `workbench baselines` or `workbench eval-teacher` wrote; "
                        "pass a checkpoint as an argument instead")
    rows = res.get("leaderboard") or {}
    if not rows:
        raise EvalError(f"--reference {target}: it has no rows")
    return ReferenceTable(title=str(meta.get("title", "")), metric_set=str(res.get("metric_set")),
                          split=str(meta.get("split")), n_samples=int(meta.get("n_samples", 0)),
                          data=meta.get("data") or {}, rows=rows, about=meta.get("rows") or {},
                          meta=meta, source=str(target))


def read_references(paths: Iterable[str | Path]) -> list[ReferenceTable]:
    return [read_reference(p) for p in paths]


def check_references(refs: Sequence[ReferenceTable], *, split: str,
                     metric_set: str | None = None, split_fingerprints: set[str] | None = None
                     ) -> None:
    """Refuse reference rows of another split or metric set, or computed on other data
    (their evaluated split's fingerprint is not the checkpoints'; a file without one is
    let through). ``None``: not checked (yet)."""
    for ref in refs:
        if ref.split != split:
            raise EvalError(f"--reference {ref.source} is on the {ref.split!r} split, the "
                            f"checkpoints on {split!r}; compute it again with --split {split}")
        if metric_set is not None and ref.metric_set != metric_set:
            raise EvalError(f"--reference {ref.source} uses metric set {ref.metric_set!r}, the "
                            f"checkpoints {metric_set!r}: it is another dataset")
        theirs = ref.data.get("split_fingerprint")
        if theirs and split_fingerprints and theirs not in split_fingerprints:
            raise EvalError(
                f"--reference {ref.source} was computed on other data: its {split} split has "
                f"fingerprint {theirs}, the checkpoints' {sorted(split_fingerprints)}; compute "
                "it on the data the checkpoints are evaluated on")


def reference_rows(refs: Sequence[ReferenceTable]) -> tuple[dict[str, dict[str, Any]],
                                                             dict[str, dict[str, Any]]]:
    """``(rows, about)`` for a leaderboard: every reference row named ``ref: <row>`` (a name
    two files share gets the file's directory in brackets), and per row its ``kind`` and
    ``source``."""
    rows: dict[str, dict[str, Any]] = {}
    about: dict[str, dict[str, Any]] = {}
    for ref in refs:
        for name, metrics in ref.rows.items():
            shown = PREFIX + name
            if shown in rows:
                shown = f"{shown} [{Path(ref.source).parent.name or ref.source}]"
            if shown in rows:
                raise EvalError(f"--reference {ref.source} repeats row {name!r} of another "
                                "reference from the same directory; pass each file once")
            rows[shown] = metrics
            kind = (ref.about.get(name) or {}).get("kind", ref.title)
            about[shown] = {"kind": kind, "source": ref.source}
    return rows, about
