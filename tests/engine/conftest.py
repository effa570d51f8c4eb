"""Engine test fixtures: one local Ray instance for the whole session, started on first use."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from tests.engine import ray_faults

HAVE_RAY = importlib.util.find_spec("ray") is not None
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    """A local Ray (2 CPUs, ~80 MB object store) whose workers install the fault injection of
    ``tests/engine/ray_faults.py``; yields the fault directory."""
    if not HAVE_RAY:
        pytest.skip("ray is not installed: pip install 'reconaudit[ray]'")
    import ray

    faults = tmp_path_factory.mktemp("faults")
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(
        num_cpus=2,
        object_store_memory=80 * 1024 * 1024,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={
            "env_vars": {"PYTHONPATH": pythonpath, ray_faults.ENV: str(faults), "OMP_NUM_THREADS": "1"},
            "worker_process_setup_hook": "tests.engine.ray_faults.install",
        },
    )
    try:
        yield faults
    finally:
        ray.shutdown()
