"""Closest canonical (RAS) orientation on read, and back to the source orientation on write.

A NIfTI array can store its axes in any order and direction (LPS from DICOM converters, LAS,
a sagittal acquisition stored first, ...). On read, every volume is brought to the closest
canonical orientation, as nibabel's ``as_closest_canonical`` does: array axes 0, 1, 2 point as
nearly as the voxel grid allows to Right, Anterior, Superior. Only axis permutations and flips
are applied (never resampling); for an oblique affine the nearest such transform is taken and the
affine keeps the remaining rotation. So for medical data the planes ``xy``, ``xz`` and ``yz`` are
the axial, coronal and sagittal planes whatever the stored affine.

:class:`SourceGeometry` carries what is needed to undo the transform: every file written from a
loaded volume goes back to the source's axis order, affine, qform/sform codes, pixdim and units.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt_lib

IDENTITY = np.array([[0, 1], [1, 1], [2, 1]], dtype=np.float64)


@dataclass(frozen=True, eq=False)
class SourceGeometry:
    """How a file stored a volume that is now held in canonical orientation.

    ``affine``: the source affine (4x4); ``shape``: the source spatial shape; ``transform``:
    nibabel orientation (3, 2), source array axes -> canonical; ``header``: the source NIfTI
    header (None for formats without one), whose geometry fields outputs keep.
    """

    affine: np.ndarray
    shape: tuple[int, int, int]
    transform: np.ndarray
    header: nib.Nifti1Header | None = None

    @property
    def is_canonical(self) -> bool:
        """True when the source array was already in canonical axis order and direction."""
        return bool(np.array_equal(self.transform, IDENTITY))

    @property
    def axcodes(self) -> str:
        """The source orientation as axis codes, e.g. 'LPS' or 'RAS'."""
        return "".join(ornt_lib.aff2axcodes(self.affine))

    def to_source(self, array: np.ndarray) -> np.ndarray:
        """A canonical array (X, Y, Z[, ...]) back in the source's axis order and direction."""
        if self.is_canonical:
            return array
        back = ornt_lib.ornt_transform(IDENTITY, self.transform)
        return np.ascontiguousarray(ornt_lib.apply_orientation(array, back))

    def source_index(self, axis: int, index: int) -> tuple[int, int]:
        """Canonical slice ``index`` along canonical ``axis`` -> (source axis, source index)."""
        for src, (dst, flip) in enumerate(self.transform):
            if int(dst) == axis:
                n = self.shape[src]
                return src, int(index if flip > 0 else n - 1 - index)
        raise ValueError(f"axis {axis} not in the orientation transform")


def to_canonical(
    array: np.ndarray, affine: np.ndarray, header: nib.Nifti1Header | None = None
) -> tuple[np.ndarray, np.ndarray, SourceGeometry]:
    """(array (X, Y, Z[, ...]) in closest canonical orientation, its affine, the source geometry).

    Axes beyond the third (channels, time) are left as they are. The array is returned as is
    (no copy) when the source is canonical already.
    """
    affine = np.asarray(affine, dtype=np.float64)
    transform = ornt_lib.io_orientation(affine)
    shape = tuple(int(s) for s in array.shape[:3])
    source = SourceGeometry(affine, shape, transform, header)
    if source.is_canonical:
        return array, affine, source
    out = np.ascontiguousarray(ornt_lib.apply_orientation(array, transform))
    new_affine = affine @ ornt_lib.inv_ornt_aff(transform, shape)
    return out, new_affine, source


def canonical_geometry(
    shape: tuple[int, int, int], affine: np.ndarray
) -> tuple[tuple[int, int, int], np.ndarray]:
    """The spatial shape and affine that :func:`to_canonical` gives, from a header alone."""
    transform = ornt_lib.io_orientation(np.asarray(affine, dtype=np.float64))
    new_affine = np.asarray(affine, dtype=np.float64) @ ornt_lib.inv_ornt_aff(transform, shape)
    order = np.argsort(transform[:, 0])
    return tuple(int(shape[i]) for i in order), new_affine


def nifti_like_source(array: np.ndarray, source: SourceGeometry) -> nib.Nifti1Image:
    """A NIfTI-1 image of a canonical ``array`` (X, Y, Z[, C]) in the source's orientation, with
    the source affine, qform and sform (codes included), voxel sizes, units and dim_info.

    Data type and scaling are the array's own (a label map never inherits an image's float type
    or slope); the description is not copied (the output is new data).
    """
    if tuple(array.shape[:3]) != tuple(source.shape[i] for i in np.argsort(source.transform[:, 0])):
        raise ValueError(f"array shape {array.shape} is not on the grid of the source volume")
    data = source.to_source(array)
    img = nib.Nifti1Image(data, source.affine)
    hdr = source.header
    if hdr is None:
        img.set_qform(source.affine, code=1)
        img.set_sform(source.affine, code=1)
        return img
    img.set_qform(hdr.get_qform(), code=int(hdr["qform_code"]))
    img.set_sform(hdr.get_sform(), code=int(hdr["sform_code"]))
    out = img.header
    out["pixdim"][1:4] = hdr["pixdim"][1:4]
    for key in ("xyzt_units", "dim_info"):
        out[key] = hdr[key]
    return img
