"""Shared fixtures: paths to the real data beside the project (skipped where absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(name: str) -> Path:
    """Path of a real data set under ../shared/data, or skip the test with a clear reason."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real data not available: {path} is absent")
    return path


@pytest.fixture
def hippocampus_dir() -> Path:
    return shared_data("msd_hippocampus")


@pytest.fixture
def isbi_dir() -> Path:
    return shared_data("isbi2012_em")
