"""Build models from preset configs, and describe them as model-bundle parts.

Trained models are saved only as model bundles (:mod:`sparseseg.bundle`): :func:`base_part` gives
a base model's part (architecture, constructor arguments, weights), which
:func:`sparseseg.bundle.save_bundle` writes and :meth:`sparseseg.bundle.Bundle.build` rebuilds.
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from sparseseg.bundle import ARCHITECTURES, ModelPart


def build_model2d(cfg, in_channels: int, num_classes: int) -> nn.Module:
    """The 2D base model of a :class:`sparseseg.config.Model2DConfig` (``cfg.arch``)."""
    return build_model(cfg.arch, cfg, in_channels, num_classes)


def build_model3d(cfg, in_channels: int, num_classes: int) -> nn.Module:
    """The 3D base model of a :class:`sparseseg.config.Model3DConfig` (``cfg.arch``)."""
    return build_model(cfg.arch, cfg, in_channels, num_classes)


def build_model(kind: str, cfg, in_channels: int, num_classes: int) -> nn.Module:
    """The network ``kind`` ('unet2d', 'densevoxnet', 'dynunet') sized by ``cfg``."""
    return model_class(kind)(in_channels, num_classes, **model_kwargs(kind, cfg))


def model_class(kind: str) -> type[nn.Module]:
    """The class of architecture ``kind`` (as the model bundle names them)."""
    if kind not in ARCHITECTURES:
        raise ValueError(f"unknown model kind {kind!r} (expected one of {', '.join(BUILDERS)})")
    module_name, class_name = ARCHITECTURES[kind].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def model_kwargs(kind: str, cfg) -> dict[str, Any]:
    """The constructor arguments of ``kind`` (besides in_channels, num_classes) from a Model2DConfig
    or Model3DConfig, as plain JSON-able values (what model files and bundles store)."""
    if kind not in BUILDERS:
        raise ValueError(f"unknown model kind {kind!r} (expected one of {', '.join(BUILDERS)})")
    if kind == "unet2d":
        names = ("base_channels", "depth", "max_channels", "norm", "dropout")
        kwargs = {n: getattr(cfg, n) for n in names}
    elif kind == "densevoxnet":
        kwargs = densevoxnet_kwargs(cfg)
    else:
        kwargs = dynunet_kwargs(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}


def dynunet_kwargs(cfg) -> dict[str, Any]:
    """Keyword arguments of :class:`sparseseg.models.dynunet.SegDynUNet` from a model config
    (2D or 3D: the number of strides per level follows the config's kind)."""
    from sparseseg.config import Model2DConfig

    return {
        "spatial_dims": 2 if isinstance(cfg, Model2DConfig) else 3,
        "filters": tuple(cfg.filters),
        "strides": tuple(cfg.strides),
        "kernels": tuple(cfg.kernels),
        "norm": cfg.norm,
        "dropout": cfg.dropout,
        "deep_supervision": bool(getattr(cfg, "deep_supervision", True)),
    }


def densevoxnet_kwargs(cfg) -> dict[str, Any]:
    """Keyword arguments of :class:`DenseVoxNet` (and subclasses) from a Model3DConfig."""
    return {
        "stem_channels": cfg.stem_channels,
        "growth": cfg.growth,
        "block_layers": tuple(cfg.block_layers),
        "up_channels": tuple(cfg.up_channels),
        "norm": cfg.norm,
        "dropout": cfg.dropout,
        "deep_supervision": cfg.deep_supervision,
        "init_std": cfg.init_std,
        "downsample": tuple(cfg.downsample),
    }


BUILDERS = ("unet2d", "densevoxnet", "dynunet")


def base_part(model: nn.Module, kind: str, cfg) -> ModelPart:
    """The model-bundle part of base model ``model`` of architecture ``kind`` sized by ``cfg``:
    its constructor arguments (with its ``in_channels``/``num_classes``) and weights on the CPU."""
    kwargs = {
        "in_channels": int(model.in_channels),
        "num_classes": int(model.num_classes),
        **model_kwargs(kind, cfg),
    }
    return ModelPart(kind, kwargs, {k: v.detach().cpu() for k, v in model.state_dict().items()})
