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
