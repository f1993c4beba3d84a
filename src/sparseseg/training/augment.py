"""Geometric augmentation on numpy arrays whose last 2 or 3 axes are spatial.

Every function applies the same transform to all arrays given, so images, labels and pseudo-label
stacks stay aligned. Randomness comes from a ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def draw_transform(
    rng: np.random.Generator, ndim: int, flip_axes: Sequence[int], rot90: bool
) -> tuple[int, tuple[int, ...]]:
    """Draw (k, flips): k quarter turns in the first two spatial axes (xy for 3D, the slice plane
    for 2D) and the spatial axes (0-based among the last ``ndim``) to flip."""
    k = int(rng.integers(4)) if rot90 else 0
    flips = tuple(int(a) for a in flip_axes if a < ndim and rng.random() < 0.5)
    return k, flips


def crop_shape_for(patch: Sequence[int], k: int) -> tuple[int, ...]:
    """The crop to take so that after ``k`` quarter turns it has shape ``patch``."""
    patch = tuple(int(p) for p in patch)
    if k % 2 == 1:
        return (patch[1], patch[0], *patch[2:])
    return patch


def apply_transform(array: np.ndarray, ndim: int, k: int, flips: Sequence[int]) -> np.ndarray:
    """Rotate by ``k`` quarter turns in spatial axes (0, 1), then flip ``flips``; returns a
    contiguous copy. Leading (channel) axes are left alone."""
    lead = array.ndim - ndim
    out = np.rot90(array, k, axes=(lead, lead + 1)) if k % 4 else array
    for axis in flips:
        out = np.flip(out, axis=lead + axis)
    return np.ascontiguousarray(out)


def draw_scale(rng: np.random.Generator, scale_range: Sequence[float], prob: float) -> float:
    """A zoom factor: uniform in ``scale_range`` with probability ``prob``, else 1 (no draw at
    all where the range is (1, 1), so samplers without scaling keep their draws)."""
    lo, hi = float(scale_range[0]), float(scale_range[1])
    if lo == hi == 1.0 or rng.random() >= prob:
        return 1.0
    return float(rng.uniform(lo, hi))


def scaled_shape(shape: Sequence[int], scale: float) -> tuple[int, ...]:
    """The crop whose resize to ``shape`` zooms by ``scale`` (> 1 zooms in: a smaller crop)."""
    return tuple(max(1, round(int(s) / scale)) for s in shape)


def resize(array: np.ndarray, ndim: int, shape: Sequence[int]) -> np.ndarray:
    """``array`` (leading channel axes allowed) resized on its last ``ndim`` axes to ``shape``
    with MONAI's Resize: (bi/tri)linear for floating arrays, nearest for label maps (so the
    ignore value and the class values survive)."""
    from monai.transforms import Resize

    if tuple(array.shape[-ndim:]) == tuple(shape):
        return array
    floating = np.issubdtype(array.dtype, np.floating)
    mode = ("bilinear" if ndim == 2 else "trilinear") if floating else "nearest"
    lead = array.shape[:-ndim]
    flat = array.reshape(-1, *array.shape[-ndim:])
    kwargs = {"align_corners": False} if floating else {}
    out = Resize(tuple(int(s) for s in shape), mode=mode, anti_aliasing=False, **kwargs)(
        flat.astype(np.float32, copy=False)
    )
    out = np.asarray(out)
    if not floating:
        out = np.rint(out)
    return out.astype(array.dtype, copy=False).reshape(*lead, *shape)


def augment_intensity(
    image: np.ndarray, rng: np.random.Generator, scale: float, noise_std: float, prob: float
) -> np.ndarray:
    """MONAI's RandScaleIntensity (``image x (1 + U(-scale, scale))``) and RandGaussianNoise
    (std drawn in [0, ``noise_std``], z-scored units), each with probability ``prob``, seeded
    from ``rng`` so a sample depends only on the sampler's draw. No draw where both are 0."""
    from monai.transforms import RandGaussianNoise, RandScaleIntensity

    if scale > 0 and rng.random() < prob:
        t = RandScaleIntensity(factors=scale, prob=1.0)
        t.set_random_state(seed=int(rng.integers(2**31)))
        image = np.asarray(t(image)).astype(np.float32, copy=False)
    if noise_std > 0 and rng.random() < prob:
        t = RandGaussianNoise(prob=1.0, mean=0.0, std=noise_std, sample_std=True)
        t.set_random_state(seed=int(rng.integers(2**31)))
        image = np.asarray(t(image)).astype(np.float32, copy=False)
    return image
