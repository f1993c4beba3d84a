"""Volume io: NIfTI round trips, slice folders in numeric order, multi-page TIFF."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from sparseseg.data.io import (
    list_slice_files,
    read_nifti,
    read_slice_folder,
    read_tiff_stack,
    read_volume,
    strip_nifti_suffix,
    write_nifti,
)
from sparseseg.data.volume import Volume, affine_from_spacing
from sparseseg.errors import InputError


def oblique_affine() -> np.ndarray:
    """A rotated, anisotropic affine with an offset origin."""
    angle = np.deg2rad(20)
    rot = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.7, 0.8, 2.5])
    affine[:3, 3] = [-12.5, 30.25, 7.0]
    return affine


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_round_trip_keeps_affine_values_and_dtype(tmp_path, suffix):
    rng = np.random.default_rng(0)
    array = rng.normal(size=(5, 6, 7)).astype(np.float32)
    affine = oblique_affine()
    path = tmp_path / f"case{suffix}"
    write_nifti(path, Volume(array, affine, "case"))
    back = read_nifti(path)
    np.testing.assert_array_equal(back.array, array)
    assert back.array.dtype == np.float32
    np.testing.assert_allclose(back.affine, affine, atol=1e-6)
    np.testing.assert_allclose(back.spacing, (0.7, 0.8, 2.5), atol=1e-6)
    assert back.name == "case"
    # The header's sform and qform both carry the affine, so viewers agree.
    img = nib.load(str(path))
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    np.testing.assert_allclose(img.get_qform(), affine, atol=1e-5)
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_write_nifti_label_types(tmp_path):
    small = np.array([0, 1, 2, 3] * 6, dtype=np.int64).reshape(2, 3, 4)
    write_nifti(tmp_path / "a.nii.gz", small)
    assert nib.load(str(tmp_path / "a.nii.gz")).get_data_dtype() == np.uint8
    negative = small - 1
    write_nifti(tmp_path / "b.nii.gz", negative)
    np.testing.assert_array_equal(read_nifti(tmp_path / "b.nii.gz").array, negative)
    write_nifti(tmp_path / "c.nii.gz", small.astype(bool))
    assert read_nifti(tmp_path / "c.nii.gz").array.max() == 1


def test_read_nifti_casts_labels_and_picks_channels(tmp_path):
    labels = np.array([0.0, 1.0, 2.0] * 8, dtype=np.float32).reshape(2, 3, 4)
    nib.save(nib.Nifti1Image(labels, np.eye(4)), str(tmp_path / "lab.nii.gz"))
    out = read_nifti(tmp_path / "lab.nii.gz", dtype=np.int16)
    assert out.array.dtype == np.int16
    np.testing.assert_array_equal(out.array, labels)

    four = np.stack([np.full((2, 3, 4), c, np.float32) for c in range(3)], axis=-1)
    nib.save(nib.Nifti1Image(four, np.eye(4)), str(tmp_path / "multi.nii.gz"))
    assert read_nifti(tmp_path / "multi.nii.gz", channel=2).array.max() == 2
    with pytest.raises(InputError, match="4D"):
        read_nifti(tmp_path / "multi.nii.gz")
    with pytest.raises(InputError, match="channel 3"):
        read_nifti(tmp_path / "multi.nii.gz", channel=3)
    # A trailing singleton axis is a 3D volume.
    nib.save(nib.Nifti1Image(four[..., :1], np.eye(4)), str(tmp_path / "single.nii.gz"))
    assert read_nifti(tmp_path / "single.nii.gz").shape == (2, 3, 4)


def test_strip_suffix():
    assert strip_nifti_suffix("case_0000.nii.gz") == "case_0000"
    assert strip_nifti_suffix("case.NII") == "case"


def _slices(nz: int = 12, ny: int = 5, nx: int = 4) -> list[np.ndarray]:
    """Slice z holds value 10*z + 0.. with a pattern that fixes the X/Y orientation."""
    out = []
    for z in range(nz):
        rows, cols = np.mgrid[0:ny, 0:nx]
        out.append((z * 10 + (rows == 1) * 2 + (cols == 3) * 1).astype(np.uint8))
    return out


@pytest.mark.parametrize("fmt", ["png", "tif"])
def test_slice_folder_is_in_numeric_order(tmp_path, fmt):
    slices = _slices()
    for z, s in enumerate(slices):
        if fmt == "png":
            Image.fromarray(s).save(tmp_path / f"{z}.png")
        else:
            tifffile.imwrite(tmp_path / f"slice_{z}.tif", s)
    names = [p.stem for p in list_slice_files(tmp_path)]
    expected = [f"{z}" if fmt == "png" else f"slice_{z}" for z in range(12)]
    assert names == expected  # 0, 1, 2, ..., 10, 11 -- not 0, 1, 10, 11, 2
    vol = read_slice_folder(tmp_path, spacing=(0.5, 0.5, 2.0))
    assert vol.shape == (4, 5, 12)  # (X, Y, Z): image columns are X, rows are Y
    for z, s in enumerate(slices):
        np.testing.assert_array_equal(vol.array[:, :, z], s.T)
    assert vol.spacing == (0.5, 0.5, 2.0)
    np.testing.assert_array_equal(read_volume(tmp_path, (0.5, 0.5, 2.0)).array, vol.array)


def test_rgb_png_slices_become_luminance(tmp_path):
    for z in range(2):
        rgb = np.zeros((3, 4, 3), np.uint8)
        rgb[..., 0] = 30 * (z + 1)
        Image.fromarray(rgb).save(tmp_path / f"{z}.png")
    vol = read_slice_folder(tmp_path)
    assert vol.shape == (4, 3, 2)
    np.testing.assert_allclose(vol.array[..., 1], 20.0)


def test_multipage_tiff(tmp_path):
    stack = np.stack(_slices(nz=7))  # (Z, Y, X)
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    vol = read_tiff_stack(tmp_path / "stack.tif", spacing=(0.004, 0.004, 0.05))
    assert vol.shape == (4, 5, 7)
    np.testing.assert_array_equal(vol.array, np.transpose(stack, (2, 1, 0)))
    np.testing.assert_allclose(vol.spacing, (0.004, 0.004, 0.05))
    assert read_volume(tmp_path / "stack.tif").shape == (4, 5, 7)


def test_slice_folder_errors(tmp_path):
    with pytest.raises(InputError, match="no PNG or TIFF"):
        read_slice_folder(tmp_path)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "0.png")
    Image.fromarray(np.zeros((5, 4), np.uint8)).save(tmp_path / "1.png")
    with pytest.raises(InputError, match="1.png: slice shape"):
        read_slice_folder(tmp_path)


def test_read_volume_rejects_unknown_formats(tmp_path):
    (tmp_path / "x.mha").write_bytes(b"x")
    with pytest.raises(InputError, match="unsupported format"):
        read_volume(tmp_path / "x.mha")
    with pytest.raises(InputError, match="file not found"):
        read_volume(tmp_path / "missing.nii.gz")


def test_affine_from_spacing_round_trip():
    vol = Volume(np.zeros((2, 2, 2)), affine_from_spacing((0.5, 1.0, 3.0)))
    assert vol.spacing == (0.5, 1.0, 3.0)
