"""Prediction: the model bundle, predicting new volumes of any size, and clear errors."""

from __future__ import annotations

import pytest
import torch

from sparseseg.bundle import FORMAT_VERSION, Bundle, ModelPart, load_bundle, save_bundle
from sparseseg.errors import InputError

TINY3D = dict(stem_channels=4, growth=4, block_layers=[1, 1], up_channels=[4, 4], norm="instance")
TINY2D = dict(base_channels=4, depth=2, norm="instance")


def tiny_bundle(num_classes: int = 3) -> Bundle:
    from sparseseg.models.densevoxnet import DenseVoxNet
    from sparseseg.models.fcn2d import UNet2D
    from sparseseg.models.meta import YDenseVoxNet

    torch.manual_seed(0)
    k2 = dict(in_channels=1, num_classes=num_classes, **TINY2D)
    k3 = dict(in_channels=1, num_classes=num_classes, **TINY3D)
    km = dict(num_classes=num_classes, ay_channels=4, **TINY3D)
    parts = {
        "2d": ModelPart("unet2d", k2, UNet2D(**k2).state_dict()),
        "3d": ModelPart("densevoxnet", k3, DenseVoxNet(**k3).state_dict()),
        "meta": ModelPart("ydensevoxnet", km, YDenseVoxNet(**km).state_dict()),
    }
    names = ["background", "a", "b"][:num_classes]
    return Bundle(parts=parts, class_names=names, preset="cpu", config={"name": "cpu"})


def test_bundle_round_trip(tmp_path):
    bundle = tiny_bundle()
    file = save_bundle(bundle, tmp_path / "model")
    assert file == tmp_path / "model" / "bundle.pt"
    assert (tmp_path / "model" / "bundle.json").exists()
    # Plain tensors and containers only: loads with weights_only=True.
    raw = torch.load(file, weights_only=True)
    assert raw["format_version"] == FORMAT_VERSION
    again = load_bundle(tmp_path / "model")
    assert again.class_names == bundle.class_names and again.preset == "cpu"
    for name, part in bundle.parts.items():
        net = again.parts[name].build()
        for key, value in part.state_dict.items():
            assert torch.equal(net.state_dict()[key], value), (name, key)


def test_bundle_from_another_format_version_is_refused(tmp_path):
    file = save_bundle(tiny_bundle(), tmp_path / "m")
    raw = torch.load(file, weights_only=True)
    raw["format_version"] = FORMAT_VERSION + 1
    torch.save(raw, file)
    with pytest.raises(InputError, match="format version") as info:
        load_bundle(tmp_path / "m")
    assert str(file) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "not_bundle", "pickle", "missing"])
def test_corrupt_or_missing_bundle_is_a_clear_error(tmp_path, damage):
    file = save_bundle(tiny_bundle(), tmp_path / "m")
    if damage == "truncate":
        file.write_bytes(file.read_bytes()[:1000])
    elif damage == "garbage":
        file.write_bytes(b"not a zip file at all")
    elif damage == "not_bundle":
        torch.save({"model": {}}, file)
    elif damage == "pickle":
        torch.save({"format": "sparseseg-bundle", "obj": Bundle}, file)  # refused by weights_only
    else:
        file.unlink()
    with pytest.raises(InputError) as info:
        load_bundle(tmp_path / "m")
    assert str(file) in str(info.value) and "\n" not in str(info.value)


def test_bundle_whose_weights_do_not_fit_is_a_clear_error(tmp_path):
    bundle = tiny_bundle()
    bundle.parts["3d"].kwargs["growth"] = 5
    save_bundle(bundle, tmp_path / "m")
    again = load_bundle(tmp_path / "m")
    again.build("meta")
    with pytest.raises(InputError, match="cannot rebuild the '3d' model"):
        again.build("3d")


def write_image(path, shape, seed=0):
    import numpy as np

    from sparseseg.data.io import write_nifti

    rng = np.random.default_rng(seed)
    affine = np.array([[0.8, 0, 0, -10], [0, 0.9, 0, 5], [0, 0, 1.7, 2], [0, 0, 0, 1.0]])
    write_nifti(path, rng.normal(100, 20, shape).astype(np.float32), affine)
    return affine


@pytest.mark.parametrize("shape", [(21, 26, 11), (9, 5, 30)])
def test_predict_a_volume_of_a_new_size_keeps_its_geometry(tmp_path, shape):
    import nibabel as nib
    import numpy as np

    from sparseseg.predict import PARTS, predict_files

    save_bundle(tiny_bundle(), tmp_path / "m")
    affine = write_image(tmp_path / "in" / "case_7_0000.nii.gz", shape)
    written = predict_files(
        tmp_path / "m",
        tmp_path / "in",
        tmp_path / "out",
        parts="all",
        probabilities=True,
        progress=False,
    )
    assert list(written) == ["case_7"]
    for part in PARTS:
        img = nib.load(tmp_path / "out" / part / "case_7.nii.gz")
        labels = np.asarray(img.dataobj)
        assert labels.shape == shape and np.allclose(img.affine, affine)
        assert labels.min() >= 0 and labels.max() <= 2
        probs = nib.load(tmp_path / "out" / part / "probabilities" / "case_7.nii.gz")
        p = np.asarray(probs.dataobj)
        assert p.shape == (*shape, 3) and np.allclose(p.sum(-1), 1, atol=1e-4)
        assert np.array_equal(p.argmax(-1), labels)


class Recorder(torch.nn.Module):
    """A stand-in 3-class meta-model that keeps every input window in ``seen``."""

    stride, num_classes = 4, 3

    def __init__(self, seen: list[torch.Tensor]):
        super().__init__()
        self.seen = seen

    def forward(self, x):
        self.seen.append(x.detach().float().clone())
        return torch.zeros(x.shape[0], 3, *x.shape[2:])


def test_meta_model_sees_image_and_mean_of_base_labels(tmp_path):
    import numpy as np

    from sparseseg.predict import Predictor
    from sparseseg.runtime import zscore

    seen: list[torch.Tensor] = []
    predictor = Predictor(tiny_bundle(), device="cpu", precision="fp32")
    predictor._models["meta"] = Recorder(seen)
    image = np.random.default_rng(1).normal(size=(20, 28, 12)).astype(np.float32) * 5 + 3
    out = predictor.predict(image, ("meta", "3d", "xy", "xz", "yz"))
    assert len(seen) == 1 and seen[0].shape == (1, 4, 20, 28, 12)  # one window, no padding
    x = seen[0][0].numpy()
    assert np.allclose(x[0], zscore(image), atol=1e-5)
    expected = np.stack(
        [np.mean([out[p].labels == c for p in ("xy", "xz", "yz", "3d")], axis=0) for c in range(3)]
    )
    assert np.allclose(x[1:], expected)


def test_meta_input_averages_only_the_bundles_pl_sets(tmp_path):
    # A 2D model trained on xy alone: A(Y) is the mean of xy and 3d; an xz prediction asked
    # for beside it is made but stays out of A(Y).
    import numpy as np

    from sparseseg.predict import Predictor, runs_needed, trained_parts

    assert runs_needed(["meta"], ("xy", "3d")) == ("xy", "3d", "meta")
    assert runs_needed(["meta", "xz"], ("xy", "3d")) == ("xy", "xz", "3d", "meta")
    bundle = tiny_bundle()
    bundle.planes, bundle.pl_sets = ["xy"], ["xy", "3d"]
    file = save_bundle(bundle, tmp_path / "model")
    assert load_bundle(file).pl_sets == ["xy", "3d"]
    assert trained_parts(file) == ("meta", "3d", "xy")
    seen: list[torch.Tensor] = []
    predictor = Predictor(file, device="cpu", precision="fp32")
    predictor._models["meta"] = Recorder(seen)
    image = np.random.default_rng(2).normal(size=(16, 12, 8)).astype(np.float32)
    out = predictor.predict(image, ("meta", "3d", "xy", "xz"))
    expected = np.stack(
        [np.mean([out[p].labels == c for p in ("xy", "3d")], axis=0) for c in range(3)]
    )
    assert np.allclose(seen[0][0, 1:].numpy(), expected)
    # 'all' means the trained parts
    import nibabel as nib

    from sparseseg.predict import predict_files

    nib.save(nib.Nifti1Image(image, np.eye(4)), tmp_path / "case.nii.gz")
    written = predict_files(file, tmp_path / "case.nii.gz", tmp_path / "pred", parts="all")
    assert sorted(written["case"]) == ["3d", "meta", "xy"]


@pytest.mark.parametrize("pl_sets", [("xy", "xz", "yz", "3d"), ("xy", "yz", "3d"), ("xy", "3d")])
def test_prediction_builds_the_same_mean_map_as_training(pl_sets):
    # A(Y) the meta-model sees at prediction is bit for bit the map Step II writes for training.
    import numpy as np

    from sparseseg.predict import Predictor
    from sparseseg.pseudolabels import mean_one_hot

    bundle = tiny_bundle()
    bundle.planes = [p for p in ("xy", "xz", "yz") if p in pl_sets]
    bundle.pl_sets = list(pl_sets)
    seen: list[torch.Tensor] = []
    predictor = Predictor(bundle, device="cpu", precision="fp32")
    predictor._models["meta"] = Recorder(seen)
    image = np.random.default_rng(3).normal(size=(16, 12, 8)).astype(np.float32)
    out = predictor.predict(image, ("meta", *pl_sets))
    training = mean_one_hot([out[p].labels for p in pl_sets], 3)
    assert training.dtype == np.float32 and len(np.unique(training)) > 2
    np.testing.assert_array_equal(seen[0][0, 1:].numpy(), training)


def test_bundles_without_pl_sets_use_all_four(tmp_path):
    file = save_bundle(tiny_bundle(), tmp_path / "model")
    raw = torch.load(file, weights_only=True)
    del raw["pl_sets"]  # as written before the field existed
    torch.save(raw, file)
    assert load_bundle(file).pl_sets == ["xy", "xz", "yz", "3d"]


def test_base_parts_alone_skip_the_other_models(tmp_path):
    import numpy as np

    from sparseseg.predict import Predictor, runs_needed

    assert runs_needed(["3d"]) == ("3d",)
    assert runs_needed(["meta"]) == ("xy", "xz", "yz", "3d", "meta")
    predictor = Predictor(tiny_bundle(), device="cpu")
    calls: list[str] = []
    out = predictor.predict(np.zeros((8, 8, 8), np.float32), ["xz"], step=calls.append)
    assert list(out) == ["xz"] and calls == ["xz"]


def test_bad_parts_and_inputs_are_clear_errors(tmp_path):
    from sparseseg.predict import list_inputs, parse_parts

    with pytest.raises(InputError, match="parts"):
        parse_parts("meta,4d")
    assert parse_parts("yz,meta") == ("meta", "yz")
    with pytest.raises(InputError, match="input not found"):
        list_inputs(tmp_path / "nope.nii.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no NIfTI"):
        list_inputs(tmp_path / "empty")


MEMORY_SCRIPT = r"""
import json, resource, sys, time
import numpy as np, torch
from sparseseg.bundle import Bundle, ModelPart, save_bundle
from sparseseg.config import get_preset
from sparseseg.data.io import write_nifti
from sparseseg.models import build_model2d, build_model3d
from sparseseg.models.meta import build_meta, meta_kwargs
from sparseseg.models.factory import densevoxnet_kwargs, model_kwargs
from sparseseg.predict import predict_files

root, shape = sys.argv[1], tuple(int(s) for s in sys.argv[2].split("x"))
p, c = get_preset("cpu"), 3
m2, m3, mm = build_model2d(p.model2d, 1, c), build_model3d(p.model3d, 1, c), build_meta(p.meta, c)
k2 = {"in_channels": 1, "num_classes": c, **model_kwargs("unet2d", p.model2d)}
k3 = {"in_channels": 1, "num_classes": c, **densevoxnet_kwargs(p.model3d)}
parts = {"2d": ModelPart("unet2d", k2, m2.state_dict()),
         "3d": ModelPart("densevoxnet", k3, m3.state_dict()),
         "meta": ModelPart("ydensevoxnet", meta_kwargs(p.meta, c), mm.state_dict())}
save_bundle(Bundle(parts, ["b", "m", "p"], "cpu", json.loads(json.dumps(p.to_dict()))), root)
del m2, m3, mm, parts
rng = np.random.default_rng(0)
write_nifti(f"{root}/big_0000.nii", rng.integers(0, 2000, shape).astype(np.int16), np.eye(4))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.time()
predict_files(root, f"{root}/big_0000.nii", f"{root}/out", progress=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"shape": shape, "seconds": round(time.time() - t, 1),
                  "peak_rss_gib": round(peak / 2**20, 3),
                  "rss_before_gib": round(base / 2**20, 3)}))
"""


@pytest.mark.slow
def test_large_volume_predicts_in_bounded_memory(tmp_path):
    """A 300 x 512 x 512 volume with cpu-preset networks: peak RSS under 8 GiB (takes minutes)."""
    import json
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path), "300x512x512"],
        capture_output=True,
        text=True,
        check=True,
    )
    numbers = json.loads(result.stdout.strip().splitlines()[-1])
    print(numbers)
    assert numbers["peak_rss_gib"] < 8.0


def test_predict_mirrors_the_3d_networks_along_the_plans_axes_unless_told_not_to():
    import dataclasses

    import numpy as np

    from sparseseg.predict import Predictor

    bundle = dataclasses.replace(
        tiny_bundle(), config={"name": "cpu", "inference": {"mirror_axes": [0]}}
    )
    image = np.random.default_rng(0).normal(size=(8, 8, 8)).astype(np.float32)
    mirrored = Predictor(bundle, device="cpu", precision="fp32")
    plain = Predictor(bundle, device="cpu", precision="fp32", mirror=False)
    assert mirrored.mirror_axes == (0,) and plain.mirror_axes == ()

    def probs(predictor, x):
        return predictor.predict(x, ["3d"], probabilities=True)["3d"].probabilities

    flipped = probs(plain, image[::-1].copy())[:, ::-1]
    assert not np.allclose(probs(plain, image), flipped, atol=1e-3)
    np.testing.assert_allclose(
        probs(mirrored, image), (probs(plain, image) + flipped) / 2, atol=1e-5
    )
