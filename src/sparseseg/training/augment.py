"""Geometric augmentation on numpy arrays whose last 2 or 3 axes are spatial.

Every function applies the same transform to all arrays given, so images, labels and pseudo-label
stacks stay aligned. Randomness comes from a ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def draw_transform(
    rng: np.random.Generator, ndim: int, flip_axes: Sequence[int], rot90: bool
) -> tuple[int, tuple[int, ...]]:
    """Draw (k, flips): k quarter turns in the first two spatial axes (xy for 3D, the slice plane
    for 2D) and the spatial axes (0-based among the last ``ndim``) to flip."""
    k = int(rng.integers(4)) if rot90 else 0
    flips = tuple(int(a) for a in flip_axes if a < ndim and rng.random() < 0.5)
    return k, flips


def crop_shape_for(patch: Sequence[int], k: int) -> tuple[int, ...]:
    """The crop to take so that after ``k`` quarter turns it has shape ``patch``."""
    patch = tuple(int(p) for p in patch)
    if k % 2 == 1:
        return (patch[1], patch[0], *patch[2:])
    return patch


def apply_transform(array: np.ndarray, ndim: int, k: int, flips: Sequence[int]) -> np.ndarray:
    """Rotate by ``k`` quarter turns in spatial axes (0, 1), then flip ``flips``; returns a
    contiguous copy. Leading (channel) axes are left alone."""
    lead = array.ndim - ndim
    out = np.rot90(array, k, axes=(lead, lead + 1)) if k % 4 else array
    for axis in flips:
        out = np.flip(out, axis=lead + axis)
    return np.ascontiguousarray(out)
