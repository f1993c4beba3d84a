"""The Y-shaped meta-model: shapes, the two branches, and its place in the bundle."""

from __future__ import annotations

import pytest
import torch

from sparseseg.models.meta import YDenseVoxNet

TINY = dict(stem_channels=8, growth=4, block_layers=(2, 2), up_channels=(8, 8), norm="instance")


def tiny(c: int = 3, **kw) -> YDenseVoxNet:
    torch.manual_seed(0)
    return YDenseVoxNet(c, **{**TINY, **kw})


@pytest.mark.parametrize("shape", [(16, 16, 16), (12, 20, 8)])
def test_shapes_train_and_eval(shape):
    net = tiny(3)
    x = torch.randn(2, 4, *shape)
    net.train()
    main, aux = net(x)
    assert main.shape == aux.shape == (2, 3, *shape)
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (2, 3, *shape)


def test_no_pooling_along_z_keeps_any_section_count():
    net = tiny(2, downsample=[2, 2, 1])  # as stored in a bundle (lists)
    assert net.stride == (4, 4, 1) and net.stem.image[0].stride == (2, 2, 1)
    net.eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 8, 12, 7)).shape == (1, 2, 8, 12, 7)


def test_branches_see_their_own_channels():
    net = tiny(2)
    assert net.stem.image[0].in_channels == 1
    assert net.stem.pl[0].in_channels == 2
    net.eval()
    x = torch.randn(1, 3, 8, 8, 8, requires_grad=True)
    net(x).sum().backward()
    # Both the image and every A(Y) channel reach the output.
    assert all(x.grad[0, i].abs().sum() > 0 for i in range(3))


def test_image_branch_ignores_pl_channels():
    net = tiny(2)
    x = torch.randn(1, 3, 8, 8, 8)
    y = x.clone()
    y[:, 1:] = torch.rand(1, 2, 8, 8, 8)
    with torch.no_grad():
        assert torch.equal(net.stem.image(x[:, :1]), net.stem.image(y[:, :1]))
        assert not torch.allclose(net.stem(x), net.stem(y))


def test_wrong_channel_count_is_a_clear_error():
    net = tiny(3).eval()
    with pytest.raises(ValueError, match="expects 4 channels"):
        net(torch.randn(1, 3, 8, 8, 8))


def test_rebuilds_from_plain_kwargs():
    kwargs = {**TINY, "block_layers": [2, 2], "up_channels": [8, 8], "ay_channels": 6}
    a = YDenseVoxNet(2, **kwargs)
    b = YDenseVoxNet(2, **kwargs)
    b.load_state_dict(a.state_dict())
    a.eval()
    b.eval()
    x = torch.randn(1, 3, 8, 8, 8)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    assert a.stem.pl[0].out_channels == 6 and a.stem.image[0].out_channels == 8


def test_ay_skip_adds_the_vote_to_the_logits():
    net = tiny(3, ay_skip=4.0).eval()
    x = torch.randn(2, 4, 8, 8, 8)
    x[:, 1:] = torch.rand(2, 3, 8, 8, 8)
    with torch.no_grad():
        out = net(x)
        body = net.body(net.stem(x))
    assert torch.allclose(out - body, 4.0 * x[:, 1:], atol=1e-5)
    net.train()
    main, aux = net(x)
    assert main.shape == aux.shape == (2, 3, 8, 8, 8)
    assert tiny(3).ay_skip is None  # off by default


def test_ay_skip_and_nnfit_rounds_are_preset_fields():
    from sparseseg.config import get_preset
    from sparseseg.models.meta import build_meta

    cpu = get_preset("cpu")
    assert cpu.meta.ay_skip == 4.0 and get_preset("paper").meta.ay_skip == 0.0
    assert build_meta(cpu.meta, 3).ay_skip is not None
    plain = get_preset("cpu", ["meta.ay_skip=0", "meta.nnfit_round_iterations=7"])
    assert build_meta(plain.meta, 3).ay_skip is None
    assert plain.meta.nnfit_round_iterations == 7
