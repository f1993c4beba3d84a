"""Build models from preset configs, and save/load them as small self-describing files.

A model file is a dict ``{"kind", "in_channels", "num_classes", "config", "state_dict", ...}``
written with ``torch.save``; it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparseseg.errors import InputError
from sparseseg.fileio import atomic_path
from sparseseg.models.densevoxnet import DenseVoxNet
from sparseseg.models.fcn2d import UNet2D


def build_model2d(cfg, in_channels: int, num_classes: int) -> UNet2D:
    """A :class:`UNet2D` from a :class:`sparseseg.config.Model2DConfig`."""
    return UNet2D(
        in_channels,
        num_classes,
        base_channels=cfg.base_channels,
        depth=cfg.depth,
        max_channels=cfg.max_channels,
        norm=cfg.norm,
        dropout=cfg.dropout,
    )


def build_model3d(cfg, in_channels: int, num_classes: int) -> DenseVoxNet:
    """A :class:`DenseVoxNet` from a :class:`sparseseg.config.Model3DConfig`."""
    return DenseVoxNet(in_channels, num_classes, **densevoxnet_kwargs(cfg))


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


BUILDERS = {"unet2d": build_model2d, "densevoxnet": build_model3d}


def save_model(
    path: str | Path, model: nn.Module, kind: str, cfg, extra: dict[str, Any] | None = None
) -> None:
    """Atomically save ``model`` (its ``in_channels``/``num_classes`` attributes and config)."""
    state = {
        "kind": kind,
        "in_channels": int(model.in_channels),
        "num_classes": int(model.num_classes),
        "config": dataclasses.asdict(cfg),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": dict(extra or {}),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_model(path: str | Path, config_cls=None) -> tuple[nn.Module, dict[str, Any]]:
    """Load a model saved by :func:`save_model` (kinds 'unet2d', 'densevoxnet') in eval mode.

    Returns ``(model, file_dict)``. Raises InputError for a missing or unreadable file.
    """
    from sparseseg.config import Model2DConfig, Model3DConfig

    path = Path(path)
    if not path.exists():
        raise InputError("model file not found", path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        kind = state["kind"]
        cls = config_cls or {"unet2d": Model2DConfig, "densevoxnet": Model3DConfig}[kind]
        fields = {f.name for f in dataclasses.fields(cls)}
        cfg = cls(
            **{
                k: tuple(v) if isinstance(v, list) else v
                for k, v in state["config"].items()
                if k in fields
            }
        )
        model = BUILDERS[kind](cfg, state["in_channels"], state["num_classes"])
        model.load_state_dict(state["state_dict"])
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot load model ({type(exc).__name__}: {exc})", path) from None
    model.eval()
    return model, state
