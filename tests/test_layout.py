"""The canonical nnU-Net layout: writing, opening, labels, ignore, checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sparseseg.data.layout import (
    Dataset,
    check_label_values,
    check_same_geometry,
    with_ignore,
    write_case,
    write_dataset_json,
)
from sparseseg.data.volume import Volume, affine_from_spacing
from sparseseg.errors import InputError

LABELS = {"background": 0, "myocardium": 1, "blood_pool": 2}


def make_dataset(root, labels=LABELS, n_train=2, n_test=1, ignore_voxels=False):
    rng = np.random.default_rng(1)
    affine = affine_from_spacing((1.0, 1.0, 1.6))
    affine[:3, 3] = [5.0, -3.0, 2.0]
    for i in range(n_train + n_test):
        image = Volume(rng.normal(size=(6, 7, 5)).astype(np.float32), affine)
        label = rng.integers(0, 3, size=(6, 7, 5)).astype(np.uint8)
        if ignore_voxels:
            label[:, :, 1:] = labels["ignore"]
        split = "Tr" if i < n_train else "Ts"
        write_case(root, f"case_{i:03d}", image, Volume(label, affine), split)
    write_dataset_json(root, labels, num_training=n_train, name="toy")


def test_write_and_open(tmp_path):
    make_dataset(tmp_path)
    ds = Dataset.open(tmp_path)
    assert ds.name == "toy"
    assert ds.cases("Tr") == ["case_000", "case_001"]
    assert ds.cases("Ts") == ["case_002"]
    assert ds.has_labels("Tr") and ds.has_labels("Ts")
    assert ds.image_path("case_000").name == "case_000_0000.nii.gz"
    assert ds.label_path("case_000").name == "case_000.nii.gz"
    assert ds.class_names == ["background", "myocardium", "blood_pool"]
    assert ds.num_classes == 3 and ds.ignore_value is None
    image, label = ds.load_pair("case_001")
    assert image.array.dtype == np.float32 and label.array.dtype == np.int16
    assert image.shape == label.shape == (6, 7, 5)
    np.testing.assert_allclose(image.spacing, (1.0, 1.0, 1.6), atol=1e-6)
    np.testing.assert_allclose(label.affine, image.affine)
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta["numTraining"] == 2 and meta["file_ending"] == ".nii.gz"
    assert meta["channel_names"] == {"0": "image"}


def test_ignore_label(tmp_path):
    labels = with_ignore(LABELS)
    assert labels["ignore"] == 3 and with_ignore(labels) == labels
    make_dataset(tmp_path, labels=labels, ignore_voxels=True)
    ds = Dataset.open(tmp_path)
    assert ds.ignore_value == 3
    assert ds.num_classes == 3  # ignore is not a class
    assert "ignore" not in ds.class_labels and "ignore" in ds.labels
    label = ds.load_label("case_000")
    assert (label.array[:, :, 1:] == 3).all()


def test_open_rejects_bad_datasets(tmp_path):
    with pytest.raises(InputError, match="dataset folder not found"):
        Dataset.open(tmp_path / "nope")
    with pytest.raises(InputError, match="dataset.json is missing"):
        Dataset.open(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(InputError, match="invalid JSON"):
        Dataset.open(tmp_path)
    write_dataset_json(tmp_path, {"background": 0, "ignore": 1, "a": 2}, num_training=0)
    with pytest.raises(InputError, match="highest value"):
        Dataset.open(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "x": [1, 2]}}))
    with pytest.raises(InputError, match="region labels"):
        Dataset.open(tmp_path)
    write_dataset_json(tmp_path, LABELS, num_training=0)
    with pytest.raises(InputError, match="no cases"):
        Dataset.open(tmp_path)


def test_load_label_checks_values_and_geometry(tmp_path):
    make_dataset(tmp_path, labels={"background": 0, "a": 1}, n_test=0)
    ds = Dataset.open(tmp_path)
    with pytest.raises(InputError, match=r"case_000.nii.gz: label values \[2\] are not declared"):
        ds.load_label("case_000")
    image = Volume(np.zeros((6, 7, 5)), np.eye(4))
    other = Volume(np.zeros((6, 7, 5)), affine_from_spacing((1, 1, 2)))
    with pytest.raises(InputError, match="affine differs"):
        check_same_geometry(image, other, "lab.nii.gz")
    with pytest.raises(InputError, match="shape"):
        check_same_geometry(image, Volume(np.zeros((6, 7, 4))), "lab.nii.gz")
    check_label_values(np.array([0, 1, 1]), [0, 1], "x")  # fine


def test_missing_label_files_mean_no_labels(tmp_path):
    make_dataset(tmp_path)
    (tmp_path / "labelsTs" / "case_002.nii.gz").unlink()
    assert not Dataset.open(tmp_path).has_labels("Ts")
