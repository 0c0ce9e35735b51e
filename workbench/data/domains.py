"""The domain of a sample, as the data config declares it (``data.domain``).

* ``""``: no domains.
* ``name``: the dataset's name (``data.name``) -- one domain per dataset, for training or
  evaluating across datasets.
* ``column:COL``: the value of manifest column ``COL`` (kept in the sample's ``meta``);
  e.g. the synthetic generator's ``domain`` column.
* ``source:N``: the sample's source (its id up to the last ``_``, e.g. a MOSI video) hashed
  into ``N`` groups ``source0 .. source{N-1}`` -- a fixed split of the sources.

Used by MIDG's invariance penalty (``student.midg.enabled``), by ``train.holdout_domain``
and by the leave-one-domain-out protocol (:mod:`eval.domains`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from workbench.config.data import check_domain_spec
from workbench.data.schema import DataError, Sample


def sample_domain(sample: Sample, spec: str, dataset: str) -> str:
    """The domain of ``sample`` under ``spec`` ('' with no domains)."""
    if not spec:
        return ""
    if spec == "name":
        return dataset
    if spec.startswith("column:"):
        col = spec[len("column:"):].strip()
        value = sample.meta.get(col)
        if value in (None, ""):
            raise DataError(f"sample {sample.id!r} has no value in column {col!r}, which "
                            f"data.domain={spec!r} reads; fill the column for every row or "
                            "set data.domain to another source")
        return str(value)
    if spec.startswith("source:"):
        n = int(spec[len("source:"):])
        source = sample.id.rsplit("_", 1)[0]
        digest = hashlib.blake2b(source.encode(), digest_size=8).digest()
        return f"source{int.from_bytes(digest, 'little') % n}"
    raise DataError(f"data.domain={spec!r}: {check_domain_spec(spec)}")


def domain_names(samples: Iterable[Sample], spec: str, dataset: str) -> list[str]:
    """The sorted domains of ``samples``."""
    return sorted({sample_domain(s, spec, dataset) for s in samples} - {""})
