"""The patch samplers that feed :func:`sparseseg.training.loop.fit`.

Both samplers are callables ``sampler(step) -> batch`` whose draw depends only on ``(seed, step)``,
so a resumed run sees the same batches as an unbroken one.

Cases are dicts of numpy arrays sharing the spatial shape (X, Y, Z). Floating arrays (images,
A(Y) maps) may carry a leading channel axis and are padded with 0 (the mean after z-scoring);
integer arrays (labels, stacks of pseudo-labels) are padded with ``ignore_index`` so padding never
supervises. Batches hold float32 tensors (B, C, *patch) for floating arrays (a channel axis is added
when absent) and int64 tensors (B, [T,] *patch) for integer arrays, under the same keys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from sparseseg.data.planes import PLANES, plane_transforms, to_slices, with_neighbours
from sparseseg.training.augment import (
    apply_transform,
    augment_intensity,
    crop_shape_for,
    draw_scale,
    draw_transform,
    resize,
    scaled_shape,
)

Case = Mapping[str, np.ndarray]


def crop_padded(
    array: np.ndarray, start: Sequence[int], shape: Sequence[int], pad_value: float | int
) -> np.ndarray:
    """The region ``[start, start + shape)`` of the last ``len(shape)`` axes of ``array``; parts
    outside the array are filled with ``pad_value``. ``start`` may be negative."""
    nd = len(shape)
    lead = array.shape[:-nd]
    out = np.full((*lead, *shape), pad_value, dtype=array.dtype)
    src, dst = [], []
    for s, n, size in zip(start, shape, array.shape[-nd:], strict=True):
        lo, hi = max(s, 0), min(s + n, size)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[(..., *dst)] = array[(..., *src)]
    return out


def crop_start(rng: np.random.Generator, centre: Sequence[int] | None, size, shape) -> list[int]:
    """Crop origin, drawn uniformly per axis among the allowed ones: the crop stays inside the
    volume where the volume is larger than the crop, else the volume lies whole inside the padded
    crop; with a ``centre``, only origins whose crop contains that voxel are allowed. (Drawing the
    centre's place in the crop first and clamping would pile the origins on the extremes: a volume
    smaller than the crop would sit flush against a canvas wall in 3 of 4 draws per axis.)"""
    starts = []
    for i, (n, p) in enumerate(zip(size, shape, strict=True)):
        lo, hi = min(0, n - p), max(0, n - p)
        if centre is not None:
            c = int(centre[i])
            lo, hi = max(lo, c - p + 1), min(hi, c)
        starts.append(int(rng.integers(lo, hi + 1)))
    return starts


def _batch_tensors(items: list[dict[str, np.ndarray]], ndim: int) -> dict[str, torch.Tensor]:
    out = {}
    for key in items[0]:
        arrays = [it[key] for it in items]
        if np.issubdtype(arrays[0].dtype, np.floating):
            if arrays[0].ndim == ndim:
                arrays = [a[None] for a in arrays]
            out[key] = torch.from_numpy(np.stack(arrays).astype(np.float32, copy=False))
        else:
            out[key] = torch.from_numpy(np.stack(arrays).astype(np.int64, copy=False))
    return out


class PatchSampler3D:
    """Random 3D crops with flips and axial 90-degree rotations, favouring annotated voxels.

    With probability ``annotated_fraction`` a crop contains a voxel drawn uniformly from the
    annotated voxels (``cases[i][label_key] != ignore_index``) of the case; otherwise the crop is
    placed uniformly. Cases are drawn uniformly. ``flip_axes`` are spatial axes 0..2 (all three
    for sparse labels, so supervised planes do not sit at fixed positions). Optional zoom (a crop of
    ``patch / s`` resized to ``patch``, s uniform in ``scale_range``; labels nearest, padding
    ``ignore_index``), intensity scaling and Gaussian noise of 'image', each per sample with
    probability ``augment_prob`` (:mod:`sparseseg.training.augment`; none draws when off, so
    the crops are those of a sampler without them).
    """

    def __init__(
        self,
        cases: Sequence[Case],
        patch: Sequence[int],
        batch_size: int,
        *,
        ignore_index: int | None,
        label_key: str = "label",
        annotated_fraction: float = 0.67,
        flip_axes: Sequence[int] = (0, 1, 2),
        rot90_xy: bool = True,
        seed: int = 0,
        max_candidates: int = 100_000,
        scale_range: Sequence[float] = (1.0, 1.0),
        intensity_scale: float = 0.0,
        noise_std: float = 0.0,
        augment_prob: float = 0.2,
    ):
        if not cases:
            raise ValueError("no cases to sample from")
        self.cases = list(cases)
        self.patch = tuple(int(p) for p in patch)
        self.batch_size = int(batch_size)
        self.ignore_index = ignore_index
        self.annotated_fraction = float(annotated_fraction)
        self.flip_axes = tuple(flip_axes)
        self.rot90_xy = rot90_xy
        self.seed = int(seed)
        self.scale_range = tuple(float(v) for v in scale_range)
        self.augment_prob = float(augment_prob)
        self.intensity = (float(intensity_scale), float(noise_std), self.augment_prob)
        rng = np.random.default_rng([self.seed, 2**31 - 1])
        self.candidates: list[np.ndarray] = []
        for case in self.cases:
            label = case.get(label_key)
            if label is None or ignore_index is None:
                self.candidates.append(np.zeros(0, dtype=np.int64))
                continue
            flat = np.flatnonzero(label.reshape(-1) != ignore_index)
            if flat.size > max_candidates:
                flat = np.sort(rng.choice(flat, max_candidates, replace=False))
            self.candidates.append(flat)
        if ignore_index is not None and label_key in self.cases[0]:
            if not any(c.size for c in self.candidates):
                raise ValueError("no annotated voxel in any case")

    def spatial_shape(self, i: int) -> tuple[int, int, int]:
        return tuple(self.cases[i][next(iter(self.cases[i]))].shape[-3:])

    def sample_one(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        i = int(rng.integers(len(self.cases)))
        size = self.spatial_shape(i)
        k, flips = draw_transform(rng, 3, self.flip_axes, self.rot90_xy)
        shape = crop_shape_for(self.patch, k)
        crop = scaled_shape(shape, draw_scale(rng, self.scale_range, self.augment_prob))
        centre = None
        cand = self.candidates[i]
        if cand.size and rng.random() < self.annotated_fraction:
            centre = np.unravel_index(int(cand[rng.integers(cand.size)]), size)
        start = crop_start(rng, centre, size, crop)
        out = {}
        for key, array in self.cases[i].items():
            floating = np.issubdtype(array.dtype, np.floating)
            pad = 0.0 if floating else (self.ignore_index if self.ignore_index is not None else 0)
            region = resize(crop_padded(array, start, crop, pad), 3, shape)
            out[key] = apply_transform(region, 3, k, flips)
        if "image" in out:
            out["image"] = augment_intensity(out["image"], rng, *self.intensity)
        return out

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(step)])
        return _batch_tensors([self.sample_one(rng) for _ in range(self.batch_size)], 3)


class SliceSampler2D:
    """2D training samples from slices of several planes (paper, Step II).

    Each sample draws a case (uniformly), a plane (uniformly among ``planes`` that hold annotation
    in that case), an annotated slice of that plane (probability proportional to its number of
    annotated pixels, so every annotated pixel is equally likely to be chosen) and a crop of
    ``patch`` that, with probability ``annotated_fraction``, contains an annotated pixel; then
    random flips of the slice axes whose volume axes are in ``flip_axes`` and 90-degree
    rotations where both flip (:func:`sparseseg.data.planes.plane_transforms`), and the
    optional zoom, intensity and noise of :class:`PatchSampler3D`. With ``context`` k the image
    holds the k slices on either side as extra channels (Cin x (2k + 1),
    :func:`sparseseg.data.planes.with_neighbours`). Works unchanged on dense labels.
    Batches: 'image' (B, Cin, a, b) float32 and 'label' (B, a, b) int64.
    """

    def __init__(
        self,
        cases: Sequence[Case],
        patch: Sequence[int],
        batch_size: int,
        *,
        ignore_index: int | None,
        planes: Sequence[str] = PLANES,
        annotated_fraction: float = 0.67,
        flip_axes: Sequence[int] = (0, 1, 2),
        rot90: bool = True,
        seed: int = 0,
        scale_range: Sequence[float] = (1.0, 1.0),
        intensity_scale: float = 0.0,
        noise_std: float = 0.0,
        augment_prob: float = 0.2,
        context: int = 0,
    ):
        self.cases = list(cases)
        self.context = int(context)
        self.patch = tuple(int(p) for p in patch)
        self.batch_size = int(batch_size)
        self.ignore_index = ignore_index
        self.annotated_fraction = float(annotated_fraction)
        self.flip_axes = tuple(int(a) for a in flip_axes)
        self.rot90 = rot90
        self.seed = int(seed)
        self.scale_range = tuple(float(v) for v in scale_range)
        self.augment_prob = float(augment_prob)
        self.intensity = (float(intensity_scale), float(noise_std), self.augment_prob)
        # weights[i][plane]: annotated pixels per slice
        self.weights: list[dict[str, np.ndarray]] = []
        for case in self.cases:
            label = case["label"]
            annotated = (
                np.ones(label.shape, bool) if ignore_index is None else label != ignore_index
            )
            per_plane = {}
            for plane in planes:
                counts = to_slices(annotated, plane).sum(axis=(-2, -1)).astype(np.float64)
                if counts.sum() > 0:
                    per_plane[plane] = counts / counts.sum()
            self.weights.append(per_plane)
        self.usable = [i for i, w in enumerate(self.weights) if w]
        if not self.usable:
            raise ValueError("no annotated slice in any case")

    def sample_one(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        i = self.usable[int(rng.integers(len(self.usable)))]
        case, weights = self.cases[i], self.weights[i]
        planes = sorted(weights)
        plane = planes[int(rng.integers(len(planes)))]
        n = int(rng.choice(len(weights[plane]), p=weights[plane]))
        label = to_slices(case["label"], plane)[n]
        if self.context:
            stack = to_slices(case["image"], plane)
            image = with_neighbours(stack[None] if stack.ndim == 3 else stack, n, self.context)
        else:
            image = to_slices(case["image"], plane)[..., n, :, :]
        k, flips = draw_transform(rng, 2, *plane_transforms(plane, self.flip_axes, self.rot90))
        shape = crop_shape_for(self.patch, k)
        crop = scaled_shape(shape, draw_scale(rng, self.scale_range, self.augment_prob))
        centre = None
        if rng.random() < self.annotated_fraction:
            ann = label != self.ignore_index if self.ignore_index is not None else None
            flat = np.flatnonzero(ann) if ann is not None else np.arange(label.size)
            if flat.size:
                centre = np.unravel_index(int(flat[rng.integers(flat.size)]), label.shape)
        start = crop_start(rng, centre, label.shape, crop)
        pad_label = self.ignore_index if self.ignore_index is not None else 0
        image = resize(crop_padded(image, start, crop, 0.0), 2, shape)
        label = resize(crop_padded(label, start, crop, pad_label), 2, shape)
        return {
            "image": augment_intensity(apply_transform(image, 2, k, flips), rng, *self.intensity),
            "label": apply_transform(label, 2, k, flips),
        }

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(step)])
        return _batch_tensors([self.sample_one(rng) for _ in range(self.batch_size)], 2)
