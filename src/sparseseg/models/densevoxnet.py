"""DenseVoxNet (Yu et al., MICCAI 2017): the sparse 3D base model and the body of the meta-model.

Layout (input (B, Cin, X, Y, Z), every spatial size a multiple of :attr:`DenseVoxNet.stride`,
(4, 4, 4) by default)::

    stem        3x3x3 conv, stride 2                                 -> stem_channels   @ 1/2
    block1      dense block: ``block_layers[0]`` x (norm-ReLU-3x3x3 conv, ``growth`` maps)  @ 1/2
    transition  norm-ReLU-1x1x1 conv + 2x2x2 max pool                                    @ 1/4
    block2      dense block: ``block_layers[1]`` layers                                   @ 1/4
    up          norm-ReLU, two 2x transposed convs (``up_channels``), 1x1x1 classifier     @ 1
    aux         side output from block1: 2x transposed conv + 1x1x1 classifier            @ 1

``downsample`` sets the factor of each of the two down steps per axis: (2, 2, 2) is the network
above; (2, 2, 1) never pools along Z, for stacks whose sections are much thicker than their
pixels (serial-section EM), so thin in-plane structures keep full resolution along Z.

The model is split into a replaceable stem (:meth:`DenseVoxNet.make_stem`) and a
:class:`DenseVoxNetBody` (everything after the stem), so a variant with two input branches (the
Y-shaped meta-model) subclasses :class:`DenseVoxNet`, overrides ``make_stem``/``forward`` and reuses
the body unchanged.

**Outputs.** In training mode with deep supervision, ``forward`` returns ``(main, aux)``, both
logits of shape (B, num_classes, X, Y, Z); in eval mode (or without deep supervision) it returns the
main logits only. Use :func:`sparseseg.training.losses.deep_supervision_loss` to handle both.

Weights are initialised N(0, 0.01) as in the paper; norm layers start at weight 1, bias 0.
"""

from __future__ import annotations

import torch
from torch import nn


def make_norm(kind: str, channels: int) -> nn.Module:
    """'batch' (the paper's choice) or 'instance' (robust at batch sizes of 1-2)."""
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    raise ValueError(f"unknown norm {kind!r} (expected 'batch' or 'instance')")


class DenseLayer(nn.Module):
    """norm-ReLU-3x3x3 conv (-dropout); its output is concatenated to its input."""

    def __init__(self, in_channels: int, growth: int, norm: str, dropout: float):
        super().__init__()
        self.norm = make_norm(norm, in_channels)
        self.conv = nn.Conv3d(in_channels, growth, 3, padding=1, bias=False)
        # element-wise dropout after each conv, as in Yu et al.
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.drop(self.conv(torch.relu(self.norm(x))))], dim=1)


class DenseBlock(nn.Sequential):
    def __init__(self, in_channels: int, layers: int, growth: int, norm: str, dropout: float):
        super().__init__(
            *(DenseLayer(in_channels + i * growth, growth, norm, dropout) for i in range(layers))
        )
        self.out_channels = in_channels + layers * growth


class DenseVoxNetBody(nn.Module):
    """Everything after the stem: features (B, in_channels, X/dx, Y/dy, Z/dz) -> logits (X, Y, Z),
    with (dx, dy, dz) = ``downsample``."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        growth: int = 12,
        block_layers: tuple[int, int] = (12, 12),
        up_channels: tuple[int, int] = (128, 64),
        norm: str = "batch",
        dropout: float = 0.2,
        deep_supervision: bool = True,
        downsample: tuple[int, int, int] = (2, 2, 2),
    ):
        super().__init__()
        self.deep_supervision = deep_supervision
        down = tuple(downsample)
        self.block1 = DenseBlock(in_channels, block_layers[0], growth, norm, dropout)
        c1 = self.block1.out_channels
        self.transition = nn.Sequential(
            make_norm(norm, c1),
            nn.ReLU(inplace=True),
            nn.Conv3d(c1, c1, 1, bias=False),
            nn.MaxPool3d(down),
        )
        self.block2 = DenseBlock(c1, block_layers[1], growth, norm, dropout)
        c2 = self.block2.out_channels
        u1, u2 = up_channels
        self.up = nn.Sequential(
            make_norm(norm, c2),
            nn.ReLU(inplace=True),
            nn.ConvTranspose3d(c2, u1, down, stride=down),
            make_norm(norm, u1),
            nn.ReLU(inplace=True),
            nn.ConvTranspose3d(u1, u2, down, stride=down),
            make_norm(norm, u2),
            nn.ReLU(inplace=True),
            nn.Conv3d(u2, num_classes, 1),
        )
        if deep_supervision:
            self.aux = nn.Sequential(
                make_norm(norm, c1),
                nn.ReLU(inplace=True),
                nn.ConvTranspose3d(c1, u2, down, stride=down),
                make_norm(norm, u2),
                nn.ReLU(inplace=True),
                nn.Conv3d(u2, num_classes, 1),
            )

    def forward(self, features: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        f1 = self.block1(features)
        main = self.up(self.block2(self.transition(f1)))
        if self.deep_supervision and self.training:
            return main, self.aux(f1)
        return main


def init_normal_(module: nn.Module, std: float | None = 0.01) -> None:
    """N(0, std) for conv weights (the paper's 3D init; ``std=None``: He normal, fan_out), zero
    biases, unit norm weights."""
    for m in module.modules():
        if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d, nn.Conv2d, nn.ConvTranspose2d)):
            if std is None:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            else:
                nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm3d, nn.InstanceNorm3d)) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class DenseVoxNet(nn.Module):
    """The sparse 3D base model: ``forward(x)`` maps (B, in_channels, X, Y, Z) to logits.

    Every spatial size of ``x`` must be a multiple of :attr:`stride` (per axis, the square of
    ``downsample``); inference pads otherwise.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        stem_channels: int = 16,
        growth: int = 12,
        block_layers: tuple[int, int] = (12, 12),
        up_channels: tuple[int, int] = (128, 64),
        norm: str = "batch",
        dropout: float = 0.2,
        deep_supervision: bool = True,
        init_std: float | None = 0.01,
        downsample: tuple[int, int, int] = (2, 2, 2),
    ):
        super().__init__()
        if len(downsample) != 3 or any(d not in (1, 2) for d in downsample):
            raise ValueError(f"downsample must be 3 factors of 1 or 2, got {downsample}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.norm_kind = norm
        self.downsample = tuple(int(d) for d in downsample)
        self.stride = tuple(d * d for d in self.downsample)
        self.stem = self.make_stem(in_channels, stem_channels)
        self.body = DenseVoxNetBody(
            stem_channels,
            num_classes,
            growth=growth,
            block_layers=tuple(block_layers),
            up_channels=tuple(up_channels),
            norm=norm,
            dropout=dropout,
            deep_supervision=deep_supervision,
            downsample=self.downsample,
        )
        init_normal_(self, init_std)

    def make_stem(self, in_channels: int, out_channels: int) -> nn.Module:
        """The strided 3x3x3 input conv: (B, in_channels, X, Y, Z) -> (B, out, X/dx, Y/dy, Z/dz)."""
        return nn.Conv3d(
            in_channels, out_channels, 3, stride=self.downsample, padding=1, bias=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return self.body(self.stem(x))
