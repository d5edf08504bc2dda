"""Shared fixtures. Tests that need ../shared/data skip with a clear reason when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "nih-cxr14-dev" / "labels.csv").exists():
        pytest.skip(f"shared data not found at {SHARED_DATA} (present in CI; absent on a user's machine)")
    return SHARED_DATA
