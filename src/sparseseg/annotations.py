"""Painted annotations to sparse labels: pure functions on arrays.

Annotation tools (ITK-SNAP, 3D Slicer, napari) paint into a label map that starts at 0
everywhere, so 0 means background on the slices chosen for annotation and "not annotated"
everywhere else. These functions bring such a map onto the image's grid, map 3D Slicer segments
to the dataset's classes, check it, and turn it into sparse labels: the painted values on the
chosen slices, the ``ignore`` value elsewhere. Arrays are (X, Y, Z); ``chosen`` maps a plane
('xy', 'xz', 'yz') to slice indices as in :mod:`sparseseg.selection.sparsify`.

Problems raise :class:`~sparseseg.errors.InputError` without a path; the caller adds the file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

from sparseseg.data.planes import NORMAL_AXIS, slice_index
from sparseseg.data.volume import spacing_from_affine
from sparseseg.errors import InputError
from sparseseg.selection.sparsify import annotation_mask

# Two grids are the same when their affines agree to this fraction of the smallest voxel size.
GRID_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Segment:
    """One segment of a 3D Slicer segmentation: name, label value and layer (4D files)."""

    name: str
    label_value: int
    layer: int = 0


def _name_key(name: str) -> str:
    """Names compare case-insensitively, with spaces, '-' and '_' alike ('Blood pool')."""
    return "_".join(name.lower().replace("-", " ").replace("_", " ").split())


def describe_classes(classes: Mapping[str, int]) -> str:
    """{'background': 0, 'liver': 1} -> 'background 0, liver 1'."""
    return ", ".join(f"{k} {v}" for k, v in sorted(classes.items(), key=lambda kv: kv[1]))


def segment_classes(
    segments: Sequence[Segment], classes: Mapping[str, int]
) -> dict[tuple[int, int], int]:
    """(layer, label value) -> class value for each segment.

    A segment maps to the class of the same name (case-insensitive); failing that, to the class
    whose value equals its label value; failing both it is an error.
    """
    by_name = {_name_key(k): int(v) for k, v in classes.items()}
    values = set(by_name.values())
    lookup: dict[tuple[int, int], int] = {}
    for seg in segments:
        target = by_name.get(_name_key(seg.name))
        if target is None and seg.label_value in values:
            target = seg.label_value
        if target is None:
            raise InputError(
                f"segment {seg.name!r} (label value {seg.label_value}) matches no class by name "
                f"or value (classes: {describe_classes(classes)})"
            )
        key = (seg.layer, seg.label_value)
        if lookup.get(key, target) != target:
            raise InputError(f"segments share label value {seg.label_value} in layer {seg.layer}")
        lookup[key] = target
    return lookup


def merge_segment_layers(layers: np.ndarray, lookup: Mapping[tuple[int, int], int]) -> np.ndarray:
    """Class values (X, Y, Z) int32 from segment layers (L, X, Y, Z) of label values.

    0 is no segment. Values no segment declares, and voxels that segments of different classes
    share across layers, are errors.
    """
    out = np.zeros(layers.shape[1:], np.int32)
    for index, layer in enumerate(layers):
        present = set(np.unique(layer).tolist()) - {0}
        unknown = sorted(v for v in present if (index, v) not in lookup)
        if unknown:
            raise InputError(f"label values {unknown} in layer {index} belong to no segment")
        mapped = np.zeros(layer.shape, np.int32)
        for value in present:
            mapped[layer == value] = lookup[(index, value)]
        clash = (out != 0) & (mapped != 0) & (out != mapped)
        if clash.any():
            raise InputError(
                f"{int(clash.sum())} voxels belong to segments of different classes in several "
                "layers (overlapping segments); remove the overlap"
            )
        out = np.where(mapped != 0, mapped, out)
    return out


def undeclared_values(array: np.ndarray, classes: Mapping[str, int]) -> list[int]:
    """Values in ``array`` that are no class value, sorted."""
    return sorted(set(np.unique(array).tolist()) - {int(v) for v in classes.values()})


def to_image_grid(
    array: np.ndarray,
    affine: np.ndarray,
    image_affine: np.ndarray,
    image_shape: Sequence[int],
    cropped: bool = False,
) -> np.ndarray:
    """``array`` (X', Y', Z') with voxel-to-mm ``affine``, reoriented onto the image's grid.

    Axis permutations and flips are undone through the affines (a map saved in another
    orientation, or in LPS rather than RAS); after that the shape and affine must match the
    image's to :data:`GRID_TOLERANCE` of a voxel, else the map lies on another grid (an error).
    With ``cropped`` (3D Slicer may save a segmentation cropped to its segments) the map may
    also be a box of the image's grid (same spacing and directions, origin on a voxel of the
    image): it is placed there, 0 around it; painted voxels outside the image are an error.
    """
    affine = np.asarray(affine, np.float64)
    image_affine = np.asarray(image_affine, np.float64)
    image_shape = tuple(int(n) for n in image_shape)
    transform = ornt_transform(io_orientation(affine), io_orientation(image_affine))
    out = apply_orientation(array, transform)
    moved = affine @ inv_ornt_aff(transform, array.shape)
    spacing = np.asarray(spacing_from_affine(moved))
    image_spacing = np.asarray(spacing_from_affine(image_affine))
    tolerance = GRID_TOLERANCE * float(image_spacing.min())
    if tuple(out.shape) == image_shape and np.allclose(moved, image_affine, rtol=0, atol=tolerance):
        return np.ascontiguousarray(out)
    if cropped and np.allclose(moved[:3, :3], image_affine[:3, :3], rtol=0, atol=tolerance):
        start = np.linalg.solve(image_affine, moved[:, 3])[:3]  # image voxel of the first voxel
        if np.allclose(start, np.rint(start), rtol=0, atol=GRID_TOLERANCE):
            return _place(out, np.rint(start).astype(int), image_shape)

    def fmt(values) -> str:
        return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"

    raise InputError(
        f"painted map lies on another grid than the image: shape {tuple(out.shape)} vs "
        f"{image_shape}, spacing {fmt(spacing)} vs {fmt(image_spacing)} mm, origin "
        f"{fmt(moved[:3, 3])} vs {fmt(image_affine[:3, 3])} mm"
    )


def _place(box: np.ndarray, start: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``box`` put at voxel ``start`` of a zero volume of ``shape``; nothing painted may fall
    outside it."""
    lo = np.maximum(start, 0)
    hi = np.maximum(np.minimum(start + box.shape, shape), lo)
    inner = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start, strict=True))
    outside = int(np.count_nonzero(box)) - int(np.count_nonzero(box[inner]))
    if outside:
        raise InputError(f"{outside} painted voxels lie outside the image")
    out = np.zeros(shape, box.dtype)
    out[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = box[inner]
    return out


def cover_slices(mask: np.ndarray, planes: Sequence[str]) -> dict[str, list[int]]:
    """The fewest whole slices of ``planes`` that hold every true voxel of ``mask`` (greedy).

    Each step takes the slice holding the most voxels not yet covered (ties: the first plane,
    then the lowest index), so one painted xy slice adds that slice, not every xz and yz slice
    it crosses. Returns plane -> sorted slice indices, planes with none left out.
    """
    coords = np.argwhere(mask)
    axes = {p: NORMAL_AXIS[p] % 3 for p in planes}
    alive = np.ones(len(coords), bool)
    added: dict[str, list[int]] = {}
    while alive.any():
        best = ("", -1, -1)
        for p in planes:
            counts = np.bincount(coords[alive, axes[p]], minlength=mask.shape[axes[p]])
            i = int(counts.argmax())
            if counts[i] > best[2]:
                best = (p, i, int(counts[i]))
        plane, index, _ = best
        added.setdefault(plane, []).append(index)
        alive &= coords[:, axes[plane]] != index
    return {p: sorted(added[p]) for p in planes if p in added}


@dataclass
class CaseAnnotation:
    """One case's painted map as sparse labels, and what the checks found.

    ``labels``: (X, Y, Z), the painted value on annotated slices, ``ignore`` elsewhere.
    ``chosen``: the annotated slices per plane (the selection's, plus ``added``).
    ``extra_voxels``: painted (nonzero) voxels outside the selection's chosen slices.
    ``added``: slices kept for those voxels (``keep_extra``), plane -> indices.
    ``empty``: chosen slices left entirely at 0, plane -> indices.
    ``class_voxels``: annotated voxels per class value.
    """

    labels: np.ndarray
    chosen: dict[str, list[int]]
    extra_voxels: int
    added: dict[str, list[int]] = field(default_factory=dict)
    empty: dict[str, list[int]] = field(default_factory=dict)
    class_voxels: dict[int, int] = field(default_factory=dict)


def sparse_from_painted(
    painted: np.ndarray,
    chosen: Mapping[str, Sequence[int]],
    ignore_value: int,
    keep_extra: bool = False,
) -> CaseAnnotation:
    """Sparse labels from a painted map (X, Y, Z) of class values (0 = background / unpainted).

    On the chosen slices the painted value is the label (0 there is background); elsewhere the
    label is ``ignore_value``. Painted voxels outside the chosen slices are dropped, or with
    ``keep_extra`` their slices (of the planes in ``chosen``, see :func:`cover_slices`) become
    annotated slices too, whole (0 there is background as well).
    """
    painted = np.asarray(painted)
    chosen = {p: [int(i) for i in v] for p, v in chosen.items()}
    mask = annotation_mask(painted.shape, chosen)
    outside = (painted != 0) & ~mask
    extra = int(outside.sum())
    added: dict[str, list[int]] = {}
    if keep_extra and extra:
        added = cover_slices(outside, list(chosen))
        for p, indices in added.items():
            chosen[p] = chosen[p] + indices
            for i in indices:
                mask[slice_index(p, i)] = True
    empty = {}
    for p, indices in chosen.items():
        blank = [i for i in indices if not painted[slice_index(p, i)].any()]
        if blank:
            empty[p] = sorted(blank)
    dtype = np.result_type(painted.dtype, np.min_scalar_type(ignore_value))
    labels = np.where(mask, painted, np.asarray(ignore_value, dtype)).astype(dtype, copy=False)
    counts = np.bincount(painted[mask].ravel().astype(np.int64), minlength=1)
    class_voxels = {v: int(c) for v, c in enumerate(counts) if c}
    return CaseAnnotation(labels, chosen, extra, added, empty, class_voxels)
