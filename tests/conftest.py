"""Shared fixtures. Tests that need ../shared/data skip with a clear reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The suite starts Dask workers and torchrun processes beside the test process on a
# 2-core machine: with 2 OpenMP threads each, oversubscribed cores made torch steps
# 5-10x slower (threads wait at barriers for descheduled peers). One thread each.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "nih-cxr14-dev" / "labels.csv").exists():
        pytest.skip(f"shared data not found at {SHARED_DATA} (present in CI; absent on a user's machine)")
    return SHARED_DATA


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of two worker processes for a module's encode jobs (run_encode(scheduler=...))."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as local:
        with Client(local) as client:
            yield client


@pytest.fixture(scope="session")
def served_archive(tmp_path_factory):
    """A small phantom archive with a tiny model and a flat index (medhash.app.fixtures)."""
    # Imported here, not at the top: it loads torch, which must start after OMP_NUM_THREADS is set above.
    from medhash.app.fixtures import make_served_archive

    return make_served_archive(tmp_path_factory.mktemp("served"))
