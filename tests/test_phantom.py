"""Phantom data: determinism, label sets, layout, and that the task is not trivial."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import label as components

from sparseseg.cli import main
from sparseseg.data.layout import Dataset
from sparseseg.data.phantom import (
    EM_LABELS,
    HEART_LABELS,
    case_rng,
    make_em_case,
    make_heart_case,
    write_phantom_dataset,
)

SMALL = {"heart": (32, 32, 20), "em": (48, 48, 8)}


def file_hashes(root) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("kind", ["heart", "em"])
def test_same_seed_same_bytes(tmp_path, kind):
    a, b, c = (tmp_path / n / "ds" for n in ("a", "b", "c"))
    write_phantom_dataset(a, kind, cases=2, seed=3, test_cases=1, shape=SMALL[kind])
    write_phantom_dataset(b, kind, cases=2, seed=3, test_cases=1, shape=SMALL[kind])
    write_phantom_dataset(c, kind, cases=2, seed=4, test_cases=1, shape=SMALL[kind])
    ha, hb, hc = file_hashes(a), file_hashes(b), file_hashes(c)
    assert len(ha) == 7  # dataset.json + 3 images + 3 labels
    assert ha == hb
    assert (
        ha["imagesTr/" + f"{kind}_000_0000.nii.gz"] != hc["imagesTr/" + f"{kind}_000_0000.nii.gz"]
    )


def test_case_does_not_depend_on_the_number_of_cases():
    one = make_heart_case(case_rng(0, "heart", 1), SMALL["heart"])
    again = make_heart_case(case_rng(0, "heart", 1), SMALL["heart"])
    other = make_heart_case(case_rng(0, "heart", 2), SMALL["heart"])
    np.testing.assert_array_equal(one[0], again[0])
    assert not np.array_equal(one[1], other[1])


def test_heart_dataset_loads_back(tmp_path):
    root = write_phantom_dataset(tmp_path / "heart", "heart", 3, seed=0, test_cases=1)
    ds = Dataset.open(root)
    assert ds.labels == HEART_LABELS
    assert ds.cases("Tr") == ["heart_000", "heart_001", "heart_002"]
    assert ds.cases("Ts") == ["heart_003"] and ds.has_labels("Ts")
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["numTraining"] == 3 and meta["channel_names"] == {"0": "MRI"}
    for split, case in (("Tr", "heart_000"), ("Ts", "heart_003")):
        image, label = ds.load_pair(case, split)
        assert image.shape == (64, 64, 40)
        np.testing.assert_allclose(image.spacing, (1.0, 1.0, 1.6))
        assert set(np.unique(label.array)) == {0, 1, 2}
        assert np.isfinite(image.array).all() and image.array.min() >= 0


def test_heart_anatomy_and_difficulty():
    for index in range(3):
        image, label = make_heart_case(case_rng(0, "heart", index))
        assert image.dtype == np.float32 and label.dtype == np.uint8
        blood, myo = label == 2, label == 1
        frac = np.bincount(label.ravel(), minlength=3) / label.size
        assert 0.02 < frac[1] < 0.2 and 0.03 < frac[2] < 0.25
        # The myocardium is one wall around the blood pool: much of the pool's outer rim is wall.
        rim = ndimage.binary_dilation(blood) & ~blood
        assert (rim & myo).sum() / rim.sum() > 0.3
        assert components(myo).max() <= 3
        # Anatomy changes along the slice axis, and some slices hold no heart at all.
        per_slice = [(label[..., z] > 0).sum() for z in range(label.shape[2])]
        assert min(per_slice) < 0.2 * max(per_slice)
        # Intensities overlap: much background lies in the myocardium's interquartile range, and
        # no threshold separates blood pool from the rest.
        lo, hi = np.quantile(image[myo], [0.25, 0.75])
        assert ((image[label == 0] > lo) & (image[label == 0] < hi)).mean() > 0.15
        best = max(
            2 * ((image > t) & blood).sum() / ((image > t).sum() + blood.sum())
            for t in np.quantile(image, np.linspace(0.5, 0.99, 50))
        )
        assert best < 0.92


def test_em_dataset_and_cells(tmp_path):
    root = write_phantom_dataset(tmp_path / "em", "em", 1, seed=0, test_cases=1)
    ds = Dataset.open(root)
    assert ds.labels == EM_LABELS and ds.num_classes == 2
    image, label = ds.load_pair("em_000")
    assert image.shape == (128, 128, 24)
    sx, sy, sz = image.spacing
    assert sx == pytest.approx(sy) and sz > 3 * sx  # anisotropic sections
    lab = label.array
    assert 0.1 < (lab == 0).mean() < 0.4
    # Membranes cut each section into many cells, which change from section to section.
    counts = [components(lab[..., z] == 1, connectivity=1).max() for z in range(lab.shape[2])]
    assert min(counts) > 20
    assert (lab[..., 0] != lab[..., -1]).mean() > 0.1
    # Dark organelles inside cells: interior voxels as dark as membrane.
    img = image.array
    assert (img[lab == 1] < np.median(img[lab == 0])).mean() > 0.005


@pytest.mark.parametrize("seed", range(6))
def test_small_shapes_hold_every_label(seed):
    image, label = make_heart_case(case_rng(seed, "heart", 0), SMALL["heart"])
    assert image.shape == label.shape == SMALL["heart"]
    assert (np.bincount(label.ravel(), minlength=3) / label.size).min() > 0.01
    image, label = make_em_case(case_rng(seed, "em", 0), SMALL["em"])
    assert image.shape == label.shape == SMALL["em"]
    assert (np.bincount(label.ravel(), minlength=2) / label.size).min() > 0.05
    assert make_em_case(case_rng(seed, "em", 0), (8, 8, 3))[1].shape == (8, 8, 3)


def test_phantom_cli(tmp_path, capsys):
    out = tmp_path / "ph"
    argv = ["phantom", str(out), "--kind", "em", "--cases", "2", "--test-cases", "1"]
    assert main([*argv, "--seed", "5", "--shape", "40,40,6"]) == 0
    line = capsys.readouterr().out.strip()
    assert "2 train + 1 test" in line and "40x40x6" in line
    assert main([*argv, "--shape", "40,40,6"]) == 2  # exists
    assert "already exists" in capsys.readouterr().err
    assert main([*argv, "--shape", "40,40,6", "--overwrite"]) == 0
    assert Dataset.open(out).cases("Ts") == ["em_002"]
