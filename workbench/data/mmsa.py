"""Reader for MMSA-format pickles (the MSA field's de facto dataset format).

Layout: ``{split: {'id', 'raw_text', 'text' | 'text_bert', 'audio', 'vision',
'audio_lengths', 'vision_lengths', 'regression_labels', 'classification_labels'}}`` with
split in train/valid/test. The unaligned variant carries ``*_lengths``; the aligned one
pads audio/vision to the text length and has none, so lengths are read off the padding.

Pickles run code when loaded. :class:`SafeUnpickler` admits only numpy arrays, numpy
scalars/dtypes and plain containers; any other global is refused before it is created.
"""

from __future__ import annotations

import _compat_pickle
import io
import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from workbench.config import DataConfig
from workbench.data.schema import DataError, Sample

log = logging.getLogger(__name__)

# (module, name) pairs a pickle may reference. numpy moved its internals from
# numpy.core to numpy._core in 2.0; pickles written by either must load.
_ALLOWED_GLOBALS = {
    (mod, name)
    for base in ("numpy.core", "numpy._core")
    for mod, name in (
        (f"{base}.multiarray", "_reconstruct"),
        (f"{base}.multiarray", "scalar"),
        (f"{base}.numeric", "_frombuffer"),
    )
} | {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "complex"),
    ("builtins", "slice"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # how protocol 2 pickles of py2/py3 bytes are stored
}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays and plain containers, and nothing else."""

    def __init__(self, file: Any, source: str) -> None:
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        # protocol 0-2 pickles name Python 2 modules (__builtin__, copy_reg): map them as
        # the stock unpickler does, then check the Python 3 name.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise DataError(
            f"{self._source}: refused to load {module}.{name}: MMSA pickles may hold only numpy "
            "arrays and plain containers, and unpickling anything else could run code. "
            "If you trust the file, convert it to a manifest + .npz and use the manifest reader."
        )

    def persistent_load(self, pid: Any) -> Any:  # pragma: no cover - never legitimate here
        raise DataError(f"{self._source}: persistent ids are not allowed in an MMSA pickle")


def safe_load_pickle(path: str | Path) -> Any:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"MMSA pickle {p} does not exist: check data.path")
    with p.open("rb") as f:
        data = f.read()
    try:
        return SafeUnpickler(io.BytesIO(data), str(p)).load()
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise DataError(f"{p}: not a readable pickle ({type(e).__name__}: {e})") from None


_SPLIT_ALIASES = {"train": "train", "valid": "valid", "val": "valid", "dev": "valid", "test": "test"}


def _as_str(x: Any) -> str:
    if isinstance(x, bytes):
        return x.decode("utf-8", errors="replace")
    return str(x)


def _lengths_from_padding(seq: np.ndarray) -> np.ndarray:
    """Frames up to the last non-zero one (aligned MMSA data pads with zero rows)."""
    nonzero = np.abs(seq).reshape(seq.shape[0], seq.shape[1], -1).sum(-1) > 0
    any_nz = nonzero.any(axis=1)
    last = seq.shape[1] - np.argmax(nonzero[:, ::-1], axis=1)
    return np.where(any_nz, last, 0).astype(np.int64)


def _entry(i: int, ids: list[str]) -> str:
    return f"entry {i} (id {ids[i]!r})" if i < len(ids) else f"entry {i}"


def _numeric(values: Any, dtype: Any, where: str, field: str, ids: list[str], fix: str) -> np.ndarray:
    """``values`` as a numeric array, or a :class:`DataError` naming the first entry that is
    not a number (its index and sample id) and ``fix``."""
    arr = np.asarray(values)
    try:
        return arr.astype(dtype)
    except (TypeError, ValueError):
        pass
    flat = arr.reshape(arr.shape[0], -1) if arr.ndim > 1 else arr.reshape(-1, 1)
    for i, row in enumerate(flat):
        for v in row:
            try:
                float(v)
            except (TypeError, ValueError):
                raise DataError(f"{where}: {field} must be numbers, but {_entry(i, ids)} is "
                                f"{_as_str(v)!r}; {fix}") from None
    raise DataError(f"{where}: {field} does not convert to {np.dtype(dtype).name}; {fix}")


def _scores(values: Any, where: str, ids: list[str]) -> np.ndarray:
    return _numeric(values, np.float64, where, "regression_labels", ids,
                    "store sentiment scores as numbers (e.g. -3..3)").reshape(-1)


def _class_indices(values: Any, cfg: DataConfig, where: str, ids: list[str]) -> np.ndarray:
    """Class indices; names listed in ``data.class_names`` are mapped to their index."""
    arr = np.asarray(values).reshape(-1)
    if arr.dtype.kind in "USO" and cfg.class_names:
        names = {n: i for i, n in enumerate(cfg.class_names)}
        arr = np.array([names.get(_as_str(v), v) for v in arr], dtype=object)
    fix = ("store class indices, or list the class names in data.class_names"
           f" (now {cfg.class_names})")
    out = _numeric(arr, np.float64, where, "classification_labels", ids, fix)
    bad = [i for i, v in enumerate(out) if not float(v).is_integer()]
    if bad:
        raise DataError(f"{where}: classification_labels must be whole class indices, but "
                        f"{_entry(bad[0], ids)} is {out[bad[0]]}; {fix}")
    return out.astype(np.int64)


def read_mmsa(cfg: DataConfig) -> list[Sample]:
    """Read an MMSA pickle into samples of the modalities in ``cfg.modalities``."""
    source = cfg.path
    data = safe_load_pickle(source)
    if not isinstance(data, dict):
        raise DataError(f"{source}: expected a dict of splits, got {type(data).__name__}")
    unknown = [k for k in data if k not in _SPLIT_ALIASES]
    if unknown:
        raise DataError(
            f"{source}: unknown split key(s) {unknown}; an MMSA pickle has train/valid/test"
        )
    samples: list[Sample] = []
    for raw_split, part in data.items():
        split = _SPLIT_ALIASES[raw_split]
        where = f"{source} [{raw_split}]"
        if not isinstance(part, dict):
            raise DataError(f"{where}: expected a dict of arrays, got {type(part).__name__}")
        for key in ("id", cfg.mmsa_text_key):
            if key not in part:
                raise DataError(f"{where}: missing field {key!r} (has {sorted(part)})")
        ids = [_as_str(x) for x in np.asarray(part["id"]).reshape(-1)]
        texts = [_as_str(x) for x in np.asarray(part[cfg.mmsa_text_key]).reshape(-1)]
        n = len(ids)
        reg = part.get("regression_labels", part.get("labels"))
        if isinstance(reg, dict):  # SIMS-style {'M': ..., 'T': ...}
            reg = reg.get("M")
        cls = part.get("classification_labels")
        if isinstance(cls, dict):
            cls = cls.get("M")
        if reg is None and cls is None:
            raise DataError(f"{where}: no regression_labels or classification_labels")
        reg_arr = None if reg is None else _scores(reg, where, ids)
        cls_arr = None if cls is None else _class_indices(cls, cfg, where, ids)
        feats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for mod in ("audio", "vision"):
            if mod not in cfg.modalities or mod not in part:
                continue
            arr = _numeric(part[mod], np.float32, where, mod, ids,
                           "write the features as float arrays")
            if arr.shape[0] != n:
                raise DataError(f"{where}: {mod} has {arr.shape[0]} rows but there are {n} ids")
            if arr.ndim == 3:
                lens = part.get(f"{mod}_lengths")
                lengths = (
                    np.asarray(lens, dtype=np.int64).reshape(-1)
                    if lens is not None
                    else _lengths_from_padding(arr)
                )
            elif arr.ndim == 2:
                lengths = np.full(n, -1, dtype=np.int64)  # utterance vectors
            else:
                raise DataError(f"{where}: {mod} must be (N, d) or (N, T, d), got {arr.shape}")
            feats[mod] = (arr.astype(np.float32, copy=False), lengths)
        for name, arr in (("raw_text", texts), ("labels", reg_arr if reg_arr is not None else cls_arr)):
            if len(arr) != n:
                raise DataError(f"{where}: {name} has {len(arr)} entries but there are {n} ids")
        for i in range(n):
            s = Sample(
                id=ids[i],
                text=texts[i].strip(),
                split=split,
                label=None if reg_arr is None else float(reg_arr[i]),
                label_class=None if cls_arr is None else int(cls_arr[i]),
            )
            for mod, (arr, lengths) in feats.items():
                setattr(s, mod, arr[i])
                setattr(s, f"{mod}_length", None if lengths[i] < 0 else int(lengths[i]))
            samples.append(s)
    log.info("read %d samples from %s", len(samples), source)
    return samples
