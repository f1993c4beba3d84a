"""The volume type shared by every part of the project."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sparseseg.data.orientation import SourceGeometry


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along array axes 0, 1, 2: the column norms of the affine's 3x3 part."""
    return tuple(float(s) for s in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)))


def affine_from_spacing(spacing: tuple[float, float, float]) -> np.ndarray:
    """A diagonal 4x4 affine with the given voxel size (mm) and origin 0."""
    return np.diag([*map(float, spacing), 1.0])


@dataclass(frozen=True)
class Volume:
    """A 3D image or label map.

    ``array`` has shape (X, Y, Z) in NIfTI array order (or (C, X, Y, Z) for a multi-channel
    image); the xy plane is normal to the last axis. ``affine`` maps voxel indices to scanner
    coordinates in mm (4x4). Volumes read from NIfTI are in closest canonical (RAS) orientation
    and ``source`` says how the file stored them (see :mod:`sparseseg.data.orientation`), so
    that what is written from them goes back to the file's orientation and header.
    """

    array: np.ndarray
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    name: str = ""
    source: SourceGeometry | None = None

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the three array axes."""
        return spacing_from_affine(self.affine)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    def with_array(self, array: np.ndarray, name: str | None = None) -> Volume:
        """The same geometry with other voxel values (same spatial shape)."""
        if array.shape[-3:] != self.array.shape[-3:]:
            raise ValueError(f"shape {array.shape} does not match {self.array.shape}")
        return Volume(array, self.affine, self.name if name is None else name, self.source)
