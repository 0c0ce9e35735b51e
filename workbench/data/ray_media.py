"""The media stage on Ray (``media.engine: ray``): each clip decoded as one Ray Data task.

``workbench.data.ingest`` calls :func:`ray_records` in place of its worker processes. Each
clip runs :func:`workbench.data.ingest.process_clip` unchanged (decode, frames, 16 kHz
audio, eGeMAPS) in a Ray Data ``map`` task reserving 1 CPU, one clip per block so a clip's
record comes back as soon as it is done; records stream back to the driver in the order
clips finish, and the driver does the rest as with worker processes (progress, the
error-rate stop, the dataset).

Where things must live on a cluster: the workers open the media files by the manifest's
paths (made absolute here, against this process's working directory) and write frames,
WAVs and per-clip records into ``OUT/media``; both must be on storage every node mounts at
the same path (NFS, a shared volume). A local instance (empty address) needs nothing.

Rows cross Ray as ``{"spec": JSON text}`` and ``{"record": JSON text}``: plain strings keep Ray
Data's Arrow blocks one schema whatever a clip's record holds (error rows lack the
fields of ok rows).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from workbench.config.media import MediaConfig
from workbench.data.media import ClipSpec

log = logging.getLogger(__name__)

CPUS_PER_CLIP = 1


def absolute(spec: ClipSpec) -> ClipSpec:
    """``spec`` with its files' paths absolute (a Ray worker's working directory is not
    the driver's)."""
    return replace(spec, video=os.path.abspath(spec.video) if spec.video else None,
                   audio=os.path.abspath(spec.audio) if spec.audio else None,
                   images=[os.path.abspath(p) for p in spec.images])


def decode_row(row: dict[str, Any], mcfg: MediaConfig, media_dir: str) -> dict[str, Any]:
    """One Ray Data row: a clip's spec in, its ok or error record out (runs on a worker)."""
    from workbench.data.ingest import process_clip

    spec = ClipSpec(**json.loads(row["spec"]))
    return {"record": json.dumps(process_clip(spec, mcfg, Path(media_dir)))}


def ray_records(specs: list[ClipSpec], mcfg: MediaConfig, media_dir: Path) -> Iterator[dict[str, Any]]:
    """Each clip's record, in the order clips finish on the Ray cluster at
    ``mcfg.ray_address``. Closing the generator early (the error-rate stop) shuts the
    dataset's execution down: clips not started are not run."""
    if not specs:
        return
    from workbench.ray_engine import RayUnavailable, connect

    verbose = logging.getLogger().isEnabledFor(logging.DEBUG)
    ray = connect(mcfg.ray_address, verbose=verbose)
    try:
        import ray.data
    except ImportError as e:
        raise RayUnavailable(f"--engine ray for media needs Ray Data ({e}); install the "
                             "'ray' extra: pip install 'msa-workbench[ray]'") from None
    if not verbose:  # Ray Data's own handler prints each execution's start and end
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    items = [{"spec": json.dumps(asdict(absolute(s)))} for s in specs]
    log.info("Ray engine: %d clips as Ray Data tasks (%d CPU each; %s CPUs in the cluster)",
             len(items), CPUS_PER_CLIP, ray.cluster_resources().get("CPU", 0))
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map(
        decode_row, fn_kwargs={"mcfg": mcfg, "media_dir": str(media_dir.resolve())},
        num_cpus=CPUS_PER_CLIP)
    rows = iter(ds.iter_rows())
    try:
        for row in rows:
            yield json.loads(row["record"])
    finally:
        rows.close()  # a generator: closing it shuts the dataset's executor down
