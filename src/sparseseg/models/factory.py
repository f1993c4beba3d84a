"""Build models from preset configs, and save/load them as small self-describing files.

A model file is a dict ``{"kind", "in_channels", "num_classes", "config", "state_dict", ...}``
written with ``torch.save``; it loads with ``torch.load(weights_only=True)``. ``config`` holds
the constructor arguments of ``kind`` (the same the model bundle stores, see
:mod:`sparseseg.bundle`), so every kind loads the same way.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparseseg.errors import InputError
from sparseseg.fileio import atomic_path


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
    from sparseseg.bundle import ARCHITECTURES

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


def save_model(
    path: str | Path, model: nn.Module, kind: str, cfg, extra: dict[str, Any] | None = None
) -> None:
    """Atomically save ``model`` (its ``in_channels``/``num_classes`` attributes and config)."""
    state = {
        "kind": kind,
        "in_channels": int(model.in_channels),
        "num_classes": int(model.num_classes),
        "config": model_kwargs(kind, cfg),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": dict(extra or {}),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Load a model saved by :func:`save_model` (any kind of :data:`BUILDERS`) in eval mode.

    Returns ``(model, file_dict)``. Raises InputError for a missing or unreadable file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("model file not found", path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in state["config"].items()}
        model = model_class(state["kind"])(state["in_channels"], state["num_classes"], **kwargs)
        model.load_state_dict(state["state_dict"])
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot load model ({type(exc).__name__}: {exc})", path) from None
    model.eval()
    return model, state
