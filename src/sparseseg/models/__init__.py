"""Network definitions (no file handling: trained models are saved as model bundles)."""

from sparseseg.models.densevoxnet import DenseVoxNet, DenseVoxNetBody
from sparseseg.models.factory import base_part, build_model2d, build_model3d
from sparseseg.models.fcn2d import UNet2D

__all__ = [
    "DenseVoxNet",
    "DenseVoxNetBody",
    "UNet2D",
    "base_part",
    "build_model2d",
    "build_model3d",
]
