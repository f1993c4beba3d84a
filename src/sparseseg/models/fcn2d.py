"""The 2D base model: a U-Net (Ronneberger et al. 2015) with norm layers and He initialisation.

``forward(x)``: (B, in_channels, A, B) -> logits (B, num_classes, A, B); A and B must be multiples
of :attr:`UNet2D.stride` (= 2 ** depth); inference pads slices to that.
"""

from __future__ import annotations

import torch
from torch import nn


def _norm2d(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    raise ValueError(f"unknown norm {kind!r} (expected 'batch' or 'instance')")


class ConvBlock2d(nn.Sequential):
    """Two (3x3 conv - norm - ReLU)."""

    def __init__(self, in_channels: int, out_channels: int, norm: str, dropout: float = 0.0):
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            _norm2d(norm, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            _norm2d(norm, out_channels),
            nn.ReLU(inplace=True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        super().__init__(*layers)


class UNet2D(nn.Module):
    """A 2D U-Net with ``depth`` poolings; level i has ``base_channels * 2**i`` maps (capped)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        base_channels: int = 32,
        depth: int = 4,
        max_channels: int = 512,
        norm: str = "batch",
        dropout: float = 0.0,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.stride = 2**depth
        widths = [min(base_channels * 2**i, max_channels) for i in range(depth + 1)]
        self.down = nn.ModuleList()
        c = in_channels
        for w in widths[:-1]:
            self.down.append(ConvBlock2d(c, w, norm))
            c = w
        self.pool = nn.MaxPool2d(2)
        self.bottom = ConvBlock2d(c, widths[-1], norm, dropout)
        self.ups = nn.ModuleList()
        self.dec = nn.ModuleList()
        c = widths[-1]
        for w in reversed(widths[:-1]):
            self.ups.append(nn.ConvTranspose2d(c, w, 2, stride=2))
            self.dec.append(ConvBlock2d(2 * w, w, norm))
            c = w
        self.head = nn.Conv2d(c, num_classes, 1)
        he_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for up, dec, skip in zip(self.ups, self.dec, reversed(skips), strict=True):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)


def he_init_(module: nn.Module) -> None:
    """He (Kaiming) normal init for convs (fan_out, ReLU), zero biases, unit norm weights."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
