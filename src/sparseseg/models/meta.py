"""The Y-shaped DenseVoxNet meta-model (paper Fig. 4).

Two input branches -- the image and A(Y), the mean of the one-hot pseudo-label sets (C channels in
[0, 1]) -- each with its own strided stem, are concatenated and fused by a conv, then go through the
DenseVoxNet body (dense blocks, up-sampling decoder, auxiliary side output) unchanged. An optional
skip adds a 1x1x1 conv of A(Y) to the logits, so training starts from the base models' vote (the
paper's "preliminary ensemble") and the network learns corrections to it.

``forward`` takes ONE tensor (B, image_channels + C, X, Y, Z): the image channels first, then the C
channels of A(Y). It splits them inside, so the generic sliding-window inference and the shared
training loop treat the meta-model like any single-input 3D network.
"""

from __future__ import annotations

import torch
from torch import nn

from sparseseg.models.densevoxnet import DenseVoxNet, init_normal_, make_norm


class YStem(nn.Module):
    """(B, image_channels + pl_channels, X, Y, Z) -> fused features (B, out, X/sx, Y/sy, Z/sz).

    Each branch: 3x3x3 conv with ``stride`` (sx, sy, sz), norm, ReLU, 3x3x3 conv.
    Fusion: concat, norm, ReLU, 3x3x3 conv.
    """

    def __init__(
        self,
        image_channels: int,
        pl_channels: int,
        image_width: int,
        pl_width: int,
        out_channels: int,
        norm: str,
        stride: tuple[int, int, int] = (2, 2, 2),
    ):
        super().__init__()
        self.image_channels = image_channels
        self.pl_channels = pl_channels
        self.image = self._branch(image_channels, image_width, norm, stride)
        self.pl = self._branch(pl_channels, pl_width, norm, stride)
        self.fuse = nn.Sequential(
            make_norm(norm, image_width + pl_width),
            nn.ReLU(inplace=True),
            nn.Conv3d(image_width + pl_width, out_channels, 3, padding=1, bias=False),
        )

    @staticmethod
    def _branch(in_channels: int, channels: int, norm: str, stride) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv3d(in_channels, channels, 3, stride=stride, padding=1, bias=False),
            make_norm(norm, channels),
            nn.ReLU(inplace=True),
            nn.Conv3d(channels, channels, 3, padding=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = self.image_channels + self.pl_channels
        if x.shape[1] != expected:
            raise ValueError(
                f"meta-model expects {expected} channels (image {self.image_channels} + "
                f"A(Y) {self.pl_channels}), got {x.shape[1]}"
            )
        image, pl = torch.split(x, [self.image_channels, self.pl_channels], dim=1)
        return self.fuse(torch.cat([self.image(image), self.pl(pl)], dim=1))


class YDenseVoxNet(DenseVoxNet):
    """The meta-model. ``forward(x)``: (B, image_channels + num_classes, X, Y, Z) -> logits.

    Outputs follow :class:`DenseVoxNet`: ``(main, aux)`` in training mode with deep supervision,
    else the main logits (B, num_classes, X, Y, Z). Spatial sizes must be multiples of
    :attr:`stride`.
    ``stem_channels`` is the width of the image branch and of the fused features, ``ay_channels``
    the width of the A(Y) branch (default: ``stem_channels``). With ``ay_skip`` (> 0) a 1x1x1
    conv from A(Y), initialised to ``ay_skip`` x identity, is added to the output logits (main
    and auxiliary): the untrained model then predicts the base models' vote, and the network
    learns corrections to it. All other keyword arguments are DenseVoxNet's.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        image_channels: int = 1,
        ay_channels: int | None = None,
        ay_skip: float = 0.0,
        stem_channels: int = 16,
        init_std: float | None = 0.01,
        **kwargs,
    ):
        self._y_ay_channels = ay_channels or stem_channels
        self._y_image_channels = image_channels
        super().__init__(
            image_channels + num_classes,
            num_classes,
            stem_channels=stem_channels,
            init_std=init_std,
            **kwargs,
        )
        self.image_channels = image_channels
        init_normal_(self, init_std)
        self.ay_skip = None
        if ay_skip > 0:
            self.ay_skip = nn.Conv3d(num_classes, num_classes, 1)
            with torch.no_grad():
                self.ay_skip.weight.copy_(ay_skip * torch.eye(num_classes)[..., None, None, None])
                self.ay_skip.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        out = self.body(self.stem(x))
        if self.ay_skip is None:
            return out
        prior = self.ay_skip(x[:, self.image_channels :])
        if isinstance(out, tuple):
            return tuple(o + prior for o in out)
        return out + prior

    def make_stem(self, in_channels: int, out_channels: int) -> nn.Module:
        image_channels = self._y_image_channels
        return YStem(
            image_channels,
            in_channels - image_channels,
            out_channels,
            self._y_ay_channels,
            out_channels,
            self.norm_kind,
            self.downsample,
        )


def meta_arch(cfg) -> str:
    """The bundle architecture name of the meta-model of a :class:`sparseseg.config.MetaConfig`:
    'ydensevoxnet' or 'dynunet-meta' (``cfg.model.arch`` 'dynunet')."""
    return "dynunet-meta" if cfg.model.arch == "dynunet" else "ydensevoxnet"


def meta_kwargs(cfg, num_classes: int, image_channels: int = 1, model2d=None) -> dict:
    """Constructor arguments of the meta-model (:func:`meta_arch`) of a
    :class:`sparseseg.config.MetaConfig`, as plain JSON-able values (so they can be stored in a
    model bundle). A 2D meta-model (``cfg.plane`` set) has the sizes of ``model2d``, the 2D
    base model's :class:`sparseseg.config.Model2DConfig` (DynUNet)."""
    from sparseseg.models.factory import densevoxnet_kwargs, dynunet_kwargs

    common = {"num_classes": int(num_classes), "image_channels": int(image_channels)}
    if cfg.plane:
        if model2d is None or model2d.arch != "dynunet" or cfg.model.arch != "dynunet":
            raise ValueError(
                "a 2D meta-model (meta.plane) is a DynUNet sized as the 2D base model: it needs "
                "DynUNet for meta.model and model2d"
            )
    if meta_arch(cfg) == "dynunet-meta":
        body = dynunet_kwargs(model2d if cfg.plane else cfg.model)
        common.update({"fusion": str(cfg.fusion), "ay_skip": float(cfg.ay_skip)})
    else:
        body = densevoxnet_kwargs(cfg.model)
        common.update({"ay_channels": int(cfg.ay_stem_channels), "ay_skip": float(cfg.ay_skip)})
    return {**common, **{k: list(v) if isinstance(v, tuple) else v for k, v in body.items()}}


def build_meta(cfg, num_classes: int, image_channels: int = 1, model2d=None) -> nn.Module:
    """The meta-model for a :class:`sparseseg.config.MetaConfig` (``model2d``: see
    :func:`meta_kwargs`)."""
    from sparseseg.models.factory import model_class

    return model_class(meta_arch(cfg))(**meta_kwargs(cfg, num_classes, image_channels, model2d))
