"""sparseseg: annotate a few representative slices, train a dense 3D segmentation model."""

__version__ = "0.1.0"
