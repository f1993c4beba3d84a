"""Chosen slices as voxel masks, simulated sparse labels, and annotation cost.

``chosen`` maps a plane name ('xy', 'xz', 'yz') to the slice indices chosen in that plane; a
volume is (X, Y, Z) and plane views follow :mod:`sparseseg.data.planes`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from sparseseg.data.planes import PLANES, num_slices, slice_index


def annotation_mask(shape: tuple[int, int, int], chosen: Mapping[str, Sequence[int]]) -> np.ndarray:
    """Boolean (X, Y, Z): true on every voxel of every chosen slice."""
    mask = np.zeros(shape, dtype=bool)
    for plane, indices in chosen.items():
        _check_indices(shape, plane, indices)
        for n in indices:
            mask[slice_index(plane, int(n))] = True
    return mask


def sparsify_labels(
    label: np.ndarray, chosen: Mapping[str, Sequence[int]], ignore_value: int
) -> np.ndarray:
    """Sparse labels (X, Y, Z): the true label on chosen slices, ``ignore_value`` elsewhere."""
    label = np.asarray(label)
    if label.ndim != 3:
        raise ValueError(f"expected a 3D label map, got shape {label.shape}")
    mask = annotation_mask(label.shape, chosen)
    dtype = np.result_type(label.dtype, np.min_scalar_type(ignore_value))
    return np.where(mask, label, np.asarray(ignore_value, dtype=dtype)).astype(dtype, copy=False)


def annotation_cost(
    shape: tuple[int, int, int], chosen: Mapping[str, Sequence[int]]
) -> dict[str, float | int]:
    """The annotation cost of ``chosen`` in a volume of ``shape``, counted two ways.

    ``annotated_pixels``: pixels on all chosen slices of all planes (a voxel on slices of two
    planes is annotated twice); ``annotated_fraction`` = that / voxels, about 3/k for s_k on
    three planes. ``covered_voxels``: voxels on at least one chosen slice; ``covered_fraction``.
    """
    voxels = int(np.prod(shape))
    pixels = 0
    for plane, indices in chosen.items():
        _check_indices(shape, plane, indices)
        pixels += len(indices) * voxels // num_slices(shape, plane)
    covered = int(annotation_mask(shape, chosen).sum())
    return {
        "slices": int(sum(len(v) for v in chosen.values())),
        "voxels": voxels,
        "annotated_pixels": pixels,
        "annotated_fraction": pixels / voxels,
        "covered_voxels": covered,
        "covered_fraction": covered / voxels,
    }


def total_cost(costs: Sequence[Mapping[str, float | int]]) -> dict[str, float | int]:
    """Sum per-volume costs from :func:`annotation_cost`; fractions of all voxels together."""
    keys = ("slices", "voxels", "annotated_pixels", "covered_voxels")
    total = {k: int(sum(c[k] for c in costs)) for k in keys}
    voxels = max(total["voxels"], 1)
    total["annotated_fraction"] = total["annotated_pixels"] / voxels
    total["covered_fraction"] = total["covered_voxels"] / voxels
    return {k: total[k] for k in (*keys[:3], "annotated_fraction", keys[3], "covered_fraction")}


def _check_indices(shape, plane: str, indices: Sequence[int]) -> None:
    if plane not in PLANES:
        raise ValueError(f"unknown plane {plane!r}")
    n = num_slices(shape, plane)
    bad = [int(i) for i in indices if not 0 <= int(i) < n]
    if bad:
        raise ValueError(f"{plane} slice indices {bad} outside 0..{n - 1}")
    if len(set(int(i) for i in indices)) != len(indices):
        raise ValueError(f"{plane} slice indices repeat: {list(indices)}")
