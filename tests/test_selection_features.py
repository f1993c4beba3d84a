"""Slice features: the VGG-19 trunk in torchvision's layout, weights loading, the auto-encoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sparseseg.cli import main
from sparseseg.data.layout import write_case, write_dataset_json
from sparseseg.data.volume import Volume
from sparseseg.errors import InputError
from sparseseg.selection.autoencoder import SliceAutoEncoder, train_autoencoder
from sparseseg.selection.features import (
    auto_image_size,
    extract_features,
    intensity_features,
    normalise_volume,
    resolve_extractor,
)
from sparseseg.selection.vgg import (
    WEIGHTS_FILE,
    file_sha256,
    load_vgg19_weights,
    resolve_weights,
    vgg19_feature_shapes,
    vgg19_features,
)

CONV_INDICES = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]


def torchvision_like_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with torchvision's VGG-19 key names and shapes (random values)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    channels = 3
    for i, width in zip(CONV_INDICES, [64, 64, 128, 128] + [256] * 4 + [512] * 8, strict=True):
        state[f"features.{i}.weight"] = torch.randn(width, channels, 3, 3, generator=g) * 0.05
        state[f"features.{i}.bias"] = torch.randn(width, generator=g) * 0.01
        channels = width
    state["classifier.0.weight"] = torch.zeros(8, 8)  # classifier keys are ignored
    state["classifier.0.bias"] = torch.zeros(8)
    return state


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("w") / WEIGHTS_FILE
    torch.save(torchvision_like_state(), path)
    return path


def test_trunk_matches_torchvision_layout():
    trunk = vgg19_features()
    assert len(trunk) == 37
    assert [i for i, m in enumerate(trunk) if isinstance(m, torch.nn.Conv2d)] == CONV_INDICES
    assert [i for i, m in enumerate(trunk) if isinstance(m, torch.nn.MaxPool2d)] == [
        4, 9, 18, 27, 36,
    ]  # fmt: skip
    shapes = vgg19_feature_shapes()
    assert len(shapes) == 32
    assert shapes["features.0.weight"] == (64, 3, 3, 3)
    assert shapes["features.34.weight"] == (512, 512, 3, 3)
    assert trunk(torch.zeros(1, 3, 64, 64)).shape == (1, 512, 2, 2)


def test_loads_torchvision_state_dict(weights_file):
    trunk = vgg19_features()
    load_vgg19_weights(trunk, weights_file)
    state = torchvision_like_state()
    for i in CONV_INDICES:
        assert torch.equal(trunk[i].weight, state[f"features.{i}.weight"])
        assert torch.equal(trunk[i].bias, state[f"features.{i}.bias"])


def test_rejects_wrong_state_dicts(tmp_path):
    # Keys are checked before shapes, so small tensors suffice (and keep the files small).
    keys = list(vgg19_feature_shapes())
    tiny = {k: torch.zeros(1) for k in keys}
    missing = {k: v for k, v in tiny.items() if k != "features.34.bias"}
    extra = dict(tiny, **{"features.37.weight": torch.zeros(1)})
    for name, bad, message in [
        ("shape", tiny, r"features.0.weight has shape \(1,\), VGG-19 needs \(64, 3, 3, 3\)"),
        ("missing", missing, r"missing \['34.bias'\]"),
        ("extra", extra, r"unexpected \['37.weight'\]"),
    ]:
        path = tmp_path / f"{name}.pth"
        torch.save(bad, path)
        with pytest.raises(InputError, match=message):
            load_vgg19_weights(vgg19_features(), path)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot read"):
        load_vgg19_weights(vgg19_features(), tmp_path / "junk.pth")


def test_weights_resolution(tmp_path, monkeypatch, weights_file):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(InputError, match="not found"):
        resolve_weights(tmp_path / "missing.pth")
    assert resolve_weights(None) is None
    assert resolve_extractor("vgg", None) == ("vgg", None)  # random init
    with pytest.raises(InputError, match="unknown extractor"):
        resolve_extractor("auto", None)
    cached = tmp_path / "hub" / "checkpoints" / WEIGHTS_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(weights_file.read_bytes())
    assert resolve_weights(None) == cached
    assert resolve_extractor("vgg", None) == ("vgg", cached)
    assert resolve_extractor("intensity", None) == ("intensity", None)
    with pytest.raises(InputError, match="vgg extractor only"):
        resolve_extractor("intensity", weights_file)


def test_auto_image_size():
    assert auto_image_size([np.zeros((40, 59, 30))], ("xy", "xz", "yz")) == 64
    assert auto_image_size([np.zeros((40, 59, 30))], ("xz",)) == 64
    assert auto_image_size([np.zeros((20, 24, 300))], ("xy",)) == 32
    assert auto_image_size([np.zeros((20, 24, 300))], ("yz",)) == 128
    assert auto_image_size([np.zeros((8, 9, 10)), np.zeros((8, 70, 10))], ("xy",)) == 96


def test_intensity_features():
    vol = np.zeros((20, 24, 10), np.float32)
    vol[5:15, 6:18, 3:7] = 100.0
    norm = normalise_volume(vol)
    assert norm.min() == 0.0 and norm.max() == 1.0
    f = intensity_features(norm, "xy")
    assert f.shape == (10, 256)
    assert np.all(f[0] == 0) and f[5].max() > 0.5
    assert intensity_features(norm, "yz").shape == (20, 256)


def test_autoencoder_training_lowers_the_loss():
    torch.manual_seed(0)
    model = SliceAutoEncoder(image_size=32)
    rng = np.random.default_rng(0)
    slices = torch.from_numpy(rng.random((24, 1, 32, 32), dtype=np.float32))
    trunk_out = model.run_trunk(slices)
    assert trunk_out.shape == (24, 512, 1, 1)
    model.fit_normaliser(trunk_out)
    targets = torch.nn.functional.avg_pool2d(slices, 1)
    history = train_autoencoder(model, trunk_out, targets, steps=25, batch_size=8)
    assert np.mean(history[-5:]) < np.mean(history[:5])
    assert all(not p.requires_grad for p in model.trunk.parameters())
    feats = model.encode_trunk_output(trunk_out)
    assert feats.shape == (24, 128) and feats.dtype == np.float32


@pytest.mark.parametrize("native_bf16", [False, True])
def test_trunk_computes_in_bf16_only_where_the_cpu_has_it(monkeypatch, native_bf16):
    # Emulated bf16 convolutions ran at 0.14x fp32 on a CPU without AVX512-BF16 or AMX.
    monkeypatch.setattr("sparseseg.runtime.cpu_supports_bf16", lambda: native_bf16)
    torch.manual_seed(0)
    model = SliceAutoEncoder(image_size=32)
    slices = torch.rand(4, 1, 32, 32)
    out = model.run_trunk(slices)
    assert out.dtype == torch.bfloat16
    x = ((slices.expand(-1, 3, -1, -1) - model.mean) / model.std).contiguous(
        memory_format=torch.channels_last
    )
    with torch.no_grad():
        fp32 = model.trunk.eval()(x).to(torch.bfloat16)
    assert torch.equal(out, fp32) is not native_bf16


def _volumes():
    rng = np.random.default_rng(0)
    return [np.cumsum(rng.normal(size=(6, 7, 5)), axis=a) for a in (0, 2)]


def test_vgg_features_are_seeded():
    kwargs = dict(extractor="vgg", steps=3, batch_size=8, image_size=32)
    a = extract_features(_volumes(), ("xy", "yz"), seed=1, **kwargs)
    b = extract_features(_volumes(), ("xy", "yz"), seed=1, **kwargs)
    assert a.info["weights"] == "none: random init" and a.info["name"] == "vgg"
    assert a.features[0]["xy"].shape == (5, 128) and a.features[1]["yz"].shape == (6, 128)
    for fa, fb in zip(a.features, b.features, strict=True):
        assert all(np.array_equal(fa[p], fb[p]) for p in fa)
    with pytest.raises(InputError, match="multiple of 32"):
        extract_features(_volumes(), ("xy",), extractor="vgg", image_size=40)


def test_select_cli_with_vgg_weights(tmp_path, weights_file):
    rng = np.random.default_rng(0)
    root = tmp_path / "ds"
    for case in ("a", "b"):
        image = np.cumsum(rng.normal(size=(9, 10, 8)), axis=2).astype(np.float32)
        write_case(root, case, Volume(image))
    write_dataset_json(root, {"background": 0, "fg": 1}, num_training=2)
    out = tmp_path / "sel"
    argv = ["select", str(root), "--budget", "4", "--out", str(out), "--planes", "xy"]
    argv += ["--weights", str(weights_file), "--steps", "2", "--image-size", "32"]
    assert main(argv) == 0
    record = json.loads((out / "selection.json").read_text())
    assert record["extractor"]["name"] == "vgg"
    assert record["extractor"]["weights"] == {
        "path": str(weights_file),
        "sha256": file_sha256(weights_file)[:16],
    }
    assert [len(c["planes"]["xy"]["indices"]) for c in record["cases"].values()] == [2, 2]


def test_feature_cache_reuses_features_and_keys_on_content(tmp_path, monkeypatch):
    from sparseseg.selection import selector

    rng = np.random.default_rng(0)
    volumes = [rng.random((12, 10, 8)).astype(np.float32) for _ in range(2)]
    calls = []
    real = selector.extract_features
    monkeypatch.setattr(
        selector, "extract_features", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    cache = tmp_path / "cache"
    kwargs = dict(extractor="vgg", steps=2, image_size=32, feature_cache=cache)
    first = selector.select_volumes(volumes, ["a", "b"], 4, **kwargs)
    second = selector.select_volumes(volumes, ["a", "b"], 2, **kwargs)  # another budget
    assert len(calls) == 1 and len(list(cache.glob("features-*.npz"))) == 1
    for case in ("a", "b"):
        for plane in ("xy", "xz", "yz"):
            np.testing.assert_array_equal(first.features[case][plane], second.features[case][plane])
    # the same budget from cached features picks the same slices
    again = selector.select_volumes(volumes, ["a", "b"], 4, **kwargs)
    assert again.to_json()["cases"] == first.to_json()["cases"]
    # another seed or changed voxels are not served from the cache
    selector.select_volumes(volumes, ["a", "b"], 4, seed=1, **kwargs)
    volumes[1][0, 0, 0] += 1.0
    selector.select_volumes(volumes, ["a", "b"], 4, **kwargs)
    assert len(calls) == 3 and len(list(cache.glob("features-*.npz"))) == 3
