"""Declared sizes of the arrays in a ``.npy`` / ``.npz`` file, checked before loading.

``np.load`` allocates an array at the size its ``.npy`` header declares before reading a
byte of data, so a 2 MB file declaring a 2 GB array asks for 2 GB. :func:`check_npz` and
:func:`check_npy` read each header alone (``numpy.lib.format.read_magic`` and
``read_array_header_1_0`` / ``_2_0``; no data) and refuse, as one :class:`DataError`
naming the file, the array, its declared shape, dtype and size, and what to do:

- an array declaring more bytes than its member (or file) holds: truncated or damaged;
  this never refuses a file numpy could read;
- a member whose compressed bytes reach past the end of the file (a damaged directory);
- an array over ``LIMIT_BYTES`` (1 GiB) stored in less than ``1 / MAX_RATIO`` (1/100) of
  its size: deflate reaches such ratios only on long runs of one byte value (a
  decompression bomb); real features, even mostly zero padding, stay far below.
  An uncompressed (``np.savez``) file of any size passes.

Reading errors of the file itself (not a zip, a bad header, a bad CRC) are not caught
here: each site reports them as it already does, and :data:`READ_ERRORS` lists them.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path
from typing import IO

import numpy as np
from numpy.lib import format as npy_format

from workbench.data.schema import DataError

LIMIT_BYTES = 1 << 30
"""Arrays above this size must be stored in at least ``1 / MAX_RATIO`` of it."""
MAX_RATIO = 100
"""The highest compression ratio accepted for an array above ``LIMIT_BYTES``."""
READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError)
"""What reading a damaged ``.npy`` / ``.npz`` file raises."""


def human_bytes(n: int) -> str:
    """``n`` bytes as B, KB, MB, GB or TB (powers of 1000)."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def _header(f: IO[bytes]) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header length in bytes) of the ``.npy`` stream ``f`` (data unread)."""
    version = npy_format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = npy_format.read_array_header_1_0(f)
    elif version in ((2, 0), (3, 0)):  # 3.0 is 2.0 with a UTF-8 header
        shape, _, dtype = npy_format.read_array_header_2_0(f)
    else:
        raise ValueError(f"unknown .npy format version {version}")
    return tuple(shape), dtype, f.tell()


def _describe(shape: tuple[int, ...], dtype: np.dtype, nbytes: int) -> str:
    return f"shape {shape} of {dtype} ({human_bytes(nbytes)})"


def check_npy(path: str | Path, fix: str) -> None:
    """Refuse a ``.npy`` file whose array declares more bytes than the file holds;
    ``fix`` is the sentence of the error saying what to do."""
    p = Path(path)
    with p.open("rb") as f:
        shape, dtype, header_len = _header(f)
    nbytes = math.prod(shape) * dtype.itemsize
    holds = p.stat().st_size - header_len
    if nbytes > holds:
        raise DataError(f"{p}: the array declares {_describe(shape, dtype, nbytes)} but the "
                        f"file holds only {human_bytes(max(holds, 0))} of data (truncated or "
                        f"damaged); {fix}")


def check_npz(path: str | Path, fix: str, limit_bytes: int = LIMIT_BYTES,
              max_ratio: float = MAX_RATIO) -> None:
    """Refuse a ``.npz`` file with an array larger than it can hold or than is plausible
    (see the module's rules); ``fix`` is the sentence of the error saying what to do."""
    p = Path(path)
    file_size = p.stat().st_size
    with zipfile.ZipFile(p) as zf:
        for info in zf.infolist():
            is_npy = info.filename.endswith(".npy")
            name = info.filename[:-4] if is_npy else info.filename
            where = f"{p}: array {name!r}"
            if info.header_offset + info.compress_size > file_size:
                raise DataError(f"{where} claims {human_bytes(info.compress_size)} of stored "
                                f"data, past the end of the {human_bytes(file_size)} file "
                                f"(truncated or damaged); {fix}")
            if is_npy:
                with zf.open(info) as f:
                    shape, dtype, header_len = _header(f)
                nbytes = math.prod(shape) * dtype.itemsize
                holds = info.file_size - header_len
                what = _describe(shape, dtype, nbytes)
                if nbytes > holds:
                    raise DataError(f"{where} declares {what} but its member holds only "
                                    f"{human_bytes(max(holds, 0))} of data (truncated or "
                                    f"damaged); {fix}")
            else:
                nbytes = info.file_size
                what = f"{human_bytes(nbytes)} of raw bytes"
            stored = max(info.compress_size, 1)
            if nbytes > limit_bytes and nbytes > max_ratio * stored:
                raise DataError(
                    f"{where} declares {what} from {human_bytes(stored)} stored, "
                    f"{nbytes / stored:.0f} times its stored size: past "
                    f"{human_bytes(limit_bytes)} at most {max_ratio:g} times is accepted (a "
                    f"compressed array that large is a decompression bomb, not features); {fix}")
