"""Connecting to Ray, the engine past one machine (``--engine ray``), and nothing else.

The jobs that run on Ray (the teacher caching job, ``teachers.ray_pool``; the media stage,
``workbench.data.ingest``) call :func:`connect` before they submit work. Ray is an optional
extra: without it, :func:`import_ray` raises one clear error naming the extra to install.

``address``: empty starts (or joins) a local instance on this machine, sized by
``num_cpus`` with a capped object store and no dashboard -- the same code then runs on a
laptop, in CI and on a cluster; ``auto`` joins the cluster this machine is part of
(``ray start --head`` / ``ray start --address ...``); ``ray://host:10001`` a remote one. The
``RAY_ADDRESS`` environment variable is Ray's own default when no address is given.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from workbench.errors import WorkbenchError

log = logging.getLogger(__name__)

EXTRA = "ray"
INSTALL_HINT = "pip install 'msa-workbench[ray]'"
OBJECT_STORE_BYTES = 512 * 1024 * 1024
"""Object store of a local instance started here: requests and answers are small."""


class RayUnavailable(WorkbenchError, RuntimeError):
    """``--engine ray`` without Ray installed, or a cluster that cannot be reached."""

    exit_code = 2


def import_ray() -> ModuleType:
    """The ``ray`` module, or :class:`RayUnavailable` naming the extra that installs it."""
    try:
        import ray
    except ImportError as e:
        raise RayUnavailable(
            f"--engine ray needs Ray, which is not installed ({e}); install the "
            f"'{EXTRA}' extra: {INSTALL_HINT} (or use --engine local)") from None
    return ray


PROBE_TIMEOUT_S = 5.0


def _reachable(address: str) -> None:
    """A ``HOST:PORT`` address that answers on TCP (Ray itself retries a dead one for
    minutes before it gives up); ``auto`` and ``ray://`` addresses are Ray's to check."""
    import socket

    if address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S):
            return
    except (OSError, ValueError) as e:
        raise RayUnavailable(
            f"--ray-address {address}: nothing answers there ({e}). Start the head node with "
            "`ray start --head` (it prints the address to join, HOST:6379), or leave the "
            "address empty for a local instance") from None


@contextmanager
def _quiet_stderr(quiet: bool) -> Iterator[list[str]]:
    """Ray's core prints its start-up notices straight to file descriptor 2 (not through
    Python logging): kept off the console unless ``-v``; the list gets what it printed."""
    said: list[str] = []
    if not quiet:
        yield said
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            said.append(sink.read().decode(errors="replace"))
            log.debug("Ray at start-up: %s", said[0].strip())


def connect(address: str = "", *, num_cpus: int | None = None, verbose: bool = False) -> ModuleType:
    """Ray, initialised: joined to ``address`` or to a local instance started here.

    A process already connected (a test's fixture, a user's own ``ray.init``) is used as it
    is. Ray's console output (worker logs, progress bars) is shown only when ``verbose``."""
    ray = import_ray()
    address = address or os.environ.get("RAY_ADDRESS", "")
    if address:
        _reachable(address)
    if ray.is_initialized():
        return ray
    kwargs: dict = {"log_to_driver": verbose, "include_dashboard": False,
                    "configure_logging": verbose, "logging_level": logging.INFO if verbose else logging.WARNING}
    if address:
        kwargs["address"] = address
    else:
        kwargs["num_cpus"] = num_cpus or os.cpu_count() or 1
        kwargs["object_store_memory"] = OBJECT_STORE_BYTES
    try:
        with _quiet_stderr(not verbose) as said:
            ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"the Ray cluster at {address!r}" if address else "a local Ray instance"
        told = f" (Ray said: {said[0].strip()[-500:]})" if said and said[0].strip() else ""
        raise RayUnavailable(
            f"could not connect to {where}: {e}{told}. Start the cluster first (`ray start --head` on "
            "the head node, `ray start --address HEAD:6379` on the others) and pass "
            "--ray-address auto, or leave the address empty for a local instance") from None
    if not verbose:
        try:
            import ray.data

            ray.data.DataContext.get_current().enable_progress_bars = False
        except ImportError:  # ray without its data extra: the job says so when it needs it
            pass
    log.info("Ray: %s CPUs, %s GPUs in the cluster", ray.cluster_resources().get("CPU", 0),
             ray.cluster_resources().get("GPU", 0))
    return ray
