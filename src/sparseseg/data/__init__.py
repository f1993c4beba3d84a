"""Volumes, file formats, dataset layouts, plane views and phantom data."""

from sparseseg.data.volume import Volume

__all__ = ["Volume"]
