"""nnU-Net's network through MONAI's DynUNet: the 2D and 3D base models and the meta-model.

:class:`SegDynUNet` is ``monai.networks.nets.DynUNet`` (conv - instance norm - LeakyReLU blocks,
transposed-conv decoder, deep supervision) with the project's conventions: ``in_channels`` /
``num_classes`` / ``stride`` attributes and, in training mode with deep supervision, a tuple
``(main, aux1, aux2, ...)`` of logits instead of MONAI's stacked tensor, so the losses and the
training loop treat it like DenseVoxNet. MONAI upsamples every auxiliary head to the full output
size (nearest), so the targets and their ignore mask stay at full resolution (no target
down-sampling is needed). ``strides`` and ``kernels`` come flattened, ``spatial_dims`` numbers
per level, as the presets store them.

:class:`MetaDynUNet` is the Step III meta-model: input (B, image_channels + C, ...), A(Y) either
stacked as extra input channels (``fusion='stack'``) or through its own input block fused with
the image's (``fusion='y'``, the paper's Fig. 4 with DynUNet blocks), plus the optional A(Y)
skip to the logits of :class:`sparseseg.models.meta.YDenseVoxNet`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.blocks.dynunet_block import UnetBasicBlock
from monai.networks.nets import DynUNet
from torch import nn
from torch.nn import functional as F

NORMS = {"instance": ("INSTANCE", {"affine": True}), "batch": ("BATCH", {"affine": True})}
ACT = ("leakyrelu", {"inplace": True, "negative_slope": 0.01})


class _InstanceNorm:
    """Mixin: affine instance norm computed as group norm with one channel per group (the same
    function and parameters), in float32 under autocast.

    Group norm keeps channels-last tensors in that order on the CPU, where instance norm copies
    them to contiguous order and back (docs/performance.md). Float32: in bf16, the variance over
    a small feature map whose mean is large next to its spread can cancel to a negative number.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            out = F.group_norm(x.float(), self.num_features, self.weight, self.bias, self.eps)
            return out.to(x.dtype)


class _InstanceNorm3d(_InstanceNorm, nn.InstanceNorm3d):
    pass


class _InstanceNorm2d(_InstanceNorm, nn.InstanceNorm2d):
    pass


class _Conv3d(nn.Conv3d):
    """Conv3d that leaves CPU bf16 autocast for inputs exactly 2 voxels deep along the first
    spatial axis: there torch 2.13's CPU bf16 backward of the weights returns garbage (about
    half of random trials give |grad| > 100x the float32 one; seen as 1e35 after one SGD step
    at a 2 x 4 x 4 bottleneck, then NaN). Other depths (1, 3, 4, ...) are fine."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.shape[2] == 2 and torch.is_autocast_enabled("cpu"):
            with torch.autocast(device_type="cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


def autocast_safe(model: nn.Module) -> nn.Module:
    """Swap in the bf16-safe norm and conv classes above (in place; same state dict)."""
    swaps = {
        nn.InstanceNorm3d: _InstanceNorm3d,
        nn.InstanceNorm2d: _InstanceNorm2d,
        nn.Conv3d: _Conv3d,
    }
    for module in model.modules():
        if type(module) in swaps:
            module.__class__ = swaps[type(module)]
    return model


def per_level(flat: Sequence[int], dims: int, levels: int, what: str) -> list[tuple[int, ...]]:
    """Flat ``(a0, b0, c0, a1, b1, c1, ...)`` -> ``[(a0, b0, c0), (a1, b1, c1), ...]``."""
    flat = [int(v) for v in flat]
    if len(flat) != dims * levels:
        raise ValueError(
            f"{what} needs {dims} numbers per level for {levels} levels, got {len(flat)}"
        )
    return [tuple(flat[i * dims : (i + 1) * dims]) for i in range(levels)]


class SegDynUNet(DynUNet):
    """DynUNet for ``spatial_dims`` 2 or 3: (B, in_channels, *S) -> logits (B, num_classes, *S).

    ``filters``: widths per level (the first level is the full-resolution one); ``strides`` and
    ``kernels``: flattened per level, ``spatial_dims`` each (the first level's stride is usually
    1). Deep supervision: a head on every decoder level but the full-resolution one and the
    coarsest (which nnU-Net weights 0); at least one head.
    Every spatial size must be a multiple of :attr:`stride` (per axis; an int for 2D, where the
    strides must be equal along both axes).
    """

    # Inference keeps contiguous order for this model (sparseseg.inference): with torch's
    # instance norm channels-last was slower on a bf16 CPU, and the group-norm form is not yet
    # measured there (docs/performance.md). Training's order is the plan's (its probe).
    prefers_channels_last = False
    # Instance norm normalises over the whole window, padding included: a volume smaller than
    # the training patch is predicted centred in a full patch, the canvas it was trained in, not
    # in a window cut to its size (MSD Hippocampus, 500 steps: mean Dice 0.661 -> 0.807).
    window_is_canvas = True

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        spatial_dims: int = 3,
        filters: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[int] = (1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2),
        kernels: Sequence[int] = (3,) * 12,
        norm: str = "instance",
        dropout: float = 0.0,
        deep_supervision: bool = True,
    ):
        levels = len(filters)
        if levels < 2:
            raise ValueError("DynUNet needs at least two levels (filters)")
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r} (expected {', '.join(NORMS)})")
        s = per_level(strides, spatial_dims, levels, "strides")
        k = per_level(kernels, spatial_dims, levels, "kernels")
        supervised = bool(deep_supervision) and levels > 2
        super().__init__(
            spatial_dims,
            in_channels,
            num_classes,
            kernel_size=k,
            strides=s,
            upsample_kernel_size=s[1:],
            filters=list(filters),
            dropout=float(dropout) if dropout else None,
            norm_name=NORMS[norm],
            act_name=ACT,
            deep_supervision=supervised,
            deep_supr_num=max(1, levels - 3) if supervised else 1,
            res_block=False,
        )
        self.num_classes = int(num_classes)
        autocast_safe(self)
        total = tuple(math.prod(level[a] for level in s) for a in range(spatial_dims))
        if spatial_dims == 2:
            if total[0] != total[1]:
                raise ValueError(f"2D strides must be equal along both axes, got {total}")
            self.stride: int | tuple[int, ...] = int(total[0])
        else:
            self.stride = total

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        out = super().forward(x)
        if out.dim() == x.dim() + 1:  # MONAI's (B, 1 + heads, C, *S) in training mode
            return tuple(out.unbind(1))
        return out


class YInput(nn.Module):
    """The meta-model's Y-shaped input: image and A(Y) through separate DynUNet input blocks,
    concatenated and fused by a 1x1 conv - norm - LeakyReLU into ``out_channels``."""

    def __init__(
        self,
        spatial_dims: int,
        image_channels: int,
        pl_channels: int,
        out_channels: int,
        kernel: Sequence[int],
        stride: Sequence[int],
        norm_name,
    ):
        super().__init__()
        self.image_channels, self.pl_channels = image_channels, pl_channels
        branch = {"kernel_size": kernel, "stride": stride, "norm_name": norm_name, "act_name": ACT}
        self.image = UnetBasicBlock(spatial_dims, image_channels, out_channels, **branch)
        self.pl = UnetBasicBlock(spatial_dims, pl_channels, out_channels, **branch)
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        norm = nn.InstanceNorm3d if spatial_dims == 3 else nn.InstanceNorm2d
        self.fuse = nn.Sequential(
            conv(2 * out_channels, out_channels, 1, bias=False),
            norm(out_channels, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image, pl = torch.split(x, [self.image_channels, self.pl_channels], dim=1)
        return self.fuse(torch.cat([self.image(image), self.pl(pl)], dim=1))


class MetaDynUNet(SegDynUNet):
    """The DynUNet meta-model: (B, image_channels + num_classes, *S) -> logits.

    ``fusion``: 'stack' (A(Y) as extra input channels) or 'y' (separate input blocks, see
    :class:`YInput`). ``ay_skip`` > 0 adds a 1x1 conv of A(Y), initialised to ``ay_skip`` x
    identity, to every output (the untrained model predicts the base models' vote). Other
    keyword arguments are :class:`SegDynUNet`'s.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        image_channels: int = 1,
        fusion: str = "stack",
        ay_skip: float = 0.0,
        **kwargs,
    ):
        if fusion not in ("stack", "y"):
            raise ValueError(f"unknown fusion {fusion!r} (expected 'stack' or 'y')")
        super().__init__(image_channels + num_classes, num_classes, **kwargs)
        self.image_channels = int(image_channels)
        if fusion == "y":
            y_input = YInput(
                self.spatial_dims,
                image_channels,
                num_classes,
                self.filters[0],
                self.kernel_size[0],
                self.strides[0],
                self.norm_name,
            )
            y_input.apply(self.initialize_weights)
            autocast_safe(y_input)
            self.input_block = y_input
            self.skip_layers.downsample = y_input  # the outermost skip layer holds the input block
        self.ay_skip = None
        if ay_skip > 0:
            conv = nn.Conv3d if self.spatial_dims == 3 else nn.Conv2d
            self.ay_skip = conv(num_classes, num_classes, 1)
            eye = torch.eye(num_classes).reshape(num_classes, num_classes, *[1] * self.spatial_dims)
            with torch.no_grad():
                self.ay_skip.weight.copy_(ay_skip * eye)
                self.ay_skip.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        expected = self.image_channels + self.num_classes
        if x.shape[1] != expected:
            raise ValueError(
                f"meta-model expects {expected} channels (image {self.image_channels} + "
                f"A(Y) {self.num_classes}), got {x.shape[1]}"
            )
        out = super().forward(x)
        if self.ay_skip is None:
            return out
        prior = self.ay_skip(x[:, self.image_channels :])
        if isinstance(out, tuple):
            return tuple(o + prior for o in out)
        return out + prior
