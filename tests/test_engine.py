"""The DynUNet engine: masked CE + soft Dice, deep supervision, the 2D/3D/meta models, SGD."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from sparseseg.bundle import Bundle, load_bundle, save_bundle
from sparseseg.config import MetaConfig, Model2DConfig, Model3DConfig, TrainConfig, get_preset
from sparseseg.models import base_part, build_model2d, build_model3d
from sparseseg.models.meta import build_meta, meta_arch, meta_kwargs
from sparseseg.training.losses import (
    deep_supervision_weights,
    dice_ce_loss,
    masked_soft_dice,
    segmentation_loss,
)

IGNORE = 3
TINY3D = Model3DConfig(
    arch="dynunet",
    norm="instance",
    filters=(4, 8, 16),
    strides=(1, 1, 1, 2, 2, 2, 2, 2, 1),
    kernels=(3, 3, 3, 3, 3, 3, 3, 3, 3),
)
TINY2D = Model2DConfig(
    arch="dynunet",
    norm="instance",
    filters=(4, 8, 16),
    strides=(1, 1, 2, 2, 2, 2),
    kernels=(3,) * 6,
)


def _problem(seed=0, shape=(2, 16, 16, 8), classes=3):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape[0], classes, *shape[1:], generator=g)
    target = torch.randint(0, classes, shape, generator=g)
    ignored = torch.rand(shape, generator=g) < 0.6
    return logits, torch.where(ignored, torch.full_like(target, IGNORE), target), ignored


@pytest.mark.parametrize("outputs", [1, 3])
def test_loss_ignores_unannotated_voxels_in_ce_and_dice_sums(outputs):
    logits, target, ignored = _problem()
    heads = tuple(logits + 0.1 * i for i in range(outputs))
    base, logs = dice_ce_loss(heads if outputs > 1 else heads[0], target, IGNORE)
    base_dice = masked_soft_dice(logits, target, IGNORE)
    # Anything at the ignored voxels: other logits, and labels that are not the ignore value
    # would change the loss, but the ignore value itself must hide them completely.
    noise = torch.randn_like(logits) * 5
    changed = tuple(torch.where(ignored[:, None], h + noise, h) for h in heads)
    again, _ = dice_ce_loss(changed if outputs > 1 else changed[0], target, IGNORE)
    assert torch.allclose(base, again, atol=1e-6)
    dice_again = masked_soft_dice(torch.where(ignored[:, None], logits + noise, logits), target, 3)
    assert torch.allclose(base_dice, dice_again, atol=1e-6)
    # ... while the same change at annotated voxels does change both terms
    moved = torch.where(ignored[:, None], logits, logits + noise)
    assert not torch.allclose(masked_soft_dice(moved, target, IGNORE), base_dice)
    # gradients at ignored voxels are exactly 0
    x = logits.clone().requires_grad_(True)
    dice_ce_loss(x, target, IGNORE)[0].backward()
    assert float(x.grad[ignored[:, None].expand_as(x)].abs().max()) == 0.0
    assert {"ce", "dice"} <= set(logs) and ("aux" in logs) == (outputs > 1)


def test_soft_dice_matches_hand_computed_case_and_empty_batch():
    # one sample, 2 classes, 4 voxels: voxel 3 ignored; probabilities of class 1: .9 .2 .6 (x)
    p1 = torch.tensor([0.9, 0.2, 0.6, 0.99])
    logits = torch.stack([torch.zeros(4), torch.log(p1 / (1 - p1))])[None]  # (1, 2, 4)
    target = torch.tensor([[1, 0, 1, 2]])
    inter = 0.9 + 0.6
    expected = 1 - (2 * inter) / ((0.9 + 0.2 + 0.6) + 2)
    got = masked_soft_dice(logits, target, ignore_index=2, smooth=0.0)
    assert float(got) == pytest.approx(expected, abs=1e-5)
    empty = torch.full_like(target, 2)
    x = logits.clone().requires_grad_(True)
    loss, _ = dice_ce_loss(x, empty, 2)
    loss.backward()
    assert torch.isfinite(loss) and float(x.grad.abs().max()) == 0.0


def test_deep_supervision_weights_halve_and_sum_to_one():
    assert deep_supervision_weights(1) == [1.0]
    assert deep_supervision_weights(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    with pytest.raises(ValueError, match="unknown loss"):
        segmentation_loss(torch.zeros(1, 2, 2), torch.zeros(1, 2, dtype=torch.long), 2, "l2")


def test_dynunet_builds_2d_3d_and_meta_from_config():
    m3 = build_model3d(TINY3D, 1, 3)
    assert m3.stride == (4, 4, 2) and m3.num_classes == 3
    x = torch.randn(2, 1, 16, 16, 8)
    out = m3.train()(x)
    assert isinstance(out, tuple) and len(out) == 2  # main + one deep-supervision head
    assert all(o.shape == (2, 3, 16, 16, 8) for o in out)
    assert m3.eval()(x).shape == (2, 3, 16, 16, 8)
    m2 = build_model2d(TINY2D, 1, 3)
    assert m2.stride == 4 and m2.eval()(torch.randn(2, 1, 12, 16)).shape == (2, 3, 12, 16)
    with pytest.raises(ValueError, match="numbers per level"):
        build_model3d(dataclasses.replace(TINY3D, strides=(1, 1, 1)), 1, 3)
    for fusion in ("stack", "y"):
        cfg = MetaConfig(model=TINY3D, fusion=fusion, ay_skip=4.0)
        meta = build_meta(cfg, 3)
        assert meta_arch(cfg) == "dynunet-meta"
        y = torch.cat(
            [torch.randn(1, 1, 16, 16, 8), torch.softmax(torch.randn(1, 3, 16, 16, 8), 1)], 1
        )
        assert meta.eval()(y).shape == (1, 3, 16, 16, 8)
        with pytest.raises(ValueError, match="expects 4 channels"):
            meta(torch.randn(1, 2, 16, 16, 8))
        names = list(meta.state_dict())
        assert any(n.startswith("input_block.pl.") for n in names) == (fusion == "y")
        # the bundle rebuilds it from its JSON-able kwargs
        from sparseseg.bundle import ModelPart

        rebuilt = ModelPart("dynunet-meta", meta_kwargs(cfg, 3), meta.state_dict()).build()
        assert torch.allclose(rebuilt(y), meta(y))


def test_meta_warm_start_predicts_what_the_3d_model_predicts_until_it_sees_a_y():
    from sparseseg.selftrain import warm_start

    torch.manual_seed(0)
    base = build_model3d(TINY3D, 1, 3).eval()
    meta = build_meta(MetaConfig(model=TINY3D, fusion="stack", ay_skip=4.0), 3).eval()
    image = torch.randn(1, 1, 16, 16, 8)
    ay = torch.softmax(torch.randn(1, 3, 16, 16, 8), 1)
    before = meta(torch.cat([image, ay], 1))
    warm_start(meta, base.state_dict(), image_channels=1)
    with torch.no_grad():
        # A(Y) = 0: the A(Y) input weights are zero and the skip adds nothing
        assert torch.allclose(meta(torch.cat([image, 0 * ay], 1)), base(image), atol=1e-5)
        after = meta(torch.cat([image, ay], 1))  # the skip adds 4 x A(Y) to the 3D logits
        assert torch.allclose(after, base(image) + 4 * ay, atol=1e-5)
        assert not torch.allclose(before, after, atol=1e-3)
    for other in (
        MetaConfig(model=TINY3D, fusion="y"),  # separate A(Y) input block
        MetaConfig(model=dataclasses.replace(TINY3D, filters=(8, 16, 32))),  # other widths
    ):
        with pytest.raises(ValueError, match="meta.init='3d' needs"):
            warm_start(build_meta(other, 3), base.state_dict(), image_channels=1)


def test_2d_meta_warm_start_predicts_what_the_2d_model_predicts():
    from sparseseg.selftrain import warm_start

    torch.manual_seed(0)
    base = build_model2d(TINY2D, 1, 3).eval()
    cfg = MetaConfig(model=TINY3D, fusion="stack", ay_skip=4.0, plane="xy", init="2d")
    meta = build_meta(cfg, 3, 1, TINY2D).eval()
    assert meta.spatial_dims == 2 and meta_kwargs(cfg, 3, 1, TINY2D)["spatial_dims"] == 2
    warm_start(meta, base.state_dict(), image_channels=1, init="2d")
    image = torch.randn(2, 1, 16, 12)
    ay = torch.softmax(torch.randn(2, 3, 16, 12), 1)
    with torch.no_grad():
        assert torch.allclose(meta(torch.cat([image, ay], 1)), base(image) + 4 * ay, atol=1e-5)
    with pytest.raises(ValueError, match="sized as the 2D base model"):
        build_meta(cfg, 3)  # no 2D model sizes given
    with pytest.raises(ValueError, match="meta.init='2d' needs"):
        warm_start(build_meta(cfg, 3, 1, TINY2D), build_model3d(TINY3D, 1, 3).state_dict(), 1, "2d")


def test_meta_init_must_be_known():
    from sparseseg.config import apply_overrides

    preset = apply_overrides(get_preset("auto"), ["meta.init=3d"])
    assert preset.meta.init == "3d"
    with pytest.raises(ValueError, match="meta.init must be one of scratch, 3d, 2d"):
        apply_overrides(get_preset("auto"), ["meta.init=base"])
    with pytest.raises(ValueError, match=r"meta.init='2d' needs a 2D meta-model \(meta.plane set"):
        apply_overrides(get_preset("auto"), ["meta.init=2d"])
    with pytest.raises(ValueError, match="meta.init='3d' needs a 3D meta-model"):
        apply_overrides(get_preset("auto"), ["meta.init=3d", "meta.plane=xy"])
    with pytest.raises(ValueError, match="meta.plane must be one of xy, xz, yz"):
        apply_overrides(get_preset("auto"), ["meta.plane=z"])


def test_mirroring_averages_the_flipped_predictions():
    from sparseseg.inference import mirror_flips, predict_volume_3d

    assert mirror_flips(()) == []
    assert mirror_flips((0, 2)) == [(2,), (4,), (2, 4)]
    with pytest.raises(ValueError, match="axes among 0,1,2"):
        mirror_flips((3,))
    torch.manual_seed(0)
    model = build_model3d(TINY3D, 1, 3).eval()
    image = np.random.default_rng(0).normal(size=(16, 16, 8)).astype(np.float32)
    run = dict(patch=(16, 16, 8), precision="fp32")
    plain = predict_volume_3d(model, image, **run)
    flipped = predict_volume_3d(model, image[::-1].copy(), **run)[:, ::-1]
    mirrored = predict_volume_3d(model, image, mirror_axes=(0,), **run)
    assert not np.allclose(plain, flipped, atol=1e-3)  # the network is not symmetric
    np.testing.assert_allclose(mirrored, (plain + flipped) / 2, atol=1e-5)


def test_dynunet_model_file_round_trip(tmp_path):
    model = build_model3d(TINY3D, 1, 2).eval()
    save_bundle(Bundle({"3d": base_part(model, "dynunet", TINY3D)}, ["a", "b"], "x", {}), tmp_path)
    bundle = load_bundle(tmp_path)
    loaded = bundle.build("3d")
    x = torch.randn(1, 1, 16, 16, 8)
    part = bundle.parts["3d"]
    assert part.arch == "dynunet" and part.kwargs["spatial_dims"] == 3
    assert torch.allclose(loaded(x), model(x))


@pytest.mark.parametrize("build", ["2d", "3d", "meta"])
def test_dynunet_trains_with_sgd_and_loss_decreases(build):
    """A bright block on noise: a few SGD steps of CE + Dice must lower the loss."""
    from sparseseg.training.loop import fit, supervised_loss

    torch.manual_seed(0)
    shape = (16, 16, 8) if build != "2d" else (16, 16)
    rng = np.random.default_rng(0)
    image = rng.normal(0, 0.3, (2, *shape)).astype(np.float32)
    label = np.zeros((2, *shape), np.int64)
    label[(slice(None), *[slice(4, 12)] * len(shape))] = 1
    image[label == 1] += 2.0
    label[:, ::2] = 2  # half the rows unannotated
    channels = 1
    if build == "2d":
        model = build_model2d(TINY2D, 1, 2)
    elif build == "3d":
        model = build_model3d(TINY3D, 1, 2)
    else:
        model = build_meta(MetaConfig(model=TINY3D, fusion="y"), 2)
        channels = 3
    x = torch.from_numpy(image)[:, None].repeat(1, channels, *[1] * len(shape))
    batch = {"image": x, "label": torch.from_numpy(label)}
    base = get_preset("auto").train3d
    cfg = dataclasses.replace(base, iterations=25, log_every=1, checkpoint_every=10**6)
    assert isinstance(cfg, TrainConfig) and cfg.optimizer == "sgd" and cfg.loss == "ce+dice"
    history = fit(
        model, lambda s: batch, supervised_loss(2, 0.5, cfg.loss), cfg, None, progress=False
    )
    losses = [h["loss"] for h in history]
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])


def test_bf16_gradients_match_fp32_when_a_feature_map_is_two_voxels_deep():
    """torch's CPU bf16 Conv3d weight gradient is garbage for inputs 2 voxels deep along the
    first spatial axis (about half of random draws); the DynUNet convs leave autocast there."""
    from sparseseg.models.dynunet import SegDynUNet

    torch.manual_seed(0)
    for _ in range(6):
        model = SegDynUNet(
            1, 2, filters=(4, 8, 16), strides=(1, 1, 1, 2, 2, 2, 2, 1, 1), kernels=(3,) * 9
        )
        x, g = torch.randn(1, 1, 8, 8, 8), torch.randn(1, 2, 8, 8, 8)
        grads = []
        for bf16 in (False, True):
            model.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = model.train()(x)[0]
            out.float().backward(g)
            grads.append(model.bottleneck.conv2.conv.weight.grad.clone())  # input 2 x 8 x 8
        assert torch.isfinite(grads[1]).all()
        assert float(grads[1].abs().max()) < 3 * float(grads[0].abs().max())


@pytest.mark.parametrize("dims", [2, 3])
def test_the_dynunet_norm_is_instance_norm_in_either_memory_order(dims):
    """The norm is computed as group norm (one channel per group) so channels-last tensors stay
    in that order; values and gradients must be instance norm's, state dict unchanged."""
    from torch import nn

    from sparseseg.models.dynunet import SegDynUNet

    model = SegDynUNet(
        1,
        2,
        spatial_dims=dims,
        filters=(4, 8, 16),
        strides=(1,) * dims + (2,) * 2 * dims,
        kernels=(3,) * 3 * dims,
    )
    ours = model.input_block.norm1
    assert type(ours) is not (nn.InstanceNorm3d if dims == 3 else nn.InstanceNorm2d)
    reference = (nn.InstanceNorm3d if dims == 3 else nn.InstanceNorm2d)(4, affine=True)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 2.0), ours.bias.uniform_(-1.0, 1.0)
    reference.load_state_dict(ours.state_dict())
    order = torch.channels_last_3d if dims == 3 else torch.channels_last
    x = torch.randn(2, 4, *(6,) * dims) * 3 + 5
    g = torch.randn_like(x)
    results = []
    for norm, memory in (
        (reference, torch.contiguous_format),
        (ours, torch.contiguous_format),
        (ours, order),
    ):
        xi = x.clone(memory_format=memory).requires_grad_()
        norm.zero_grad()
        out = norm(xi)
        out.backward(g)
        assert out.is_contiguous(memory_format=memory)
        results.append((out.detach(), xi.grad, norm.weight.grad.clone(), norm.bias.grad.clone()))
    for got in results[1:]:
        for a, b in zip(results[0], got, strict=True):
            assert torch.allclose(a, b, atol=1e-4)
