"""Resampling to a target spacing: the array functions, training on the target grid, and
prediction back on each input's own grid."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from sparseseg.cli import main
from sparseseg.data.layout import Dataset, write_case, write_dataset_json
from sparseseg.data.phantom import HEART_LABELS, case_rng, make_case
from sparseseg.data.resample import (
    resample_image,
    resample_labels,
    resample_probabilities,
    resample_volume,
    resampled_affine,
    resampled_shape,
)
from sparseseg.data.volume import Volume, affine_from_spacing
from sparseseg.errors import InputError

FEW_STEPS = {
    "train2d.iterations": 3,
    "train3d.iterations": 3,
    "meta.train.iterations": 4,
    "meta.stage1_iterations": 2,
}


def test_shape_follows_spacing():
    assert resampled_shape((24, 24, 24), (1, 1, 1), (1, 1, 2)) == (24, 24, 12)
    assert resampled_shape((10, 20, 7), (0.5, 2.0, 3.0), (1.0, 1.0, 1.0)) == (5, 40, 21)
    assert resampled_shape((3, 3, 3), (1, 1, 1), (10, 10, 10)) == (1, 1, 1)  # never empty
    image = np.random.default_rng(0).normal(size=(2, 10, 20, 7)).astype(np.float32)
    assert resample_image(image, (5, 40, 21)).shape == (2, 5, 40, 21)
    assert resample_image(image[0], (5, 40, 21)).dtype == np.float32


def test_volume_already_on_the_target_grid_is_untouched_and_a_resampled_one_keeps_its_place():
    volume = Volume(np.zeros((8, 8, 4), np.float32), affine_from_spacing((1.0, 1.0, 2.0)))
    assert resample_volume(volume, (1.0, 1.0, 2.0)) is volume
    assert resample_volume(volume, None) is volume
    # a ramp along x in mm: resampled values sit where the new affine says they are
    ramp = np.broadcast_to(np.arange(10, dtype=np.float32)[:, None, None] * 3.0, (10, 4, 4))
    source = Volume(np.ascontiguousarray(ramp), affine_from_spacing((3.0, 1.0, 1.0)))
    out = resample_volume(source, (1.0, 1.0, 1.0))
    assert out.shape == (30, 4, 4) and out.spacing == pytest.approx((1.0, 1.0, 1.0))
    index = np.stack([np.arange(30), np.zeros(30), np.zeros(30), np.ones(30)])
    mm = (out.affine @ index)[0]  # x in mm of each new voxel
    on_source = np.isclose(mm % 3.0, 0.0) & (mm <= 27)  # the cubic spline interpolates there
    np.testing.assert_allclose(out.array[on_source, 1, 1], mm[on_source], atol=1e-4)
    assert on_source.sum() == 10
    inside = (mm >= 6) & (mm <= 21)  # away from the extended edges, close to the ramp
    np.testing.assert_allclose(out.array[inside, 1, 1], mm[inside], atol=0.1)
    assert np.allclose(resampled_affine(np.eye(4), (4, 4, 4), (4, 4, 4)), np.eye(4))


def test_labels_keep_the_ignore_value_and_whole_annotated_planes():
    ignore = 3
    rng = np.random.default_rng(1)
    label = np.full((16, 12, 10), ignore, np.uint8)
    label[:, :, 4] = rng.integers(0, 3, size=(16, 12))  # one annotated xy plane
    label[5, :, :] = rng.integers(0, 3, size=(12, 10))  # one annotated yz plane
    out = resample_labels(label, (32, 6, 20))  # x finer, y coarser, z finer
    assert out.dtype == np.uint8 and set(np.unique(out)) <= {0, 1, 2, ignore}
    annotated = out != ignore
    z_planes = [k for k in range(20) if annotated[:, :, k].all()]
    x_planes = [i for i in range(32) if annotated[i].all()]
    assert z_planes == [8, 9] and x_planes == [10, 11]  # whole planes, where they were
    # and nothing else is annotated: every annotated voxel lies on one of those planes
    on_planes = np.zeros_like(annotated)
    on_planes[:, :, z_planes] = on_planes[x_planes] = True
    assert not (annotated & ~on_planes).any()
    # the values are the source's nearest voxel's: each new voxel's centre, in source voxels,
    # is (i + 0.5) * old / new - 0.5 (x: i / 2 - 0.25 -> i // 2; y: 2 j + 0.5 -> 2 j + 1)
    for k in z_planes:
        np.testing.assert_array_equal(out[:, :, k], label[:, 1::2, 4].repeat(2, axis=0))


def test_probabilities_round_trip():
    grid = np.stack(np.meshgrid(*(np.linspace(0, 1, n) for n in (12, 10, 8)), indexing="ij"))
    logits = np.stack([np.sin(3 * grid[0]) + grid[2], np.cos(2 * grid[1]), 0.5 * grid[0] * grid[1]])
    probs = np.exp(logits) / np.exp(logits).sum(0)
    fine = resample_probabilities(probs, (24, 20, 16))
    assert fine.shape == (3, 24, 20, 16) and fine.dtype == np.float32
    np.testing.assert_allclose(fine.sum(0), 1.0, atol=1e-5)
    assert fine.min() >= 0 and fine.max() <= 1
    back = resample_probabilities(fine, (12, 10, 8))
    assert np.abs(back - probs).max() < 0.03
    assert (back.argmax(0) == probs.argmax(0)).mean() > 0.98


# A phantom whose training cases have two spacings ------------------------------------------
SPECS = [  # split, spacing (mm), shape
    ("Tr", (1.0, 1.0, 2.0), (24, 24, 12)),
    ("Tr", (1.0, 1.0, 2.0), (24, 24, 12)),
    ("Tr", (1.0, 1.0, 1.0), (24, 24, 24)),
    ("Ts", (1.0, 1.0, 1.0), (24, 24, 20)),
    ("Ts", (1.0, 1.0, 2.0), (24, 24, 12)),
]
IGNORE = 3


def two_spacings(root: Path) -> Path:
    """Heart phantoms at 1 x 1 x 2 mm and 1 x 1 x 1 mm; training labels on every 4th slice of
    each plane (the rest ``ignore``), test labels dense."""
    for i, (split, spacing, shape) in enumerate(SPECS):
        image, label = make_case("heart", case_rng(0, "heart", i), shape)
        labels = label.array
        if split == "Tr":
            keep = np.zeros(shape, bool)
            keep[::4] = keep[:, ::4] = keep[:, :, ::4] = True
            labels = np.where(keep, labels, IGNORE).astype(np.uint8)
        affine = affine_from_spacing(spacing)
        write_case(root, f"h{i}", Volume(image.array, affine), Volume(labels, affine), split)
    write_dataset_json(root, {**HEART_LABELS, "ignore": IGNORE}, num_training=3)
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("resample")
    data = two_spacings(root / "data")
    sets = [f"--set={k}={v}" for k, v in FEW_STEPS.items()]
    args = ["train", str(data), "--out", str(root / "model"), "--preset", "auto", "--quiet"]
    assert main([*args, "--no-report", *sets]) == 0
    return data, root / "model"


def test_training_cases_are_on_the_target_grid(trained):
    from sparseseg.pseudolabels import training_case

    data, model = trained
    plan = json.loads((model / "plan.json").read_text())
    assert plan["preset"]["target_spacing"] == [1.0, 1.0, 2.0]  # the median
    assert plan["notes"]["resampling"].startswith("to 1x1x2 mm: 1 of 3")
    ds = Dataset.open(data)
    moved = training_case(ds, "h2", "Tr", (1.0, 1.0, 2.0))
    assert moved["image"].shape == moved["label"].shape == (24, 24, 12)
    assert IGNORE in moved["label"] and set(np.unique(moved["label"])) <= {0, 1, 2, IGNORE}
    # a case on the target grid is exactly what it was without resampling
    kept, plain = training_case(ds, "h0", "Tr", (1.0, 1.0, 2.0)), training_case(ds, "h0")
    np.testing.assert_array_equal(kept["image"], plain["image"])
    np.testing.assert_array_equal(kept["label"], plain["label"])
    # every PL dataset holds the resampled image beside PLs of the same grid (nnU-Net's check)
    stage2 = model / "stage2_pseudolabels"
    for name in ("xy", "xz", "yz", "3d"):
        image = nib.load(stage2 / f"pl_{name}" / "imagesTr" / "h2_0000.nii.gz")
        label = nib.load(stage2 / f"pl_{name}" / "labelsTr" / "h2.nii.gz")
        assert image.shape == label.shape == (24, 24, 12)
        assert np.allclose(image.affine, label.affine)
        assert image.header.get_zooms() == pytest.approx((1.0, 1.0, 2.0))
    assert nib.load(stage2 / "mean" / "h2.nii.gz").shape == (24, 24, 12, 3)
    assert (stage2 / "pl_3d" / "imagesTr" / "h0_0000.nii.gz").samefile(ds.image_path("h0"))


def test_predictions_come_back_on_each_input_grid(trained, tmp_path):
    data, model = trained
    out = tmp_path / "pred"
    assert (
        main(["predict", str(model), str(data / "imagesTs"), "--out", str(out), "--part", "all"])
        == 0
    )
    ds = Dataset.open(data)
    for case in ds.cases("Ts"):
        source = nib.load(ds.image_path(case, "Ts"))
        for part in ("meta", "3d", "xy", "xz", "yz"):
            pred = nib.load(out / part / f"{case}.nii.gz")
            assert pred.shape == source.shape, (case, part)
            assert np.allclose(pred.affine, source.affine)


def test_predictor_resamples_only_what_differs(trained):
    from sparseseg.predict import Predictor

    data, model = trained
    ds = Dataset.open(data)
    predictor = Predictor(model / "bundle.pt")
    assert predictor.target_spacing == (1.0, 1.0, 2.0)
    plain = Predictor(model / "bundle.pt")
    plain.preset = dataclasses.replace(plain.preset, target_spacing=None)  # as before resampling
    on_target = ds.load_image("h4", "Ts")
    got = predictor.predict(on_target.array, ("meta",), spacing=on_target.spacing)["meta"]
    np.testing.assert_array_equal(got.labels, plain.predict(on_target.array)["meta"].labels)
    # another grid: the target-grid prediction's probabilities, brought back, then the argmax
    fine = ds.load_image("h3", "Ts")
    got = predictor.predict(fine.array, ("meta",), probabilities=True, spacing=fine.spacing)
    coarse = plain.predict(resample_image(fine.array, (24, 24, 10)), probabilities=True)
    back = resample_probabilities(coarse["meta"].probabilities, fine.shape)
    np.testing.assert_allclose(got["meta"].probabilities, back, atol=1e-6)
    np.testing.assert_array_equal(got["meta"].labels, back.argmax(0))
    with pytest.raises(InputError, match="spacing"):
        predictor.predict(fine.array)
