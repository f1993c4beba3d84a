"""Plane views: a volume (..., X, Y, Z) seen as a stack of 2D slices of one plane, and back."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PLANES = ("xy", "xz", "yz")
# The pseudo-label sets whose mean is A(Y), in this order: one per 2D plane, then the 3D model.
PL_SETS = (*PLANES, "3d")
# The array axis normal to each plane, counted from the end so leading channel axes are allowed.
NORMAL_AXIS = {"xy": -1, "xz": -2, "yz": -3}


def parse_planes(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """'xy,xz' -> ('xy', 'xz'), validated and in canonical order."""
    items = text.split(",") if isinstance(text, str) else list(text)
    items = [p.strip().lower() for p in items if p.strip()]
    bad = [p for p in items if p not in PLANES]
    if bad or not items:
        raise ValueError(f"planes must be a subset of {','.join(PLANES)}, got {text!r}")
    return tuple(p for p in PLANES if p in items)


def num_slices(shape: tuple[int, ...], plane: str) -> int:
    """Number of slices of ``plane`` in a volume of spatial ``shape`` (..., X, Y, Z)."""
    return int(shape[NORMAL_AXIS[plane]])


def to_slices(volume: np.ndarray, plane: str) -> np.ndarray:
    """View (..., X, Y, Z) as (..., N, A, B): slice n of ``plane`` is ``out[..., n, :, :]``.

    For xy the slice is (X, Y), for xz (X, Z), for yz (Y, Z). Returns a view, not a copy.
    """
    return np.moveaxis(volume, NORMAL_AXIS[plane], -3)


def plane_transforms(
    plane: str, flip_axes: Sequence[int], rot90: bool
) -> tuple[tuple[int, ...], bool]:
    """The augmentation of a slice of ``plane`` that matches the volume's: the slice axes (0, 1)
    whose volume axes are among ``flip_axes`` (0-2), and quarter turns only where ``rot90`` and
    both axes flip (a turn maps each axis onto the other, one of them reversed)."""
    in_plane = [a for a in range(3) if a != 3 + NORMAL_AXIS[plane]]
    flips = tuple(i for i, a in enumerate(in_plane) if a in flip_axes)
    return flips, bool(rot90) and len(flips) == 2


def with_neighbours(slices: np.ndarray, index, context: int) -> np.ndarray:
    """Slices ``index`` (an int or an index array) of ``slices`` (C, N, A, B), each with the
    ``context`` slices on either side (repeated at the ends) as extra channels:
    (C * (2 context + 1), A, B) for an int, (len(index), C * (2 context + 1), A, B) for an array.
    Channel c * (2 context + 1) + j holds channel c of slice n + j - context."""
    n = slices.shape[-3]
    idx = np.asarray(index)
    near = np.clip(idx[..., None] + np.arange(-context, context + 1), 0, n - 1)  # (..., 2k+1)
    out = slices[:, near]  # (C, ..., 2k+1, A, B)
    out = np.moveaxis(out, 0, -4)  # (..., C, 2k+1, A, B)
    return out.reshape(*out.shape[:-4], -1, *out.shape[-2:])


def from_slices(slices: np.ndarray, plane: str) -> np.ndarray:
    """Inverse of :func:`to_slices`: (..., N, A, B) back to (..., X, Y, Z)."""
    return np.moveaxis(slices, -3, NORMAL_AXIS[plane])


def slice_index(plane: str, n: int) -> tuple:
    """An index expression selecting slice ``n`` of ``plane`` from a (X, Y, Z) array."""
    index: list = [slice(None)] * 3
    index[NORMAL_AXIS[plane]] = n
    return tuple(index)
