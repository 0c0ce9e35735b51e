"""The media stage on Ray (``media.engine: ray``): each clip decoded as one Ray task.

``workbench.data.ingest`` calls :func:`ray_records` in place of its worker processes. Each
clip runs :func:`workbench.data.ingest.process_clip` unchanged (decode, frames, 16 kHz
audio, eGeMAPS) as a Ray task reserving 1 CPU; records stream back to the driver in the
order clips finish, and the driver does the rest as with worker processes (progress, the
error-rate stop, the dataset in the manifest's order). At most ``IN_FLIGHT_PER_CPU`` tasks
per CPU of the cluster are submitted at a time, so the error-rate stop leaves little in
flight: closing the generator cancels what was submitted and not finished.

Plain tasks rather than Ray Data (``from_items(...).map(...)``, one clip per block), which
gives the same records: on this one-function-per-item stage Ray Data's streaming executor
cost 15-26 % of the throughput on 2-second clips on 2 cores, where the driver shares the
workers' CPUs (``bench/ray_media.py`` prints both), and bought nothing the stage uses.

Where things must live on a cluster: the workers open the media files by the manifest's
paths (made absolute here, against this process's working directory) and write frames,
WAVs and per-clip records into ``OUT/media``; both must be on storage every node mounts at
the same path (NFS, a shared volume). A local instance (empty address) needs nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import replace
from itertools import islice
from pathlib import Path
from typing import Any

from workbench.config.media import MediaConfig
from workbench.data.media import ClipSpec

log = logging.getLogger(__name__)

CPUS_PER_CLIP = 1
IN_FLIGHT_PER_CPU = 2
"""Tasks submitted per CPU of the cluster: one running, one queued behind it."""


def absolute(spec: ClipSpec) -> ClipSpec:
    """``spec`` with its files' paths absolute (a Ray worker's working directory is not
    the driver's)."""
    return replace(spec, video=os.path.abspath(spec.video) if spec.video else None,
                   audio=os.path.abspath(spec.audio) if spec.audio else None,
                   images=[os.path.abspath(p) for p in spec.images])


def ray_records(specs: list[ClipSpec], mcfg: MediaConfig, media_dir: Path) -> Iterator[dict[str, Any]]:
    """Each clip's record, in the order clips finish on the Ray cluster at
    ``mcfg.ray_address``. Closing the generator early (the error-rate stop) cancels the
    clips submitted and not finished; the rest are never submitted."""
    if not specs:
        return
    from workbench.data.ingest import process_clip
    from workbench.ray_engine import connect

    ray = connect(mcfg.ray_address, verbose=logging.getLogger().isEnabledFor(logging.DEBUG))
    cpus = int(ray.cluster_resources().get("CPU", 0))
    window = max(1, cpus // CPUS_PER_CLIP) * IN_FLIGHT_PER_CPU
    log.info("Ray engine: %d clips as Ray tasks (%d CPU each; %d CPUs in the cluster, %d "
             "clips in flight)", len(specs), CPUS_PER_CLIP, cpus, window)
    decode = ray.remote(num_cpus=CPUS_PER_CLIP)(process_clip)
    todo = (absolute(s) for s in specs)
    where = str(media_dir.resolve())
    pending: list = []
    try:
        while True:
            pending += [decode.remote(s, mcfg, Path(where)) for s in islice(todo, window - len(pending))]
            if not pending:
                return
            finished, pending = ray.wait(pending, num_returns=1)
            yield ray.get(finished[0])
    finally:
        for ref in pending:  # the error-rate stop (or an error): nothing more runs
            ray.cancel(ref)
