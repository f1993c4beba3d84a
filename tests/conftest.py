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


class Loads:
    """Arrays handed out by a loader: how many in all (``count``), most alive at once."""

    def __init__(self):
        self.live = self.most = self.count = 0

    def track(self, array):
        import weakref

        self.live += 1
        self.count += 1
        self.most = max(self.most, self.live)
        weakref.finalize(array, self._freed)
        return array

    def _freed(self) -> None:
        self.live -= 1


@pytest.fixture
def image_loads(monkeypatch) -> Loads:
    """Counts the images ``Dataset.load_image`` reads and how many are alive at once."""
    from sparseseg.data.layout import Dataset

    loads, real = Loads(), Dataset.load_image

    def load_image(self, case, split="Tr"):
        image = real(self, case, split)
        loads.track(image.array)
        return image

    monkeypatch.setattr(Dataset, "load_image", load_image)
    return loads
