"""Datasets as nnU-Net defines them: consecutive labels, and every channel of ``channel_names``
read, trained on and required at prediction."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_preset import TINY

from sparseseg.cli import main
from sparseseg.data.io import write_nifti
from sparseseg.data.layout import Dataset, write_case, write_dataset_json
from sparseseg.data.phantom import write_phantom_dataset
from sparseseg.errors import InputError


def second_contrast(image: np.ndarray, seed: int) -> np.ndarray:
    """The same anatomy in another contrast: inverted, compressed intensities with own noise."""
    rng = np.random.default_rng(seed)
    inverted = np.sqrt(np.clip(image.max() - image, 0, None))
    return (inverted + rng.normal(0, 0.05 * inverted.std(), image.shape)).astype(np.float32)


def two_channel_dataset(root: Path, cases: int = 2, shape=(24, 24, 16)) -> Path:
    """Heart phantoms with a second channel, sparse training labels (every 4th slice of each
    plane), and one densely labelled test case."""
    dense = write_phantom_dataset(root / "dense", "heart", cases, seed=5, test_cases=1, shape=shape)
    ds = Dataset.open(dense)
    out = root / "two"
    ignore = ds.num_classes
    for split in ("Tr", "Ts"):
        for i, case in enumerate(ds.cases(split)):
            image, label = ds.load_pair(case, split)
            both = image.with_array(np.stack([image.array, second_contrast(image.array, i)]))
            if split == "Tr":
                keep = np.zeros(label.shape, bool)
                keep[::4] = keep[:, ::4] = keep[:, :, ::4] = True
                label = label.with_array(np.where(keep, label.array, ignore).astype(np.uint8))
            write_case(out, case, both, label, split)
    labels = {**ds.class_labels, "ignore": ignore}
    write_dataset_json(out, labels, cases, channel_names={"0": "T1", "1": "T2"})
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(dataset, model folder) of one tiny training run on the two-channel phantom."""
    from sparseseg.pipeline import train

    root = tmp_path_factory.mktemp("channels")
    dataset = two_channel_dataset(root)
    state = train(dataset, root / "model", "cpu", TINY, progress=False)
    return dataset, root / "model", state


def test_two_channel_dataset_opens_with_both_channels(tmp_path):
    root = two_channel_dataset(tmp_path, cases=1)
    ds = Dataset.open(root)
    assert ds.num_channels == 2
    case = ds.cases("Tr")[0]
    assert [p.name for p in ds.image_paths(case)] == [f"{case}_0000.nii.gz", f"{case}_0001.nii.gz"]
    assert ds.cases("Tr") == [case]  # channel files are not cases
    image = ds.load_image(case)
    first = Dataset.open(tmp_path / "dense").load_image(case)
    assert image.shape == (2, *first.shape)
    np.testing.assert_array_equal(image.array[0], first.array)
    assert not np.allclose(image.array[1], image.array[0])


def test_zscore_is_per_channel():
    from sparseseg.runtime import zscore

    rng = np.random.default_rng(0)
    image = np.stack([rng.normal(100, 20, (6, 6, 6)), rng.normal(-3, 0.1, (6, 6, 6))])
    z = zscore(image)
    np.testing.assert_allclose(z.mean(axis=(1, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=(1, 2, 3)), 1, atol=1e-4)


def test_training_feeds_both_channels_to_every_model(trained):
    from sparseseg.bundle import load_bundle

    dataset, model, state = trained
    assert state["stages"]["report"]["done"] and "skipped" not in state["stages"]["report"]
    bundle = load_bundle(model)
    assert bundle.num_channels == 2
    net2d, net3d, meta = (bundle.build(p) for p in ("2d", "3d", "meta"))
    conv2d = next(m for m in net2d.modules() if isinstance(m, torch.nn.Conv2d))
    conv3d = next(m for m in net3d.modules() if isinstance(m, torch.nn.Conv3d))
    assert conv2d.in_channels == 2 and conv3d.in_channels == 2
    assert meta.stem.image[0].in_channels == 2  # the meta-model's image branch
    assert meta.stem.pl[0].in_channels == 3  # A(Y): one channel per class
    # The PL datasets are nnU-Net datasets with both channel files.
    pl = model / "stage2_pseudolabels" / "pl_3d"
    assert Dataset.open(pl).num_channels == 2
    assert len(list((pl / "imagesTr").glob("*_0001.nii.gz"))) == 2


def test_predict_uses_both_channels_and_needs_every_channel_file(trained, tmp_path):
    from sparseseg.predict import Predictor, predict_files

    dataset, model, _ = trained
    ds = Dataset.open(dataset)
    case = ds.cases("Ts")[0]
    written = predict_files(model, dataset / "imagesTs", tmp_path / "pred", progress=False)
    assert list(written) == [case]  # CASE_0000 and CASE_0001 are one case
    image = ds.load_image(case, "Ts")
    predictor = Predictor(model, device="cpu")
    labels = predictor.predict(image.array)["meta"].labels
    from sparseseg.data.io import read_nifti

    np.testing.assert_array_equal(read_nifti(written[case]["meta"]).array, labels)
    # The second channel changes the prediction's input: swapping it changes the 3D output.
    probs = predictor.predict(image.array, ["3d"], probabilities=True)["3d"].probabilities
    swapped = image.array[::-1].copy()
    other = predictor.predict(swapped, ["3d"], probabilities=True)["3d"].probabilities
    assert not np.allclose(probs, other)
    # In memory: one (X, Y, Z) array is not enough for a two-channel model.
    with pytest.raises(InputError, match="2 channel"):
        predictor.predict(image.array[0])
    # A folder (or a single file) whose case lacks CASE_0001: one clear error naming it.
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(dataset / "imagesTs" / f"{case}_0000.nii.gz", lonely)
    for source in (lonely, lonely / f"{case}_0000.nii.gz"):
        with pytest.raises(InputError, match="channel file missing") as info:
            predict_files(model, source, tmp_path / "nope", progress=False)
        assert f"{case}_0001.nii.gz" in str(info.value)
    code = main(["predict", str(model), str(lonely), "--out", str(tmp_path / "cli")])
    assert code == 2 and not (tmp_path / "cli").exists()


def test_dataset_missing_a_channel_file_is_a_clear_error(tmp_path):
    root = two_channel_dataset(tmp_path, cases=1)
    case = Dataset.open(root).cases("Tr")[0]
    (root / "imagesTr" / f"{case}_0001.nii.gz").unlink()
    with pytest.raises(InputError, match="channel file missing") as info:
        Dataset.open(root)
    assert f"{case}_0001.nii.gz" in str(info.value)


def test_selection_and_simulated_labels_use_both_channels(tmp_path):
    from sparseseg.selection import select_slices, write_selection

    root = two_channel_dataset(tmp_path, cases=1)
    sel = select_slices(root, budget=4, strategy="ra", extractor="intensity")
    case = Dataset.open(root).cases("Tr")[0]
    assert sel.cases[case].shape == (24, 24, 16)
    assert [len(v) for v in sel.chosen(case).values()] == [4, 6, 6]
    out = write_selection(sel, tmp_path / "sel", simulate_from_labels=True, tsne=False)
    assert (out / "masks" / f"{case}.nii.gz").exists() and (out / "sheets" / f"{case}.png").exists()
    sparse = Dataset.open(out / "dataset")
    assert sparse.num_channels == 2
    assert sparse.load_image(case).shape == (2, 24, 24, 16)


def test_combined_channel_features_average_the_per_channel_similarities():
    from sparseseg.selection.facility import cosine_similarity
    from sparseseg.selection.features import combine_channels

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(7, 5)), rng.normal(size=(7, 9))
    (combined,) = combine_channels([{"xy": a}, {"xy": b}], [2])
    expected = (cosine_similarity(a, clip=False) + cosine_similarity(b, clip=False)) / 2
    np.testing.assert_allclose(cosine_similarity(combined["xy"], clip=False), expected, atol=1e-5)
    (single,) = combine_channels([{"xy": a}], [1])
    np.testing.assert_array_equal(single["xy"], a)


def labelled_dataset(root: Path, labels: dict[str, int], values) -> Path:
    """One 8^3 case whose label file holds ``values``."""
    image = np.random.default_rng(0).normal(size=(8, 8, 8)).astype(np.float32)
    label = np.zeros((8, 8, 8), np.uint8)
    for i, v in enumerate(values):
        label[i] = v
    write_nifti(root / "imagesTr" / "a_0000.nii.gz", image)
    write_nifti(root / "labelsTr" / "a.nii.gz", label)
    write_dataset_json(root, labels, 1)
    return root


def test_non_consecutive_labels_are_refused_at_open(tmp_path):
    root = labelled_dataset(tmp_path / "d", {"background": 0, "a": 1, "b": 4}, [0, 1, 4])
    with pytest.raises(InputError, match="not consecutive") as info:
        Dataset.open(root)
    assert "dataset.json" in str(info.value) and "0..C-1" in str(info.value)
    code = main(["train", str(root), "--out", str(tmp_path / "m"), "--preset", "cpu"])
    assert code == 2 and not (tmp_path / "m").exists()
    # The ignore label may sit above the classes, and must be the highest.
    ok = labelled_dataset(tmp_path / "e", {"background": 0, "a": 1, "ignore": 7}, [0, 1, 7])
    assert Dataset.open(ok).ignore_value == 7


def test_undeclared_label_values_are_a_clear_error_before_training(tmp_path, capsys):
    root = labelled_dataset(tmp_path / "d", {"background": 0, "a": 1}, [0, 1, 4, 5])
    ds = Dataset.open(root)
    with pytest.raises(InputError, match=r"label values \[4, 5\] are not declared") as info:
        ds.load_label("a")
    assert "a.nii.gz" in str(info.value)
    code = main(["train", str(root), "--out", str(tmp_path / "m"), "--preset", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "[4, 5]" in err and "Traceback" not in err
    assert not (tmp_path / "m" / "stage2_pseudolabels" / "models").exists()
