"""Resampling to a target spacing (nnU-Net's preprocessing, on arrays).

Shapes follow the spacing: ``round(shape * spacing / target)`` voxels per axis. The new grid
covers the same extent as the old one (voxel edges aligned, :func:`scipy.ndimage.zoom` with
``grid_mode=True``), so its spacing is ``spacing * shape / new_shape``, within half a voxel of
the target over the whole volume, and :func:`resampled_affine` gives its geometry.

- Images: cubic B-spline (order 3), as nnU-Net resamples images: sharper edges than linear
  interpolation; the overshoot at edges is harmless for z-scored intensities.
- Labels: nearest neighbour, so the values stay the declared ones (``ignore`` included) and a
  whole annotated plane stays whole planes along the other axes. Where the target is coarser
  along a plane's normal, some annotated planes can fall between the new grid's planes.
- Class probabilities: linear (order 1) per class, so they stay in [0, 1] and sum to 1.

Edges are extended (``mode='nearest'``, nnU-Net's ``edge``). A volume whose shape would not
change is returned as it is (:func:`resample_volume`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from sparseseg.data.volume import Volume

IMAGE_ORDER = 3
PROBABILITY_ORDER = 1


def resampled_shape(
    shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]
) -> tuple[int, ...]:
    """Voxels per axis of ``shape`` at ``spacing`` (mm) resampled to ``target`` (mm)."""
    return tuple(
        max(1, int(np.round(n * s / t))) for n, s, t in zip(shape, spacing, target, strict=True)
    )


def _zoom(array: np.ndarray, shape: Sequence[int], order: int, dtype) -> np.ndarray:
    """One (X, Y, Z) array on a grid of ``shape`` voxels over the same extent."""
    factors = [n / m for n, m in zip(shape, array.shape, strict=True)]
    out = np.empty(tuple(shape), dtype=dtype)
    ndimage.zoom(array, factors, output=out, order=order, mode="nearest", grid_mode=True)
    return out


def _per_channel(array: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 3:
        return _zoom(array, shape, order, np.float32)
    if array.ndim != 4:
        raise ValueError(f"expected (X, Y, Z) or (C, X, Y, Z), got shape {array.shape}")
    out = np.empty((array.shape[0], *shape), dtype=np.float32)
    for c, channel in enumerate(array):
        out[c] = _zoom(channel, shape, order, np.float32)
    return out


def resample_image(image: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """An image (X, Y, Z) or (C, X, Y, Z) -> float32 with spatial ``shape`` (cubic, per
    channel)."""
    return _per_channel(image, shape, IMAGE_ORDER)


def resample_labels(labels: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """An integer label map (X, Y, Z) -> ``shape``, nearest neighbour, same dtype."""
    labels = np.asarray(labels)
    if labels.ndim != 3 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"expected integer labels (X, Y, Z), got {labels.dtype} {labels.shape}")
    return _zoom(labels, shape, 0, labels.dtype)


def resample_probabilities(probs: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Class probabilities (C, X, Y, Z) -> float32 (C, *shape), linear per class."""
    if np.ndim(probs) != 4:
        raise ValueError(f"expected probabilities (C, X, Y, Z), got shape {np.shape(probs)}")
    return _per_channel(probs, shape, PROBABILITY_ORDER)


def resampled_affine(
    affine: np.ndarray, shape: Sequence[int], new_shape: Sequence[int]
) -> np.ndarray:
    """The affine of a grid of ``new_shape`` voxels over the extent of ``shape`` voxels of
    ``affine`` (voxel edges aligned, as :func:`resample_image` samples)."""
    factors = np.array([m / n for m, n in zip(shape, new_shape, strict=True)], dtype=np.float64)
    scale = np.eye(4)
    scale[:3, :3] = np.diag(factors)
    scale[:3, 3] = (factors - 1) / 2  # new voxel 0's centre in old voxel coordinates
    return np.asarray(affine, dtype=np.float64) @ scale


def resample_volume(
    volume: Volume, target: Sequence[float] | None, *, labels: bool = False
) -> Volume:
    """``volume`` on the grid of spacing ``target`` (None: unchanged): an image (cubic) or, with
    ``labels``, a label map (nearest). The volume itself when its shape would not change; else a
    new Volume with the resampled grid's affine and no source header (it is written as it is)."""
    if target is None:
        return volume
    spatial = volume.array.shape[-3:]
    shape = resampled_shape(spatial, volume.spacing, target)
    if shape == tuple(spatial):
        return volume
    array = resample_labels(volume.array, shape) if labels else resample_image(volume.array, shape)
    return Volume(array, resampled_affine(volume.affine, spatial, shape), volume.name)
