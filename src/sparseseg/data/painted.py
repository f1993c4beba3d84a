"""Read painted label maps as annotation tools save them: NIfTI (ITK-SNAP, napari), NRRD
(ITK-SNAP) and 3D Slicer segmentations (``.seg.nrrd``).

A :class:`PaintedMap` keeps the file's own voxel order and its voxel-to-RAS affine (NRRD's LPS
space directions are turned into RAS); :func:`sparseseg.annotations.to_image_grid` brings it
onto the image's grid. Problems raise :class:`InputError` naming the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sparseseg.annotations import Segment
from sparseseg.data.io import _reason, read_nifti
from sparseseg.errors import InputError

# Longest first, so that 'a.seg.nrrd' is a segmentation and not a plain NRRD of case 'a.seg'.
PAINTED_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd")
# RAS sign of each world axis for the NRRD spaces that annotation tools write.
NRRD_SPACES = {
    "left-posterior-superior": (-1, -1, 1),
    "lps": (-1, -1, 1),
    "right-anterior-superior": (1, 1, 1),
    "ras": (1, 1, 1),
    "left-anterior-superior": (-1, 1, 1),
    "las": (-1, 1, 1),
}
_SEGMENT_KEY = re.compile(r"^Segment(\d+)_Name$")


@dataclass(frozen=True)
class PaintedMap:
    """A painted label map: integer ``array`` (X, Y, Z), or (L, X, Y, Z) for a segmentation
    with several layers; ``affine`` voxel -> RAS mm (4x4); ``segments`` for a 3D Slicer
    segmentation (label values then name segments, not classes), else None."""

    array: np.ndarray
    affine: np.ndarray
    segments: tuple[Segment, ...] | None = None


def painted_case(name: str) -> str | None:
    """The case id of a painted file name ('case_1.seg.nrrd' -> 'case_1'), None if the name
    has no painted-map suffix."""
    for suffix in PAINTED_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def read_painted(path: str | Path) -> PaintedMap:
    """Read a painted map from NIfTI, NRRD or a 3D Slicer ``.seg.nrrd``."""
    path = Path(path)
    if path.name.lower().endswith((".nii", ".nii.gz")):
        vol = read_nifti(path, dtype=np.int32)
        return PaintedMap(vol.array, vol.affine)
    if path.name.lower().endswith(".nrrd"):
        return read_nrrd(path)
    raise InputError("unsupported format (expected .nii, .nii.gz, .nrrd or .seg.nrrd)", path)


def _integers(array: np.ndarray, path: Path) -> np.ndarray:
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or not np.array_equal(np.rint(array), array):
            raise InputError("label map holds non-integer values", path)
    elif not np.issubdtype(array.dtype, np.integer) and array.dtype != np.bool_:
        raise InputError(f"label map has non-numeric type {array.dtype}", path)
    return array.astype(np.int32)


def read_nrrd(path: str | Path) -> PaintedMap:
    """Read an NRRD label map (pynrrd); a 3D Slicer segmentation keeps its segments.

    The affine comes from 'space directions' and 'space origin' in the file's 'space' (LPS or
    RAS); a file without space directions cannot be placed on the image and is an error.
    """
    import nrrd

    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path)
    try:
        data, header = nrrd.read(str(path))
    except Exception as exc:  # pynrrd raises several types for bad headers and data
        raise InputError(f"cannot read NRRD ({_reason(exc, path)})", path) from None
    directions = header.get("space directions")
    space = str(header.get("space", "")).lower()
    if directions is None or space not in NRRD_SPACES:
        raise InputError(
            "NRRD lacks 'space directions' or a 'space' of LPS or RAS: where it lies on the "
            "image is unknown",
            path,
        )
    directions = np.asarray(directions, np.float64)
    spatial = [i for i, row in enumerate(directions) if np.isfinite(row).all()]
    other = [i for i in range(data.ndim) if i not in spatial]
    if len(spatial) != 3 or len(other) > 1 or directions.shape[1] != 3:
        raise InputError(
            f"expected a 3D label map (or layers of one), got shape {data.shape}", path
        )
    array = _integers(np.asarray(data), path)
    if other:
        array = np.moveaxis(array, other[0], 0)
    affine = np.eye(4)
    affine[:3, :3] = directions[spatial].T  # column j: the world step along array axis j
    affine[:3, 3] = np.asarray(header.get("space origin", np.zeros(3)), np.float64)
    affine[:3] *= np.asarray(NRRD_SPACES[space], np.float64)[:, None]
    segments = _segments(header, path, layered=bool(other))
    if other and segments is None:
        raise InputError(f"a 4D NRRD that is no segmentation (shape {data.shape})", path)
    return PaintedMap(array, affine, segments)


def _segments(header: dict, path: Path, layered: bool) -> tuple[Segment, ...] | None:
    """The Segment{i}_Name / _LabelValue / _Layer keys of a 3D Slicer segmentation.

    Files from before shared label maps have no _LabelValue or _Layer: there segment i is
    value 1 in layer i of a 4D file, which is what the defaults give.
    """
    indices = sorted(int(m.group(1)) for k in header if (m := _SEGMENT_KEY.match(str(k))))
    if not indices:
        return None
    segments = []
    for i in indices:
        try:
            value = int(header.get(f"Segment{i}_LabelValue", 1))
            layer = int(header.get(f"Segment{i}_Layer", i if layered else 0))
        except ValueError:
            raise InputError(f"segment {i} has a non-integer label value or layer", path) from None
        segments.append(Segment(str(header[f"Segment{i}_Name"]), value, layer))
    return tuple(segments)
