"""One real local Ray instance per test module, sized for this machine.

``tests/conftest.py`` registers the ``ray_local`` fixture for every test; it yields the instance's address (the GCS address a driver
subprocess joins with ``--ray-address``), and shuts the instance down after the module.
"""

from __future__ import annotations

import pytest

NUM_CPUS = 2
OBJECT_STORE_BYTES = 256 * 1024 * 1024


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason="Ray is not installed (the project's 'ray' extra)")
    if ray.is_initialized():
        ray.shutdown()
    ctx = ray.init(num_cpus=NUM_CPUS, object_store_memory=OBJECT_STORE_BYTES,
                   include_dashboard=False, log_to_driver=False, configure_logging=False,
                   namespace="workbench-tests")
    try:
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
    except ImportError:
        pass
    try:
        yield ctx.address_info["gcs_address"]
    finally:
        ray.shutdown()
