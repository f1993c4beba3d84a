"""The VGG-19 convolutional trunk in torchvision's layout, and its ImageNet weights.

:func:`vgg19_features` builds the same ``nn.Sequential`` as ``torchvision.models.vgg19().features``
(layer indices 0..36), so torchvision's ``vgg19-dcbb9e9d.pth`` state dict loads into it with strict
key matching on its ``features.*`` keys. torchvision itself is not needed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from sparseseg.errors import InputError

# Configuration "E" of Simonyan and Zisserman: conv widths, "M" for 2x2 max pooling.
VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M")
VGG19_CFG += (512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
WEIGHTS_FILE = "vgg19-dcbb9e9d.pth"  # torchvision's ImageNet checkpoint name
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TRUNK_CHANNELS = 512
TRUNK_STRIDE = 32


def vgg19_features() -> nn.Sequential:
    """The VGG-19 convolutional trunk: 16 conv3x3+ReLU layers and 5 max pools (37 modules).

    Initialised as torchvision initialises VGG (He normal, fan-out; zero bias), so that a trunk
    without pretrained weights still passes signal through all 16 layers.
    """
    layers: list[nn.Module] = []
    channels = 3
    for v in VGG19_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            conv = nn.Conv2d(channels, int(v), kernel_size=3, padding=1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.ReLU(inplace=True)]
            channels = int(v)
    return nn.Sequential(*layers)


def vgg19_feature_shapes() -> dict[str, tuple[int, ...]]:
    """The ``features.*`` keys of torchvision's VGG-19 state dict and their tensor shapes."""
    trunk = vgg19_features()
    return {f"features.{k}": tuple(v.shape) for k, v in trunk.state_dict().items()}


def default_weights_path() -> Path:
    """Where torch hub caches torchvision's VGG-19 weights: ``<hub dir>/checkpoints/<file>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def resolve_weights(path: str | Path | None) -> Path | None:
    """The weights file to use: ``path`` (which must exist), else the hub cache if present, else
    None (no pretrained weights available offline)."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise InputError("VGG-19 weights file not found", path)
        return path
    cached = default_weights_path()
    return cached if cached.is_file() else None


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_vgg19_weights(trunk: nn.Sequential, path: str | Path) -> None:
    """Load the ``features.*`` tensors of a torchvision VGG-19 state dict into ``trunk``.

    Keys must match exactly (no missing or extra ``features.*`` keys, same shapes); other keys
    (``classifier.*``) are ignored. Raises InputError naming the file otherwise.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"cannot read a PyTorch state dict ({type(exc).__name__})", path) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError("not a state dict (expected a mapping of tensor names)", path)
    features = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
    expected = trunk.state_dict()
    missing = sorted(set(expected) - set(features))
    extra = sorted(set(features) - set(expected))
    if missing or extra:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise InputError(f"not a torchvision VGG-19 state dict: features.* keys {detail}", path)
    for key, tensor in features.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise InputError(
                f"features.{key} has shape {tuple(tensor.shape)}, VGG-19 needs "
                f"{tuple(expected[key].shape)}",
                path,
            )
    trunk.load_state_dict(features, strict=True)
