"""Read and write volumes: NIfTI, PNG/TIFF slice folders and multi-page TIFF.

Every reader returns a :class:`Volume` with shape (X, Y, Z). NIfTI volumes come in closest
canonical (RAS) orientation, and :func:`write_nifti` writes a volume derived from them back in the
source orientation with the source header's geometry (see :mod:`sparseseg.data.orientation`).
Slice stacks (one 2D image per section) are stacked along Z, so a section is an xy slice.
Problems raise :class:`InputError` naming the file.
"""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np

from sparseseg.data.orientation import nifti_like_source, to_canonical
from sparseseg.data.volume import Volume, affine_from_spacing
from sparseseg.errors import InputError
from sparseseg.fileio import atomic_path

NIFTI_SUFFIXES = (".nii", ".nii.gz")
SLICE_SUFFIXES = (".png", ".tif", ".tiff")


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def strip_nifti_suffix(name: str) -> str:
    """'case_0000.nii.gz' -> 'case_0000'."""
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _reason(exc: Exception, path: str | Path) -> str:
    """An exception as one short line, without repeating the path the message names anyway."""
    text = str(exc)
    for quoted in (f'"{path}"', f"'{path}'", str(path)):
        text = text.replace(quoted, "")
    text = " ".join(text.split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def check_volume(array: np.ndarray, path: str | Path, *, finite: bool = True) -> None:
    """Raise InputError unless ``array`` is a 3D volume of finite numbers."""
    if array.ndim != 3:
        raise InputError(f"expected a 3D volume, got {array.ndim}D with shape {array.shape}", path)
    if min(array.shape) < 1:
        raise InputError(f"empty volume with shape {array.shape}", path)
    if finite and np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise InputError(f"{bad} voxels are NaN or infinite", path)


def read_nifti(
    path: str | Path, *, dtype: np.dtype | None = None, channel: int | str | None = None
) -> Volume:
    """Read a 3D NIfTI file in closest canonical orientation. ``dtype`` casts the data (labels:
    an integer type).

    ``channel`` picks one volume of a 4D (X, Y, Z, C) file, such as a multi-modal MSD image;
    ``channel='all'`` reads every one, as a Volume (C, X, Y, Z).
    """
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path)
    try:
        img = nib.load(str(path))
        array = np.asarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise InputError(f"cannot read NIfTI ({_reason(exc, path)})", path) from None
    every = channel == "all"
    if every:
        if array.ndim != 4:
            raise InputError(f"expected a 4D multi-channel image, got shape {array.shape}", path)
        for c in range(array.shape[3]):
            check_volume(array[..., c], path)
    elif channel is not None and array.ndim == 4:
        if not 0 <= channel < array.shape[3]:
            raise InputError(f"channel {channel} not in a 4D image of shape {array.shape}", path)
        array = array[..., channel]
    elif channel not in (None, 0) and array.ndim == 3:
        raise InputError(f"channel {channel} asked for, but the image is 3D", path)
    if array.ndim == 4 and array.shape[3] == 1 and not every:
        array = array[..., 0]
    if not every:
        check_volume(array, path)
    if dtype is not None:
        if np.issubdtype(np.dtype(dtype), np.integer) and np.issubdtype(array.dtype, np.floating):
            rounded = np.rint(array)
            if not np.allclose(rounded, array):
                raise InputError("label volume holds non-integer values", path)
            array = rounded
        array = array.astype(dtype, copy=False)
    header = img.header.copy() if isinstance(img.header, nib.Nifti1Header) else None
    array, affine, source = to_canonical(array, img.affine, header)
    if every:
        array = np.ascontiguousarray(np.moveaxis(array, 3, 0))
    return Volume(array, affine, strip_nifti_suffix(path.name), source)


def write_nifti(
    path: str | Path,
    volume: Volume | np.ndarray,
    affine: np.ndarray | None = None,
    *,
    like: Volume | None = None,
):
    """Write a NIfTI file atomically.

    ``volume``: a :class:`Volume`, or an array (X, Y, Z[, C]) on the grid of ``like`` (a loaded
    volume) or of ``affine``. A volume read from a file (``volume.source`` or ``like.source``)
    goes back to that file's orientation, affine and header geometry (qform/sform and their
    codes, pixdim, units); otherwise the array is written as it is with its affine in both the
    qform and the sform (code 1).
    """
    source = None
    if isinstance(volume, Volume):
        array, source = volume.array, volume.source
        affine = volume.affine if affine is None else affine
    else:
        array = volume
        if like is not None:
            affine, source = like.affine, like.source
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    array = np.asarray(array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.dtype == np.int64:  # NIfTI-1 readers handle int64 poorly: store the narrowest fit
        small = array.min(initial=0) >= 0 and array.max(initial=0) <= 255
        array = array.astype(np.uint8 if small else np.int32)
    if source is not None:
        img = nifti_like_source(array, source)
    else:
        img = nib.Nifti1Image(array, affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def _numeric_key(path: Path) -> tuple:
    numbers = re.findall(r"\d+", path.stem)
    return (int(numbers[-1]) if numbers else -1, path.name)


def list_slice_files(folder: str | Path) -> list[Path]:
    """PNG/TIFF files in ``folder`` in numeric order of the last number in their names."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("folder not found", folder)
    files = [p for p in folder.iterdir() if p.suffix.lower() in SLICE_SUFFIXES and p.is_file()]
    if not files:
        raise InputError("no PNG or TIFF slices in folder", folder)
    return sorted(files, key=_numeric_key)


def _read_2d(path: Path) -> np.ndarray:
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            array = tifffile.imread(str(path))
        else:
            from PIL import Image

            with Image.open(path) as im:
                array = np.asarray(im)
    except Exception as exc:
        raise InputError(f"cannot read image ({_reason(exc, path)})", path) from None
    if array.ndim == 3 and array.shape[-1] in (3, 4):  # RGB(A) section: use the luminance
        array = array[..., :3].mean(axis=-1)
    if array.ndim != 2:
        raise InputError(f"expected a 2D slice, got shape {array.shape}", path)
    return array


def read_slice_folder(
    folder: str | Path, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
) -> Volume:
    """Stack a folder of 2D PNG/TIFF sections (numeric order) into a (X, Y, Z) volume.

    ``spacing`` is (x, y, z) in mm; z is the section thickness.
    """
    files = list_slice_files(folder)
    slices = [_read_2d(p) for p in files]
    first = slices[0].shape
    for path, s in zip(files, slices, strict=True):
        if s.shape != first:
            raise InputError(f"slice shape {s.shape} differs from {first} of {files[0].name}", path)
    stack = np.stack(slices, axis=0)  # (Z, rows, cols) = (Z, Y, X)
    array = np.ascontiguousarray(np.transpose(stack, (2, 1, 0)))
    check_volume(array, folder)
    return Volume(array, affine_from_spacing(spacing), Path(folder).name)


def read_tiff_stack(path: str | Path, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)):
    """Read a multi-page TIFF (pages are Z sections) into a (X, Y, Z) volume."""
    import tifffile

    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path)
    try:
        stack = tifffile.imread(str(path))
    except Exception as exc:
        raise InputError(f"cannot read TIFF ({_reason(exc, path)})", path) from None
    if stack.size == 0:
        raise InputError("cannot read TIFF (no image data; is the file damaged?)", path)
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim != 3:
        raise InputError(f"expected a stack of 2D pages, got shape {stack.shape}", path)
    array = np.ascontiguousarray(np.transpose(stack, (2, 1, 0)))
    check_volume(array, path)
    return Volume(array, affine_from_spacing(spacing), path.name.split(".")[0])


def read_volume(path: str | Path, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Volume:
    """Read a NIfTI file, a multi-page TIFF or a folder of slices. ``spacing`` is used where the
    format carries none (TIFF, PNG)."""
    path = Path(path)
    if path.is_dir():
        return read_slice_folder(path, spacing)
    if is_nifti(path):
        return read_nifti(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        return read_tiff_stack(path, spacing)
    if not path.exists():
        raise InputError("file not found", path)
    raise InputError("unsupported format (expected .nii, .nii.gz, .tif, or a slice folder)", path)
