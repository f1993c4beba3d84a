"""Volumes read when used: selection holds one training image at a time, not the dataset.

A :class:`LazyVolume` knows its shape without reading; ``np.asarray(v)`` reads the array and
keeps no reference to it, so a loop that uses each volume in turn holds one at a time. The
selection code takes lazy volumes and arrays alike: it reads shapes with ``np.shape`` and
arrays with ``np.asarray``, one volume per step of each pass (content check, features).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import numpy as np

from sparseseg.errors import InputError


class LazyVolume:
    """A volume of ``shape`` (X, Y, Z) or (C, X, Y, Z) read by ``load()`` on every access."""

    def __init__(self, load: Callable[[], np.ndarray], shape: Sequence[int]):
        self._load = load
        self.shape = tuple(int(s) for s in shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        array = np.asarray(self._load())
        if tuple(array.shape) != self.shape:
            raise InputError(f"volume changed shape on disk: {self.shape} -> {array.shape}")
        return array if dtype is None else array.astype(dtype, copy=False)

    def __getitem__(self, channel: int) -> LazyVolume:
        """Channel ``channel`` of a (C, X, Y, Z) volume, itself lazy (reads the whole volume)."""
        if self.ndim != 4 or not 0 <= channel < self.shape[0]:
            raise IndexError(f"no channel {channel} in a volume of shape {self.shape}")
        return LazyVolume(partial(_channel, self, channel), self.shape[1:])


def _channel(volume: LazyVolume, channel: int) -> np.ndarray:
    return np.asarray(volume)[channel]


def check_volume_content(array: np.ndarray, case: str) -> None:
    """Raise InputError for an empty volume: no voxels, or all voxels equal."""
    if array.size == 0 or not np.isfinite(array).all():
        raise InputError("volume is empty or holds non-finite values", case)
    if float(array.max()) == float(array.min()):
        raise InputError(
            f"volume is constant (every voxel is {float(array.min()):g}): nothing to select", case
        )


def channels(volume) -> list:
    """The channels of a (C, X, Y, Z) volume (array or lazy), or ``[volume]`` for (X, Y, Z)."""
    return [volume[c] for c in range(np.shape(volume)[0])] if np.ndim(volume) == 4 else [volume]


def dataset_volumes(ds, names: Sequence[str]) -> tuple[list[LazyVolume], dict]:
    """Lazy training images of ``names`` in a :class:`~sparseseg.data.layout.Dataset` and the
    source orientation of each (``{name: SourceGeometry | None}``); each image is read once here,
    to check its content (InputError naming its file), and again whenever it is used."""
    volumes, sources = [], {}
    for name in names:
        shape, sources[name] = _checked_image(ds, name)
        volumes.append(dataset_volume(ds, name, shape))
    return volumes, sources


def dataset_volume(ds, name: str, shape: Sequence[int]) -> LazyVolume:
    """The training image ``name`` (of ``shape``) of a dataset, read on access."""
    return LazyVolume(partial(_image_array, ds, name), shape)


def _checked_image(ds, name: str) -> tuple[tuple[int, ...], object]:
    image = ds.load_image(name)
    try:
        check_volume_content(image.array, name)
    except InputError as exc:
        raise InputError(exc.problem, ds.image_path(name)) from None
    return image.shape, image.source


def _image_array(ds, name: str) -> np.ndarray:
    return ds.load_image(name).array
