import numpy as np
import pytest
import torch
from torch import nn

from sparseseg.bundle import Bundle, load_bundle, save_bundle
from sparseseg.config import Model2DConfig, Model3DConfig, get_preset
from sparseseg.errors import InputError
from sparseseg.inference import predict_planes_2d, predict_volume_3d, valid_roi
from sparseseg.models import DenseVoxNet, UNet2D, base_part, build_model3d

TINY3D = Model3DConfig(
    stem_channels=4, growth=4, block_layers=(2, 2), up_channels=(8, 4), dropout=0.0
)


def test_densevoxnet_shapes_train_and_eval():
    torch.manual_seed(0)
    model = build_model3d(TINY3D, 1, 3)
    x = torch.randn(2, 1, 12, 20, 28)  # multiples of the stride 4, all different
    model.train()
    main, aux = model(x)
    assert main.shape == aux.shape == (2, 3, 12, 20, 28)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, 12, 20, 28)
    plain = DenseVoxNet(
        2,
        4,
        stem_channels=4,
        growth=4,
        block_layers=(1, 1),
        up_channels=(4, 4),
        deep_supervision=False,
    ).train()
    assert plain(torch.randn(1, 2, 8, 8, 16)).shape == (1, 4, 8, 8, 16)


def test_densevoxnet_without_pooling_along_z():
    # (2, 2, 1): X and Y go down twice, Z never, so any number of sections fits.
    cfg = Model3DConfig(**{**TINY3D.__dict__, "downsample": (2, 2, 1)})
    model = build_model3d(cfg, 1, 2)
    assert model.stride == (4, 4, 1)
    model.train()
    main, aux = model(torch.randn(1, 1, 16, 8, 5))
    assert main.shape == aux.shape == (1, 2, 16, 8, 5)
    assert model.body.transition[-1].kernel_size == (2, 2, 1)
    image = np.random.default_rng(0).normal(size=(13, 9, 3)).astype(np.float32)
    probs = predict_volume_3d(model, image, (8, 8, 4), 0.25, precision="fp32")
    assert probs.shape == (2, 13, 9, 3)
    with pytest.raises(ValueError, match="downsample"):
        DenseVoxNet(1, 2, downsample=(2, 3, 1))


def test_valid_roi_rounds_each_axis_to_its_stride():
    assert valid_roi((32, 32, 32), (50, 50, 10), 4) == (32, 32, 12)
    assert valid_roi((32, 32, 32), (50, 50, 10), (4, 4, 1)) == (32, 32, 10)
    assert valid_roi((30, 64, 16), (50, 50, 20), (4, 4, 1)) == (32, 52, 16)


def test_densevoxnet_init_is_normal_001():
    model = DenseVoxNet(1, 3)  # paper widths
    weights = torch.cat([m.weight.flatten() for m in model.modules() if isinstance(m, nn.Conv3d)])
    assert abs(weights.std().item() - 0.01) < 0.001 and abs(weights.mean().item()) < 0.001
    assert sum(p.numel() for p in model.parameters()) > 1_000_000


def test_stem_is_replaceable_for_a_two_branch_variant():
    class TwoStem(DenseVoxNet):
        def make_stem(self, in_channels, out_channels):
            return nn.Conv3d(in_channels, out_channels, 3, stride=2, padding=1)

    model = TwoStem(4, 2, stem_channels=4, growth=2, block_layers=(1, 1), up_channels=(4, 4))
    model.eval()
    assert model(torch.randn(1, 4, 8, 8, 8)).shape == (1, 2, 8, 8, 8)


def test_unet2d_shapes_on_odd_multiples_of_its_stride():
    model = UNet2D(3, 5, base_channels=4, depth=3).eval()
    assert model.stride == 8
    with torch.no_grad():
        assert model(torch.randn(2, 3, 24, 40)).shape == (2, 5, 24, 40)
    # He init: std close to sqrt(2 / fan_out) on a wide layer
    conv = model.down[1][0]
    fan_out = conv.out_channels * 9
    assert abs(conv.weight.std().item() - (2 / fan_out) ** 0.5) < 0.3 * (2 / fan_out) ** 0.5


def test_a_base_model_saved_as_a_one_part_bundle_round_trips(tmp_path):
    torch.manual_seed(0)
    model = build_model3d(TINY3D, 1, 2).eval()
    path = tmp_path / "model3d.pt"
    part = base_part(model, "densevoxnet", TINY3D)
    save_bundle(Bundle({"3d": part}, ["a", "b"], "cpu", {}, extra={"note": "x"}), path)
    again = load_bundle(path)
    loaded = again.build("3d")
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert again.extra == {"note": "x"} and list(again.parts) == ["3d"]
    assert (tmp_path / "model3d.json").exists()
    torch.load(path, weights_only=True)  # weights-only readable
    with pytest.raises(InputError, match="no '2d' model"):
        again.build("2d")
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    with pytest.raises(InputError, match="bad.pt"):
        load_bundle(tmp_path / "bad.pt")
    with pytest.raises(InputError, match="missing.pt"):
        load_bundle(tmp_path / "missing.pt")


@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_predict_volume_3d_pads_odd_sizes_and_returns_probabilities(precision):
    torch.manual_seed(0)
    model = build_model3d(TINY3D, 1, 3)
    image = np.random.default_rng(0).normal(size=(13, 17, 9)).astype(np.float32)
    probs = predict_volume_3d(model, image, (8, 8, 8), 0.25, precision=precision)
    assert probs.shape == (3, 13, 17, 9) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)
    two = build_model3d(TINY3D, 2, 3)  # generic over input channels (meta-model style)
    assert predict_volume_3d(two, np.stack([image, image]), (8, 8, 8)).shape == (3, 13, 17, 9)


def test_predict_planes_2d_covers_every_slice_of_each_plane():
    torch.manual_seed(0)
    model = UNet2D(1, 3, base_channels=4, depth=2)
    image = np.random.default_rng(1).normal(size=(11, 6, 9)).astype(np.float32)
    probs = predict_planes_2d(model, image, ("xy", "xz", "yz"), batch_size=4, precision="fp32")
    labels = predict_planes_2d(
        model, image, ("xy", "xz", "yz"), batch_size=3, precision="fp32", labels_only=True
    )
    for plane in ("xy", "xz", "yz"):
        assert probs[plane].shape == (3, 11, 6, 9)
        np.testing.assert_allclose(probs[plane].sum(0), 1.0, atol=1e-4)
        assert labels[plane].dtype == np.uint8
        assert np.mean(labels[plane] == probs[plane].argmax(0)) > 0.999
    # slice n of plane xy is exactly the model applied to image[:, :, n] (padded to the stride)
    x = torch.from_numpy(np.pad(image[:, :, 4], ((0, 1), (0, 2))))[None, None]
    with torch.no_grad():
        want = torch.softmax(model.eval()(x), 1)[0, :, :11, :6].numpy()
    np.testing.assert_allclose(probs["xy"][:, :, :, 4], want, atol=1e-5)


def test_presets_build_models():
    for name in ("cpu", "cpu-aniso", "paper"):
        preset = get_preset(name)
        assert isinstance(preset.model2d, Model2DConfig)
        build_model3d(preset.model3d, 1, 3)


def test_aniso_preset_keeps_z_and_crops_fit_its_stride():
    preset = get_preset("cpu-aniso")
    assert preset.planes == ("xy",)
    for model_cfg in (preset.model3d, preset.meta.model):
        assert build_model3d(model_cfg, 1, 2).stride == (4, 4, 1)
    for patch in (preset.train3d.patch, preset.meta.train.patch, preset.inference.patch):
        assert patch[2] < patch[0] and patch[0] % 4 == patch[1] % 4 == 0
    # everything else is the cpu preset
    assert preset.train3d.iterations == get_preset("cpu").train3d.iterations


def test_dynunet_predicts_a_small_volume_inside_the_full_patch():
    """Instance norm sees the whole window: a volume smaller than the patch is predicted centred
    in a full patch (the canvas it was trained in), not in a window cut to its size."""
    from sparseseg.models.dynunet import SegDynUNet

    assert valid_roi((16, 16, 8), (9, 10, 5), 4, cap=False) == (16, 16, 8)
    torch.manual_seed(0)
    model = SegDynUNet(1, 3, filters=(4, 8, 8), strides=(1,) * 3 + (2,) * 6, kernels=(3,) * 9)
    image = np.random.default_rng(0).normal(size=(9, 10, 5)).astype(np.float32)
    probs = predict_volume_3d(model, image, (16, 16, 8), precision="fp32")
    pads = [
        ((p - n) // 2, p - n - (p - n) // 2) for n, p in zip(image.shape, (16, 16, 8), strict=True)
    ]
    with torch.no_grad():
        canvas = torch.softmax(model(torch.from_numpy(np.pad(image, pads))[None, None]), 1)[0]
    inside = canvas[
        (slice(None), *(slice(a, a + n) for (a, _), n in zip(pads, image.shape, strict=True)))
    ]
    np.testing.assert_allclose(probs, inside.numpy(), atol=1e-5)


def test_dynunet_2d_predicts_slices_as_it_was_trained():
    """The 2D DynUNet trains on fixed crops (a slice smaller than the crop lies whole inside it,
    padded with 0): a smaller slice is predicted centred in a full patch, a larger one by
    windows of the patch. UNet2D (batch norm) keeps seeing whole slices padded to its stride."""
    from sparseseg.models.dynunet import SegDynUNet

    torch.manual_seed(0)
    model = SegDynUNet(
        1, 3, spatial_dims=2, filters=(4, 8, 8), strides=(1, 1, 2, 2, 2, 2), kernels=(3,) * 6
    ).eval()
    image = np.random.default_rng(0).normal(size=(9, 10, 30)).astype(np.float32)
    probs = predict_planes_2d(model, image, ("xy", "xz"), patch=(16, 16), precision="fp32")

    def direct(window: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(model(torch.from_numpy(window)[None, None]), 1)[0].numpy()

    # xy slices (9 x 10) inside one 16 x 16 canvas, centred as MONAI pads
    canvas = direct(np.pad(image[:, :, 7], ((3, 4), (3, 3))))
    np.testing.assert_allclose(probs["xy"][:, :, :, 7], canvas[:, 3:12, 3:13], atol=1e-5)
    # xz slices (9 x 30): taller than the patch along z, so windows of 16 along z, never one
    # window of the whole slice
    whole = direct(np.pad(image[:, 4, :], ((3, 4), (1, 1))))[:, 3:12, 1:31]
    assert not np.allclose(probs["xz"][:, :, 4, :], whole, atol=1e-3)
    first = direct(np.pad(image[:, 4, :16], ((3, 4), (0, 0))))[:, 3:12]
    np.testing.assert_allclose(probs["xz"][:, :, 4, :4], first[:, :, :4], atol=1e-5)
    np.testing.assert_allclose(probs["xz"].sum(0), 1.0, atol=1e-4)
    with pytest.raises(ValueError, match="patch"):
        predict_planes_2d(model, image, ("xy",))
    # a UNet2D ignores the patch: same output with or without it
    unet = UNet2D(1, 3, base_channels=4, depth=2)
    plain = predict_planes_2d(unet, image, ("xy",), precision="fp32")["xy"]
    given = predict_planes_2d(unet, image, ("xy",), patch=(4, 4), precision="fp32")["xy"]
    np.testing.assert_array_equal(plain, given)
