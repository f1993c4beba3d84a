import json

import nibabel as nib
import numpy as np
import torch

from sparseseg.cli import main
from sparseseg.config import get_preset
from sparseseg.data.io import read_nifti
from sparseseg.data.layout import Dataset, write_case, write_dataset_json
from sparseseg.data.volume import Volume
from sparseseg.pseudolabels import (
    PL_SETS,
    apply_manual,
    mean_one_hot,
    mean_path,
    model_path,
    pl_dir,
    pl_path,
    pl_sets,
    read_mean_map,
    read_meta_case,
    read_pseudolabels,
    run_step2,
)

LABELS = {"background": 0, "ball": 1, "ignore": 2}
TINY = [
    "model2d.base_channels=4",
    "model2d.depth=2",
    "train2d.iterations=4",
    "train2d.batch_size=2",
    "train2d.patch=16x16",
    "model3d.stem_channels=4",
    "model3d.growth=4",
    "model3d.block_layers=1,1",
    "model3d.up_channels=4,4",
    "train3d.iterations=3",
    "train3d.batch_size=1",
    "train3d.patch=8x8x8",
    "inference.patch=8x8x8",
]


def _make_dataset(root, n=2, shape=(14, 12, 10)):
    affine = np.diag([0.8, 0.9, 1.5, 1.0])
    affine[:3, 3] = [10.0, -5.0, 3.0]
    rng = np.random.default_rng(0)
    grid = np.indices(shape).transpose(1, 2, 3, 0)
    for i in range(n):
        centre = np.array(shape) / 2 + rng.uniform(-2, 2, 3)
        dense = (np.linalg.norm(grid - centre, axis=-1) < 4).astype(np.uint8)
        image = dense * 2.0 + rng.normal(0, 0.3, shape) + 100
        sparse = np.full(shape, LABELS["ignore"], np.uint8)
        sparse[:, :, 4] = dense[:, :, 4]
        sparse[7] = dense[7]
        write_case(
            root, f"ball_{i:03d}", Volume(image.astype(np.float32), affine), Volume(sparse, affine)
        )
    write_dataset_json(root, LABELS, num_training=n)
    return Dataset.open(root)


def test_apply_manual_and_mean_one_hot():
    pl = np.array([[[0, 1, 2, 2]]], np.uint8)
    manual = np.array([[[3, 0, 3, 1]]], np.int16)
    np.testing.assert_array_equal(apply_manual(pl, manual, 3), [[[0, 0, 2, 1]]])
    maps = [np.array([[[0, 1]]]), np.array([[[0, 2]]]), np.array([[[1, 2]]]), np.array([[[0, 2]]])]
    ay = mean_one_hot(maps, 3)
    assert ay.shape == (3, 1, 1, 2) and ay.dtype == np.float32
    np.testing.assert_allclose(ay[:, 0, 0, 0], [0.75, 0.25, 0.0])
    np.testing.assert_allclose(ay[:, 0, 0, 1], [0.0, 0.25, 0.75])


def test_pl_sets_follow_the_2d_models_planes():
    assert pl_sets(("xy", "xz", "yz")) == PL_SETS
    assert pl_sets(("yz", "xy")) == ("xy", "yz", "3d")
    assert pl_sets(("xy",)) == ("xy", "3d")


def test_step2_writes_four_pl_sets_that_keep_manual_labels(tmp_path):
    torch.manual_seed(0)
    dataset = _make_dataset(tmp_path / "data")
    out = tmp_path / "out"
    preset = get_preset("cpu", TINY)
    summary = run_step2(dataset, out, preset, progress=False)
    assert summary["cases"] == dataset.cases()
    assert model_path(out, "model2d").exists() and model_path(out, "model3d").exists()
    for case in dataset.cases():
        image, manual = dataset.load_pair(case)
        annotated = manual.array != LABELS["ignore"]
        pls = read_pseudolabels(out, case)
        assert set(pls) == set(PL_SETS)
        for name, pl in pls.items():
            assert pl.shape == image.shape and pl.max() <= 1
            np.testing.assert_array_equal(pl[annotated], manual.array[annotated], err_msg=name)
            vol = read_nifti(pl_path(out, name, case))
            np.testing.assert_allclose(vol.affine, image.affine)
        ay = read_mean_map(out, case)
        assert ay.shape == (2, *image.shape)
        np.testing.assert_allclose(ay.sum(0), 1.0, atol=1e-6)
        np.testing.assert_allclose(ay, mean_one_hot(pls, 2))
        # The meta-model's sample: the image and A(Y) as channels, the PL sets as targets.
        sample = read_meta_case(out, case, PL_SETS, image.array)
        assert sample["image"].dtype == np.float32 and sample["targets"].dtype == np.uint8
        np.testing.assert_array_equal(sample["image"], np.concatenate([image.array[None], ay]))
        np.testing.assert_array_equal(sample["targets"], np.stack([pls[n] for n in PL_SETS]))
        np.testing.assert_allclose(nib.load(mean_path(out, case)).affine, image.affine)
    for name in PL_SETS:  # each PL set is a dataset nnU-Net (and we) can open as it is
        pl_data = Dataset.open(pl_dir(out, name))
        assert pl_data.cases() == dataset.cases() and pl_data.ignore_value is None
        assert pl_data.class_labels == {"background": 0, "ball": 1}
        pl_data.load_pair(dataset.cases()[0])
    step2 = json.loads((out / "step2.json").read_text())
    assert step2["class_names"] == ["background", "ball"] and step2["preset"]["name"] == "cpu"
    # Rerunning skips finished work: nothing is rewritten.
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    stamps[model_path(out, "model3d")] = model_path(out, "model3d").stat().st_mtime_ns
    run_step2(dataset, out, preset, progress=False)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    # A missing PL file is regenerated alone.
    pl_path(out, "3d", dataset.cases()[1]).unlink()
    run_step2(dataset, out, preset, progress=False)
    assert pl_path(out, "3d", dataset.cases()[1]).exists()


def test_pseudolabel_command(tmp_path, capsys):
    _make_dataset(tmp_path / "data", n=1)
    args = ["pseudolabel", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--quiet"]
    args += ["--preset", "cpu"]
    sets = [x for item in TINY for x in ("--set", item)]
    assert main([*args, *sets]) == 0
    assert "pl_3d" in capsys.readouterr().out
    assert main([*args, "--resume", *sets]) == 0
    assert main([*args, "--set", "train3d.bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert main(["pseudolabel", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2


def test_sparse_3d_model_is_accurate_away_from_annotated_slices(tmp_path):
    """The pitfall in DESIGN.md: a sparse model must learn anatomy, not where supervision is."""
    from sparseseg.inference import predict_volume_3d
    from sparseseg.pseudolabels import load_training_cases, train_model3d

    dataset = _make_dataset(tmp_path / "data", n=4, shape=(24, 24, 20))
    preset = get_preset("cpu", ["train3d.iterations=150", "train3d.patch=16x16x16"])
    cases = load_training_cases(dataset)
    model, _ = train_model3d(cases, 2, 2, preset, progress=False)
    for case in cases:
        pred = predict_volume_3d(model, case["image"], (16, 16, 16)).argmax(0)
        truth = case["image"] > 0.5 * case["image"].max()  # the ball is the bright part
        away = case["label"] == 2
        assert np.mean(pred[away] == truth[away]) > 0.95


def test_training_builds_the_mean_map_prediction_sees_with_ay_manual_off(tmp_path):
    """For the same base models and image, the A(Y) Step II writes for training equals, bit for
    bit, the one the meta-model sees at prediction when meta.ay_manual is off; with it on (the
    default) the two differ exactly on the annotated voxels, where training's is the manual
    label's one-hot."""
    from sparseseg.bundle import Bundle, load_bundle
    from sparseseg.predict import Predictor
    from sparseseg.pseudolabels import compute_pseudolabels, load_base_models, read_meta_case
    from sparseseg.runtime import zscore

    class Recorder(torch.nn.Module):  # a stand-in meta-model that keeps its input windows
        stride, num_classes = 4, 2

        def __init__(self, seen):
            super().__init__()
            self.seen = seen

        def forward(self, x):
            self.seen.append(x.detach().float().clone())
            return torch.zeros(x.shape[0], 2, *x.shape[2:])

    torch.manual_seed(0)
    dataset = _make_dataset(tmp_path / "data", shape=(8, 8, 8))  # one meta window: the volume
    out = tmp_path / "out"
    preset = get_preset("cpu", [*TINY, "meta.ay_manual=false"])
    run_step2(dataset, out, preset, progress=False)
    sets = pl_sets(preset.planes)
    parts = {
        k: load_bundle(model_path(out, n)).parts[k]
        for k, n in (("2d", "model2d"), ("3d", "model3d"))
    }
    bundle = Bundle(parts, dataset.class_names, "cpu", preset.to_dict(), pl_sets=list(sets))
    seen: list[torch.Tensor] = []
    predictor = Predictor(bundle, device="cpu")
    predictor._models["meta"] = Recorder(seen)
    case = dataset.cases()[0]
    image, manual = dataset.load_pair(case)
    predicted = predictor.predict(image.array, ("meta",))
    assert len(seen) == 1 and predicted["meta"].labels.shape == image.shape
    at_prediction = seen[0][0, 1:].numpy()
    training = read_meta_case(out, case, sets, zscore(image.array))["image"][1:]
    assert len(np.unique(training)) > 2  # the base models disagree somewhere
    np.testing.assert_array_equal(training, at_prediction)

    model2d, model3d = load_base_models(out)
    default = get_preset("cpu", TINY)
    assert default.meta.ay_manual
    x = zscore(image.array)
    pls, with_manual = compute_pseudolabels(
        model2d, model3d, x, default, manual.array, LABELS["ignore"], device="cpu"
    )
    annotated = manual.array != LABELS["ignore"]
    np.testing.assert_array_equal(with_manual, mean_one_hot(pls, 2))
    one_hot = np.stack([manual.array == c for c in range(2)]).astype(np.float32)
    np.testing.assert_array_equal(with_manual[:, annotated], one_hot[:, annotated])
    np.testing.assert_array_equal(with_manual[:, ~annotated], at_prediction[:, ~annotated])
    assert not np.array_equal(with_manual, at_prediction)
