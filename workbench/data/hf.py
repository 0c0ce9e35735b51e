"""Reader for Hugging Face ``datasets`` saved to disk by someone else.

A ``DatasetDict`` (one dataset per split) or a single ``Dataset`` with a split column,
with at least id, text, and a label column named as in the data config. Feature columns
``audio`` / ``vision`` may be flat vectors or nested lists (sequences).
Directories written by ``workbench data import`` are opened by :class:`MSADataset`
directly instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from workbench.config import DataConfig
from workbench.data.schema import DataError, Media, Sample


def read_hf(cfg: DataConfig) -> list[Sample]:
    from datasets import Dataset, DatasetDict, load_from_disk

    path = Path(cfg.path)
    try:
        obj = load_from_disk(str(path))
    except FileNotFoundError as e:
        raise DataError(f"{path}: not a dataset saved with save_to_disk ({e})") from None
    parts: list[tuple[str | None, Dataset]]
    if isinstance(obj, DatasetDict):
        parts = list(obj.items())
    else:
        parts = [(None, obj)]
    samples: list[Sample] = []
    for split_name, ds in parts:
        cols = set(ds.column_names)
        need = {cfg.id_column, cfg.text_column} | ({cfg.split_column} if split_name is None else set())
        missing = sorted(need - cols)
        if missing:
            raise DataError(
                f"{path}{f' [{split_name}]' if split_name else ''}: missing column(s) {missing} "
                f"(columns: {sorted(cols)}); set data.id_column / text_column / split_column"
            )
        for row in ds:
            raw = split_name if split_name is not None else str(row[cfg.split_column])
            s = Sample(
                id=str(row[cfg.id_column]),
                text=str(row[cfg.text_column] or "").strip(),
                split=cfg.split_names.get(raw, raw),
                label=None if row.get(cfg.label_column) is None else float(row[cfg.label_column]),
                label_class=None
                if not cfg.class_column or row.get(cfg.class_column) is None
                else int(row[cfg.class_column]),
                media=Media(
                    frames=list(row.get(cfg.frames_column) or []) if cfg.frames_column else [],
                    audio_file=row.get(cfg.audio_file_column) if cfg.audio_file_column else None,
                    video_file=row.get(cfg.video_file_column) if cfg.video_file_column else None,
                ),
            )
            for mod in ("audio", "vision"):
                if mod in cfg.modalities and row.get(mod) is not None:
                    arr = np.asarray(row[mod], dtype=np.float32)
                    setattr(s, mod, arr)
                    if arr.ndim == 2:
                        n = row.get(f"{mod}_length")
                        setattr(s, f"{mod}_length", int(n) if n is not None else arr.shape[0])
            samples.append(s)
    return samples
