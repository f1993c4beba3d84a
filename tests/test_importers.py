"""Importers into the canonical layout, on synthetic folders and on the real data."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from sparseseg.cli import main
from sparseseg.data.importers import (
    ISBI_SPACING,
    import_em_stack,
    import_hvsmr2016,
    import_msd,
    import_pairs,
    map_label_values,
    parse_label_map,
    parse_slice_range,
    parse_spacing,
    split_cases,
)
from sparseseg.data.io import read_nifti
from sparseseg.data.layout import Dataset
from sparseseg.errors import InputError


def save(path, array, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))


def toy_affine(shift: float = 0.0) -> np.ndarray:
    affine = np.diag([0.8, 0.9, 2.0, 1.0])
    affine[:3, 3] = [10.0 + shift, -4.0, 3.5]
    return affine


def toy_case(rng, shape=(6, 5, 4), classes=3):
    image = rng.integers(0, 255, size=shape).astype(np.uint8)
    label = rng.integers(0, classes, size=shape).astype(np.float32)
    label.flat[:classes] = np.arange(classes)  # every class occurs
    return image, label


# Helpers ------------------------------------------------------------------------------------------
def test_split_cases_is_deterministic_and_sized():
    ids = [f"c{i:02d}" for i in range(20)]
    train, test = split_cases(ids[::-1], 0.25, seed=1)
    assert len(test) == 5 and len(train) == 15 and sorted(train + test) == ids
    assert train == sorted(train) and test == sorted(test)
    assert split_cases(ids, 0.25, seed=1) == (train, test)  # input order does not matter
    assert split_cases(ids, 0.25, seed=2)[1] != test
    assert split_cases(ids, 0.0) == (ids, [])
    assert len(split_cases(ids[:3], 0.01)[1]) == 1  # a positive fraction takes at least one
    with pytest.raises(InputError, match="leaves no training case"):
        split_cases(["a"], 0.5)
    with pytest.raises(InputError):
        split_cases(ids, 1.0)


def test_parsers():
    assert parse_label_map("membrane=0, interior=255") == [("membrane", 0), ("interior", 255)]
    assert parse_spacing("0.004,0.004,0.05") == (0.004, 0.004, 0.05)
    assert parse_slice_range("20:30") == (20, 30)
    for bad in ("membrane", "membrane=0", "a=1,a=2", "a=1,b=1", "a=x,b=2"):
        with pytest.raises(InputError):
            parse_label_map(bad)
    for bad in ("1,2", "1,0,1", "a,b,c", "1,1,nan"):
        with pytest.raises(InputError):
            parse_spacing(bad)
    for bad in ("30:20", "5", "a:b", "3:3"):
        with pytest.raises(InputError):
            parse_slice_range(bad)
    out = map_label_values(np.array([255, 0, 255]), [("membrane", 0), ("interior", 255)], "x")
    np.testing.assert_array_equal(out, [1, 0, 1])


# pairs --------------------------------------------------------------------------------------------
def test_pairs_synthetic(tmp_path):
    rng = np.random.default_rng(0)
    originals, src_path = {}, {}
    for i in range(5):
        image, label = toy_case(rng)
        save(tmp_path / "img" / f"p_{i}.nii.gz", image, toy_affine(i))
        save(tmp_path / "lab" / f"p_{i}.nii.gz", label, toy_affine(i))
        originals[f"p_{i}"] = (image, label, toy_affine(i))
        src_path[f"p_{i}"] = tmp_path / "img" / f"p_{i}.nii.gz"
    (tmp_path / "img" / "._p_0.nii.gz").write_bytes(b"macOS resource fork")  # ignored
    summary = import_pairs(tmp_path / "img", tmp_path / "lab", tmp_path / "out", test_fraction=0.4)
    assert len(summary.train) == 3 and len(summary.test) == 2
    assert "5 cases (3 train, 2 test)" in summary.line()
    ds = Dataset.open(tmp_path / "out")
    assert ds.labels == {"background": 0, "class_1": 1, "class_2": 2}
    assert ds.cases("Tr") == summary.train and ds.cases("Ts") == summary.test
    for split in ("Tr", "Ts"):
        for case in ds.cases(split):
            image, label = ds.load_pair(case, split)
            src_image, src_label, affine = originals[case]
            assert read_nifti(ds.image_path(case, split)).array.dtype == np.float32
            assert read_nifti(ds.label_path(case, split)).array.dtype == np.uint8
            np.testing.assert_array_equal(image.array, src_image)
            np.testing.assert_array_equal(label.array, src_label)
            # Exactly the affine the source header holds (float32 in NIfTI).
            np.testing.assert_array_equal(image.affine, nib.load(str(src_path[case])).affine)
            np.testing.assert_allclose(image.affine, affine, atol=1e-6)
    # Named classes; the same split for the same seed.
    again = import_pairs(
        tmp_path / "img",
        tmp_path / "lab",
        tmp_path / "out2",
        label_names=["background", "a", "b"],
        test_fraction=0.4,
    )
    assert again.test == summary.test and again.labels == {"background": 0, "a": 1, "b": 2}


def test_pairs_hippocampus_subset(tmp_path, hippocampus_dir):
    names = sorted(p.name for p in (hippocampus_dir / "images").glob("*.nii.gz"))[:5]
    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
        for name in names:
            shutil.copy(hippocampus_dir / sub / name, tmp_path / sub / name)
    summary = import_pairs(
        tmp_path / "images",
        tmp_path / "labels",
        tmp_path / "out",
        label_names=["background", "anterior", "posterior"],
    )
    ds = Dataset.open(tmp_path / "out")
    assert ds.class_names == ["background", "anterior", "posterior"]
    assert ds.cases("Tr") == [n[: -len(".nii.gz")] for n in names] == summary.train
    for name in names:
        src_img = nib.load(str(hippocampus_dir / "images" / name))
        src_lab = np.asarray(nib.load(str(hippocampus_dir / "labels" / name)).dataobj)
        image, label = ds.load_pair(name[: -len(".nii.gz")])
        assert image.shape == src_img.shape
        np.testing.assert_array_equal(image.affine, src_img.affine)
        np.testing.assert_array_equal(image.array, np.asarray(src_img.dataobj, np.float32))
        np.testing.assert_array_equal(label.array, src_lab.astype(int))
        assert set(np.unique(label.array)) == {0, 1, 2}
        assert image.spacing == (1.0, 1.0, 1.0)


def test_pairs_hippocampus_full_cli(tmp_path, hippocampus_dir, capsys):
    out = tmp_path / "hippo"
    argv = ["import", "pairs", str(hippocampus_dir / "images"), str(hippocampus_dir / "labels")]
    argv += [str(out), "--label-names", "background,anterior,posterior", "--test-fraction", "0.25"]
    assert main(argv) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("imported 200 cases (150 train, 50 test) from pairs")
    assert "shape 31x40x24 to 43x59x47" in line and "spacing 1x1x1 mm" in line
    ds = Dataset.open(out)
    assert len(ds.cases("Tr")) == 150 and len(ds.cases("Ts")) == 50
    case = ds.cases("Ts")[0]
    image, label = ds.load_pair(case, "Ts")
    src = nib.load(str(hippocampus_dir / "images" / f"{case}.nii.gz"))
    assert image.shape == src.shape and set(np.unique(label.array)) <= {0, 1, 2}


# msd ----------------------------------------------------------------------------------------------
def make_msd(root, n=4, modalities=("MRI",), rng=None):
    rng = rng or np.random.default_rng(0)
    meta = {
        "name": "Toy",
        "modality": {str(i): m for i, m in enumerate(modalities)},
        "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
        "numTraining": n,
        "training": [
            {"image": f"./imagesTr/toy_{i:03d}.nii.gz", "label": f"./labelsTr/toy_{i:03d}.nii.gz"}
            for i in range(n)
        ],
        "test": ["./imagesTs/toy_900.nii.gz"],
    }
    for i in range(n):
        channels = [rng.normal(size=(6, 5, 4)).astype(np.float32) + 10 * c for c in range(2)]
        image = np.stack(channels[: len(modalities)], -1) if len(modalities) > 1 else channels[0]
        save(root / "imagesTr" / f"toy_{i:03d}.nii.gz", image, toy_affine())
        save(root / "labelsTr" / f"toy_{i:03d}.nii.gz", toy_case(rng)[1], toy_affine())
    save(root / "imagesTs" / "toy_900.nii.gz", np.zeros((6, 5, 4), np.float32))
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_msd_single_modality(tmp_path):
    task = make_msd(tmp_path / "Task04_Toy")
    summary = import_msd(task, tmp_path / "out", test_fraction=0.25, seed=3)
    ds = Dataset.open(tmp_path / "out")
    assert ds.labels == {"background": 0, "Anterior": 1, "Posterior": 2}
    assert ds.meta["channel_names"] == {"0": "MRI"}
    assert len(ds.cases("Tr")) == 3 and len(ds.cases("Ts")) == 1 == len(summary.test)
    assert "toy_900" not in ds.cases("Ts")  # MSD's unlabelled test images are not imported
    ds.load_pair(ds.cases("Tr")[0])


def test_msd_multimodal_imports_every_channel_or_one(tmp_path):
    task = make_msd(tmp_path / "Task01_Toy", modalities=("FLAIR", "T1w"))
    import_msd(task, tmp_path / "all")
    ds = Dataset.open(tmp_path / "all")
    assert ds.meta["channel_names"] == {"0": "FLAIR", "1": "T1w"} and ds.num_channels == 2
    image, _ = ds.load_pair("toy_000")
    assert image.shape == (2, 6, 5, 4)
    assert image.array[1].mean() - image.array[0].mean() > 5  # channel 1 is offset by 10
    import_msd(task, tmp_path / "out", channel=1)
    ds = Dataset.open(tmp_path / "out")
    assert ds.meta["channel_names"] == {"0": "T1w"}
    assert ds.load_image("toy_000").array.mean() > 5  # channel 1 is offset by 10


def test_msd_without_training_list_and_v2_labels(tmp_path):
    task = make_msd(tmp_path / "task")
    meta = json.loads((task / "dataset.json").read_text())
    del meta["training"]
    meta["labels"] = {"background": 0, "a": 1, "b": 2}
    (task / "dataset.json").write_text(json.dumps(meta))
    (task / "imagesTr" / "._toy_000.nii.gz").write_bytes(b"junk")
    summary = import_msd(task, tmp_path / "out")
    assert summary.train == [f"toy_{i:03d}" for i in range(4)]
    assert summary.labels == {"background": 0, "a": 1, "b": 2}


# hvsmr2016 ----------------------------------------------------------------------------------------
def test_hvsmr2016(tmp_path):
    rng = np.random.default_rng(2)
    src = tmp_path / "hvsmr"
    for n in (0, 1, 2, 10):
        image, label = toy_case(rng)
        save(src / f"training_axial_crop_pat{n}.nii.gz", image.astype(np.int16), toy_affine())
        save(src / f"training_axial_crop_pat{n}-label.nii.gz", label.astype(np.uint8), toy_affine())
    save(src / "testing_axial_crop_pat20.nii.gz", image, toy_affine())  # no label: not imported
    summary = import_hvsmr2016(src, tmp_path / "out", test_fraction=0.25)
    assert sorted(summary.train + summary.test) == ["pat0", "pat1", "pat10", "pat2"]
    ds = Dataset.open(tmp_path / "out")
    assert ds.labels == {"background": 0, "myocardium": 1, "blood_pool": 2}
    assert (
        read_nifti(ds.image_path("pat10", "Ts" if "pat10" in summary.test else "Tr")).array.dtype
        == np.int16
    )
    with pytest.raises(InputError, match="no training_sa_crop_patN"):
        import_hvsmr2016(src, tmp_path / "out2", variant="sa_crop")


# em-stack -----------------------------------------------------------------------------------------
def test_em_stack_isbi(tmp_path, isbi_dir, capsys):
    out = tmp_path / "isbi"
    argv = ["import", "em-stack", str(isbi_dir / "image"), str(isbi_dir / "label"), str(out)]
    assert main([*argv, "--label-map", "membrane=0,interior=255"]) == 0
    assert "1 case (1 train, 0 test)" in capsys.readouterr().out
    ds = Dataset.open(out)
    assert ds.labels == {"membrane": 0, "interior": 1}
    image, label = ds.load_pair("em")
    assert image.shape == (512, 512, 30)
    np.testing.assert_allclose(image.spacing, ISBI_SPACING, rtol=1e-6)
    assert set(np.unique(label.array)) == {0, 1}
    assert 0.15 < (label.array == 0).mean() < 0.3  # README: about 22 % membrane
    # Slice 10 of the stack is 10.png, with X along image columns.
    png = np.asarray(Image.open(isbi_dir / "image" / "10.png"))
    np.testing.assert_array_equal(image.array[:, :, 10], png.T)
    lab = np.asarray(Image.open(isbi_dir / "label" / "10.png"))
    np.testing.assert_array_equal(label.array[:, :, 10], (lab == 255).T)


def test_em_stack_isbi_test_slices(tmp_path, isbi_dir):
    summary = import_em_stack(
        isbi_dir / "image",
        isbi_dir / "label",
        tmp_path / "out",
        label_map=[("membrane", 0), ("interior", 255)],
        test_slices=(20, 30),
    )
    assert summary.train == ["em_z000"] and summary.test == ["em_z020"]
    ds = Dataset.open(tmp_path / "out")
    train, test = ds.load_image("em_z000"), ds.load_image("em_z020", "Ts")
    assert train.shape == (512, 512, 20) and test.shape == (512, 512, 10)
    # The test piece keeps its place: its origin is 20 sections up.
    assert test.affine[2, 3] == pytest.approx(20 * ISBI_SPACING[2])


def test_em_stack_multipage_tiff_middle_split(tmp_path):
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 255, size=(9, 6, 5)).astype(np.uint8)  # (Z, Y, X)
    labels = np.where(rng.random((9, 6, 5)) < 0.3, 7, 3).astype(np.uint8)
    tifffile.imwrite(tmp_path / "img.tif", stack)
    tifffile.imwrite(tmp_path / "lab.tif", labels)
    summary = import_em_stack(
        tmp_path / "img.tif",
        tmp_path / "lab.tif",
        tmp_path / "out",
        label_map=[("membrane", 7), ("interior", 3)],
        spacing=(0.01, 0.01, 0.05),
        test_slices=(3, 6),
        name="vnc",
    )
    assert summary.train == ["vnc_z000", "vnc_z006"] and summary.test == ["vnc_z003"]
    ds = Dataset.open(tmp_path / "out")
    piece = ds.load_label("vnc_z006")
    assert piece.shape == (5, 6, 3)
    np.testing.assert_array_equal(piece.array, (labels[6:] == 3).transpose(2, 1, 0))
    np.testing.assert_allclose(piece.spacing, (0.01, 0.01, 0.05))


def test_em_stack_errors(tmp_path, isbi_dir):
    with pytest.raises(InputError, match=r"label values \[255\] are not in the label map"):
        import_em_stack(
            isbi_dir / "image",
            isbi_dir / "label",
            tmp_path / "out",
            label_map=[("membrane", 0), ("interior", 1)],
        )
    with pytest.raises(InputError, match="must lie within 0:30"):
        import_em_stack(
            isbi_dir / "image",
            isbi_dir / "label",
            tmp_path / "out",
            label_map=[("membrane", 0), ("interior", 255)],
            test_slices=(0, 30),
        )
    assert not (tmp_path / "out").exists()
