"""Shared test settings: where the shared data lives."""

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data`; tests that need it are skipped with a reason when it is absent."""
    if not (SHARED_DATA / "datasets.h5").exists():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
