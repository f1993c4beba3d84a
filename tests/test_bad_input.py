"""Bad input through the CLI: one clear line naming the file and the problem, exit code 2,
no traceback, nothing written, inputs untouched."""

from __future__ import annotations

import gzip
import hashlib
import json
import re

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from sparseseg.cli import main

SHAPE = (6, 5, 4)


def save(path, array, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))


def good_pairs(root, n=3):
    """n valid cases c_0.. in root/img and root/lab; the last one is the one tests spoil."""
    rng = np.random.default_rng(0)
    for i in range(n):
        save(root / "img" / f"c_{i}.nii.gz", rng.normal(size=SHAPE).astype(np.float32))
        label = rng.integers(0, 3, size=SHAPE).astype(np.uint8)
        label.flat[:3] = [0, 1, 2]
        save(root / "lab" / f"c_{i}.nii.gz", label)
    return root / "img" / f"c_{n - 1}.nii.gz", root / "lab" / f"c_{n - 1}.nii.gz"


def pairs_argv(root, out, *extra):
    return ["import", "pairs", str(root / "img"), str(root / "lab"), str(out), *extra]


def em_stack(root, nz=5, label_nz=None, label_values=(0, 255)):
    """PNG image and label slice folders root/image, root/label of 8 x 9 pixels."""
    rng = np.random.default_rng(1)
    (root / "image").mkdir(parents=True)
    (root / "label").mkdir()
    for z in range(nz):
        Image.fromarray(rng.integers(0, 255, (8, 9), dtype=np.uint8)).save(
            root / "image" / f"{z}.png"
        )
    for z in range(nz if label_nz is None else label_nz):
        lab = np.full((8, 9), label_values[0], np.uint8)
        lab[2:6, 2:6] = label_values[1]
        Image.fromarray(lab).save(root / "label" / f"{z}.png")


def em_argv(root, out, *extra):
    argv = ["import", "em-stack", str(root / "image"), str(root / "label"), str(out)]
    return [*argv, "--label-map", "membrane=0,interior=255", *extra]


# Each scenario builds bad input under ``root`` and returns (argv, file named, problem pattern).
def missing_folder(root, out):
    good_pairs(root)
    argv = ["import", "pairs", str(root / "nope"), str(root / "lab"), str(out)]
    return argv, "nope", "folder not found"


def missing_file(root, out):
    good_pairs(root)
    task = root / "task"
    (task / "imagesTr").mkdir(parents=True)
    (task / "labelsTr").mkdir()
    for i in range(2):
        (task / "imagesTr" / f"c_{i}.nii.gz").write_bytes(
            (root / "img" / f"c_{i}.nii.gz").read_bytes()
        )
    (task / "labelsTr" / "c_0.nii.gz").write_bytes((root / "lab" / "c_0.nii.gz").read_bytes())
    meta = {
        "labels": {"0": "background", "1": "a", "2": "b"},
        "modality": {"0": "MRI"},
        "training": [
            {"image": f"./imagesTr/c_{i}.nii.gz", "label": f"./labelsTr/c_{i}.nii.gz"}
            for i in range(2)
        ],
    }
    (task / "dataset.json").write_text(json.dumps(meta))
    return ["import", "msd", str(task), str(out)], "labelsTr/c_1.nii.gz", "file not found"


def unmatched_image(root, out):
    good_pairs(root)
    (root / "lab" / "c_2.nii.gz").unlink()
    return pairs_argv(root, out), "c_2.nii.gz", "no label file with the same name"


def corrupt_nifti(root, out):
    image, _ = good_pairs(root)
    image.write_bytes(b"this is not a NIfTI file")
    return pairs_argv(root, out), "img/c_2.nii.gz", "cannot read NIfTI"


def truncated_nifti(root, out):
    _, label = good_pairs(root)
    data = gzip.compress(gzip.decompress(label.read_bytes())[:300])  # header and a bit of data
    label.write_bytes(data)
    return pairs_argv(root, out), "lab/c_2.nii.gz", "cannot read NIfTI"


def truncated_data(root, out):
    image, _ = good_pairs(root)
    raw = gzip.decompress(image.read_bytes())
    image.write_bytes(gzip.compress(raw[: len(raw) - 100]))  # header intact, voxels missing
    return pairs_argv(root, out), "img/c_2.nii.gz", "cannot read NIfTI .*damaged"


def corrupt_png(root, out):
    em_stack(root)
    (root / "image" / "3.png").write_bytes(b"\x89PNG broken")
    return em_argv(root, out), "image/3.png", "cannot read image"


def corrupt_tiff_stack(root, out):
    em_stack(root)
    (root / "stack.tif").write_bytes(b"II*\x00 not really a TIFF")
    argv = ["import", "em-stack", str(root / "stack.tif"), str(root / "label"), str(out)]
    return [*argv, "--label-map", "membrane=0,interior=255"], "stack.tif", "cannot read TIFF"


def shape_mismatch(root, out):
    _, label = good_pairs(root)
    save(label, np.zeros((6, 5, 3), np.uint8))
    return pairs_argv(root, out), "lab/c_2.nii.gz", r"label shape \(6, 5, 3\) differs"


def affine_mismatch(root, out):
    _, label = good_pairs(root)
    save(label, np.asarray(nib.load(str(label)).dataobj), np.diag([1.0, 1.0, 2.5, 1.0]))
    return pairs_argv(root, out), "lab/c_2.nii.gz", "affine differs from the image affine"


def nan_image(root, out):
    image, _ = good_pairs(root)
    array = np.asarray(nib.load(str(image)).dataobj).copy()
    array[1, 2, 3] = np.nan
    save(image, array)
    return pairs_argv(root, out), "img/c_2.nii.gz", "1 voxels are NaN or infinite"


def inf_image(root, out):
    image, _ = good_pairs(root)
    array = np.asarray(nib.load(str(image)).dataobj).copy()
    array[0, 0, :2] = np.inf
    save(image, array)
    return pairs_argv(root, out), "img/c_2.nii.gz", "2 voxels are NaN or infinite"


def nan_label(root, out):
    _, label = good_pairs(root)
    array = np.asarray(nib.load(str(label)).dataobj).astype(np.float32)
    array[0, 0, 0] = np.nan
    save(label, array)
    return pairs_argv(root, out), "lab/c_2.nii.gz", "NaN or infinite"


def undeclared_label(root, out):
    good_pairs(root)  # values 0, 1, 2
    argv = pairs_argv(root, out, "--label-names", "background,hippocampus")
    return argv, "lab/c_0.nii.gz", r"label values \[2\] are not declared"


def unmapped_em_label(root, out):
    em_stack(root, label_values=(0, 128))
    return em_argv(root, out), "label", r"label values \[128\] are not in the label map"


def non_integer_label(root, out):
    _, label = good_pairs(root)
    save(label, np.full(SHAPE, 0.5, np.float32))
    return pairs_argv(root, out), "lab/c_2.nii.gz", "non-integer values"


def empty_folder(root, out):
    (root / "img").mkdir()
    (root / "lab").mkdir()
    return pairs_argv(root, out), "img", "no NIfTI or TIFF volumes in folder"


def empty_slice_folder(root, out):
    em_stack(root)
    for p in (root / "image").iterdir():
        p.unlink()
    return em_argv(root, out), "image", "no PNG or TIFF slices in folder"


def image_2d(root, out):
    image, _ = good_pairs(root)
    save(image, np.zeros((6, 5), np.float32))
    return pairs_argv(root, out), "img/c_2.nii.gz", r"expected a 3D volume, got 2D"


def image_4d(root, out):
    image, _ = good_pairs(root)
    save(image, np.zeros((*SHAPE, 2), np.float32))
    return pairs_argv(root, out), "img/c_2.nii.gz", r"expected a 3D volume, got 4D"


def slice_count_mismatch(root, out):
    em_stack(root, nz=5, label_nz=4)
    return em_argv(root, out), "label", r"label shape \(9, 8, 4\) differs from image shape"


def invalid_dataset_json(root, out):
    (root / "task").mkdir()
    (root / "task" / "dataset.json").write_text("{")
    return ["import", "msd", str(root / "task"), str(out)], "dataset.json", "invalid JSON"


SCENARIOS = [
    missing_folder,
    missing_file,
    unmatched_image,
    corrupt_nifti,
    truncated_nifti,
    truncated_data,
    corrupt_png,
    corrupt_tiff_stack,
    shape_mismatch,
    affine_mismatch,
    nan_image,
    inf_image,
    nan_label,
    undeclared_label,
    unmapped_em_label,
    non_integer_label,
    empty_folder,
    empty_slice_folder,
    image_2d,
    image_4d,
    slice_count_mismatch,
    invalid_dataset_json,
]


def snapshot(root) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        for p in sorted(root.rglob("*"))
    }


def check_failure(capsys, argv, name, problem):
    rc = main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert rc == 2
    assert "\n" not in err, err  # one line
    assert "Traceback" not in captured.err and captured.out == ""
    assert err.startswith(f"sparseseg {argv[0]}: error: ")
    assert name in err, err
    assert re.search(problem, err), err
    return err


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__)
def test_bad_input(tmp_path, capsys, scenario):
    inputs, outputs = tmp_path / "in", tmp_path / "new"
    inputs.mkdir()
    out = outputs / "out"  # its parent does not exist either
    argv, name, problem = scenario(inputs, out)
    before = snapshot(inputs)
    check_failure(capsys, argv, name, problem)
    assert not outputs.exists()  # no output, no temporary folder, no parent folder
    assert snapshot(inputs) == before  # inputs untouched


def test_existing_output_is_kept(tmp_path, capsys):
    good_pairs(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    check_failure(capsys, pairs_argv(tmp_path, out), "out", "already exists")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_failed_overwrite_keeps_the_old_output(tmp_path, capsys):
    _, label = good_pairs(tmp_path)
    out = tmp_path / "out"
    assert main(pairs_argv(tmp_path, out)) == 0
    capsys.readouterr()
    before = snapshot(out)
    save(label, np.zeros((6, 5, 3), np.uint8))
    check_failure(capsys, pairs_argv(tmp_path, out, "--overwrite"), "c_2.nii.gz", "shape")
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img", "lab", "out"]  # no temp dirs


def test_output_may_not_replace_the_input(tmp_path, capsys):
    good_pairs(tmp_path)
    before = snapshot(tmp_path)
    argv = pairs_argv(tmp_path, tmp_path, "--overwrite")
    check_failure(capsys, argv, str(tmp_path), "would replace the input")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "extra, problem",
    [
        (["--label-map", "membrane"], "label map must look like"),
        (["--label-map", "membrane=0,interior=255", "--spacing", "1,2"], "spacing must be"),
        (["--label-map", "membrane=0,interior=255", "--test-slices", "9:3"], "START < STOP"),
    ],
)
def test_bad_options(tmp_path, capsys, extra, problem):
    em_stack(tmp_path)
    argv = ["import", "em-stack", str(tmp_path / "image"), str(tmp_path / "label")]
    assert main([*argv, str(tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err
    assert problem in err and "\n" not in err.strip() and "Traceback" not in err
    assert not (tmp_path / "out").exists()
