"""A disk cache of slice features, so selections at several budgets share one feature pass.

The features of a set of volumes depend only on the volumes' voxels, the planes and the extractor
settings (extractor, weights, seed, auto-encoder steps, image size), never on the budget. The
cache key hashes all of them, so a changed image or setting never reuses stale features.
``DIR/features-KEY.npz`` holds one (N, D) float32 array per volume and plane and the extractor
record as JSON.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from sparseseg.fileio import atomic_path
from sparseseg.selection.features import FeatureSet


def feature_key(volumes: Sequence[np.ndarray], planes: Sequence[str], settings: dict) -> str:
    """Hex digest naming the features of ``volumes`` (X, Y, Z) under ``planes`` and ``settings``."""
    digest = hashlib.sha256(json.dumps([list(planes), settings], sort_keys=True).encode())
    for volume in volumes:
        _add_volume(digest, volume)
    return digest.hexdigest()[:24]


def _add_volume(digest, volume: np.ndarray) -> None:
    """Hash one volume's dtype, shape and bytes (a lazy volume is read here, and freed)."""
    array = np.ascontiguousarray(volume)
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array)  # the bytes, without a copy


def cached_features(
    cache_dir: str | Path,
    volumes: Sequence[np.ndarray],
    planes: Sequence[str],
    settings: dict,
    compute: Callable[[], FeatureSet],
) -> FeatureSet:
    """The features for this key from ``cache_dir``, or ``compute()`` them and store them there."""
    path = Path(cache_dir) / f"features-{feature_key(volumes, planes, settings)}.npz"
    if path.exists():
        with np.load(path) as stored:
            features = [{p: stored[f"{v}/{p}"] for p in planes} for v in range(len(volumes))]
            info = json.loads(str(stored["info"]))
        return FeatureSet(features, {**info, "cache": str(path)})
    result = compute()
    arrays = {f"{v}/{p}": f[p] for v, f in enumerate(result.features) for p in planes}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:  # a file object keeps np.savez from appending ".npz"
            np.savez(fh, info=np.array(json.dumps(result.info)), **arrays)
    return result
