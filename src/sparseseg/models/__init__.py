"""Network definitions (no file handling here besides the small save/load helpers)."""

from sparseseg.models.densevoxnet import DenseVoxNet, DenseVoxNetBody
from sparseseg.models.factory import build_model2d, build_model3d, load_model, save_model
from sparseseg.models.fcn2d import UNet2D

__all__ = [
    "DenseVoxNet",
    "DenseVoxNetBody",
    "UNet2D",
    "build_model2d",
    "build_model3d",
    "load_model",
    "save_model",
]
