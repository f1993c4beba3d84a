"""Orientation: volumes are read in closest canonical (RAS) orientation, whatever the stored
affine, and everything written from them goes back to the source orientation and header."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from sparseseg.data.io import read_nifti, write_nifti
from sparseseg.data.layout import write_dataset_json
from sparseseg.data.planes import to_slices

SHAPE = (10, 12, 7)
RAS_AFFINE = np.array([[0.8, 0, 0, -10], [0, 0.9, 0, 5], [0, 0, 1.7, 2], [0, 0, 0, 1.0]])


def anatomy() -> tuple[np.ndarray, np.ndarray]:
    """(image, label) in RAS order: an off-centre blob, so every flip changes the array."""
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij"))
    centre = np.array([3.0, 8.0, 2.0])[:, None, None, None]
    dist = np.sqrt((((grid - centre) / 3.0) ** 2).sum(0))
    image = (100 * np.exp(-dist) + grid[0] + 2 * grid[1] + 3 * grid[2]).astype(np.float32)
    return image, (dist < 1.5).astype(np.uint8)


def flip_matrix(axes, shape) -> np.ndarray:
    """Voxel map of an array flipped along ``axes``: index in the flipped -> index in the source."""
    m = np.eye(4)
    for a in axes:
        m[a, a], m[a, 3] = -1, shape[a] - 1
    return m


def stored(array: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """The RAS ``array`` as a file would store it: (array, affine) for 'ras', 'lps' (axes 0 and
    1 reversed) and 'sagittal' (axes stored in the order Z, X, Y, the first one reversed)."""
    if kind == "ras":
        return array, RAS_AFFINE
    if kind == "lps":
        return array[::-1, ::-1].copy(), RAS_AFFINE @ flip_matrix((0, 1), array.shape)
    if kind == "sagittal":
        out = np.transpose(array, (2, 0, 1))[::-1].copy()  # out[k', i, j] = array[i, j, nz-1-k']
        perm = np.zeros((4, 4))
        perm[0, 1] = perm[1, 2] = perm[3, 3] = 1
        perm[2, 0], perm[2, 3] = -1, array.shape[2] - 1
        return out, RAS_AFFINE @ perm
    raise ValueError(kind)


def save(path, array, affine, qform_code=1, sform_code=2) -> None:
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=qform_code)
    img.set_sform(affine, code=sform_code)
    img.header.set_xyzt_units("mm", "sec")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


@pytest.mark.parametrize("kind", ["lps", "sagittal"])
def test_the_same_anatomy_reads_the_same_whatever_the_stored_orientation(tmp_path, kind):
    image, _ = anatomy()
    save(tmp_path / "ras.nii.gz", *stored(image, "ras"))
    save(tmp_path / "other.nii.gz", *stored(image, kind))
    ras, other = read_nifti(tmp_path / "ras.nii.gz"), read_nifti(tmp_path / "other.nii.gz")
    assert other.source.axcodes == {"lps": "LPS", "sagittal": "IRA"}[kind]
    assert ras.source.is_canonical and not other.source.is_canonical
    np.testing.assert_array_equal(other.array, image)
    np.testing.assert_allclose(other.affine, RAS_AFFINE, atol=1e-6)
    np.testing.assert_allclose(other.spacing, (0.8, 0.9, 1.7), atol=1e-6)
    for plane in ("xy", "xz", "yz"):  # axial, coronal, sagittal
        np.testing.assert_array_equal(to_slices(other.array, plane), to_slices(ras.array, plane))


@pytest.mark.parametrize("kind", ["lps", "sagittal"])
def test_written_outputs_keep_the_source_orientation_and_header(tmp_path, kind):
    image, label = anatomy()
    raw, affine = stored(image, kind)
    save(tmp_path / "img.nii.gz", raw, affine, qform_code=1, sform_code=2)
    vol = read_nifti(tmp_path / "img.nii.gz")
    write_nifti(tmp_path / "out.nii.gz", vol.with_array(label))
    probs = np.stack([1 - label, label], axis=-1).astype(np.float32)  # (X, Y, Z, C)
    write_nifti(tmp_path / "probs.nii.gz", probs, like=vol)
    out = nib.load(str(tmp_path / "out.nii.gz"))
    assert int(out.header["qform_code"]) == 1 and int(out.header["sform_code"]) == 2
    assert out.header.get_xyzt_units() == ("mm", "sec")
    np.testing.assert_allclose(out.affine, affine, atol=1e-6)
    np.testing.assert_allclose(
        out.header.get_zooms(), nib.load(tmp_path / "img.nii.gz").header.get_zooms()
    )
    np.testing.assert_array_equal(np.asarray(out.dataobj), stored(label, kind)[0])
    assert out.get_data_dtype() == np.uint8
    p = nib.load(str(tmp_path / "probs.nii.gz"))
    np.testing.assert_array_equal(np.asarray(p.dataobj)[..., 1], stored(label, kind)[0])
    np.testing.assert_allclose(p.affine, affine, atol=1e-6)


def oblique(flip: bool) -> np.ndarray:
    """A small rotation (10 degrees about x, 5 about z), optionally with x and y reversed."""
    a, b = np.deg2rad(10), np.deg2rad(5)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    affine = RAS_AFFINE.copy()
    affine[:3, :3] = rz @ rx @ RAS_AFFINE[:3, :3]
    return affine @ flip_matrix((0, 1), SHAPE) if flip else affine


@pytest.mark.parametrize("flip", [False, True])
def test_an_oblique_affine_maps_to_the_closest_canonical_and_round_trips_exactly(tmp_path, flip):
    image, _ = anatomy()
    affine = oblique(flip)
    raw = image[::-1, ::-1].copy() if flip else image
    save(tmp_path / "obl.nii.gz", raw, affine, qform_code=2, sform_code=0)
    vol = read_nifti(tmp_path / "obl.nii.gz")
    # Closest canonical: only axis flips/permutations, the rotation stays in the affine.
    assert "".join(nib.aff2axcodes(vol.affine)) == "RAS"
    np.testing.assert_array_equal(vol.array, image)
    np.testing.assert_allclose(vol.affine, oblique(False), atol=1e-5)
    write_nifti(tmp_path / "back.nii.gz", vol)
    back = nib.load(str(tmp_path / "back.nii.gz"))
    np.testing.assert_array_equal(np.asarray(back.dataobj), raw)
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)
    assert int(back.header["qform_code"]) == 2 and int(back.header["sform_code"]) == 0


def lps_dataset(root):
    image, label = anatomy()
    save(root / "imagesTr" / "c_0000.nii.gz", *stored(image, "lps"))
    save(root / "labelsTr" / "c.nii.gz", *stored(label, "lps"))
    write_dataset_json(root, {"background": 0, "blob": 1}, 1)
    return root


def test_selection_masks_and_sparse_labels_are_right_in_the_source_orientation(tmp_path):
    from sparseseg.selection import select_slices, write_selection

    root = lps_dataset(tmp_path / "lps")
    sel = select_slices(root, budget=3, strategy="eia")
    out = write_selection(sel, tmp_path / "sel", simulate_from_labels=True, sheets=False)
    mask = nib.load(str(out / "masks" / "c.nii.gz"))
    sparse = nib.load(str(out / "dataset" / "labelsTr" / "c.nii.gz"))
    source = nib.load(str(root / "labelsTr" / "c.nii.gz"))
    for img in (mask, sparse):
        np.testing.assert_allclose(img.affine, source.affine, atol=1e-6)
        assert int(img.header["sform_code"]) == 2
    m, s, dense = (np.asarray(i.dataobj) for i in (mask, sparse, source))
    on = m == 1
    assert on.any() and (~on).any()
    np.testing.assert_array_equal(s[on], dense[on])  # true labels exactly on the marked slices
    assert (s[~on] == 2).all()  # ignore elsewhere
    # selection.json: canonical indices, and the same slices along the file's own axes.
    record = json.loads((out / "selection.json").read_text())["cases"]["c"]
    assert record["source"]["axcodes"] == "LPS"
    xz = record["source"]["planes"]["xz"]  # normal to Y, which the file stores reversed
    assert xz["axis"] == 1
    assert xz["indices"] == [SHAPE[1] - 1 - n for n in record["planes"]["xz"]["indices"]]
    for n in xz["indices"]:
        assert (m[:, n, :] == 1).all()
    for n in record["source"]["planes"]["xy"]["indices"]:
        assert (m[:, :, n] == 1).all()


def test_evaluation_compares_the_same_grid_stored_in_two_orientations(tmp_path):
    from sparseseg.evaluation import evaluate

    _, label = anatomy()
    save(tmp_path / "gt" / "c.nii.gz", *stored(label, "ras"))
    save(tmp_path / "pred" / "c.nii.gz", *stored(label, "lps"))
    scores = evaluate(tmp_path / "pred", tmp_path / "gt")
    assert scores["cases"]["c"]["classes"]["1"]["dice"] == pytest.approx(1.0)


def test_predictions_are_written_in_the_source_orientation(tmp_path):
    from test_predict import tiny_bundle

    from sparseseg.bundle import save_bundle
    from sparseseg.predict import Predictor, predict_files

    image, _ = anatomy()
    raw, affine = stored(image, "sagittal")
    save(tmp_path / "in" / "s_0000.nii.gz", raw, affine, qform_code=1, sform_code=2)
    save_bundle(tiny_bundle(), tmp_path / "m")
    written = predict_files(tmp_path / "m", tmp_path / "in", tmp_path / "out", progress=False)
    out = nib.load(str(written["s"]["meta"]))
    np.testing.assert_allclose(out.affine, affine, atol=1e-6)
    assert int(out.header["sform_code"]) == 2
    expected = Predictor(tmp_path / "m", device="cpu").predict(image)["meta"].labels
    np.testing.assert_array_equal(np.asarray(out.dataobj), stored(expected, "sagittal")[0])


@pytest.mark.slow
def test_a_dataset_stored_lps_trains_and_predicts_exactly_as_stored_ras(tmp_path):
    import shutil

    from tiny_preset import TINIER

    from sparseseg import api
    from sparseseg.data.phantom import write_phantom_dataset

    ras = write_phantom_dataset(
        tmp_path / "ras", "heart", 2, seed=2, test_cases=1, shape=(24, 24, 16)
    )
    lps = tmp_path / "lps"
    shutil.copytree(ras, lps)
    for f in lps.rglob("*.nii.gz"):
        img = nib.load(f)
        raw = np.asarray(img.dataobj)
        save(f, raw[::-1, ::-1].copy(), img.affine @ flip_matrix((0, 1), raw.shape))
    for ds in (ras, lps):
        api.select(
            ds, 4, out=tmp_path / f"sel_{ds.name}", simulate_from_labels=True, extractor="intensity"
        )
        api.train(
            tmp_path / f"sel_{ds.name}" / "dataset",
            tmp_path / f"m_{ds.name}",
            "cpu",
            TINIER,
            progress=False,
        )
        api.predict(
            tmp_path / f"m_{ds.name}",
            ds / "imagesTs",
            out=tmp_path / f"p_{ds.name}",
            progress=False,
        )
    for f in sorted((tmp_path / "p_ras").glob("*.nii.gz")):
        other = nib.load(tmp_path / "p_lps" / f.name)
        np.testing.assert_allclose(
            other.affine, nib.load(lps / "imagesTs" / f"{f.name[:-7]}_0000.nii.gz").affine
        )
        np.testing.assert_array_equal(
            np.asarray(other.dataobj)[::-1, ::-1], np.asarray(nib.load(f).dataobj)
        )
