"""The dataset fingerprint the plan is made from (nnU-Net's idea, kept small).

:func:`fingerprint_arrays` is a pure function of (image, label, spacing) triples;
:func:`fingerprint` reads them from a :class:`sparseseg.data.layout.Dataset`. With sparse labels
only annotated voxels (label != ignore) count for the intensity and foreground statistics.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

# Voxels drawn per case for the intensity statistics (nnU-Net draws 10k foreground voxels).
INTENSITY_SAMPLES = 10_000


def class_centroids(label: np.ndarray, num_classes: int) -> np.ndarray:
    """Centroids (C - 1, 3) in voxels of the foreground classes 1..C-1 in ``label`` (X, Y, Z);
    NaN for a class the label does not show. Unannotated voxels (the ignore value, >= C) count
    for no class."""
    with np.errstate(invalid="ignore", divide="ignore"):  # an absent class: 0 / 0
        found = ndimage.center_of_mass(label > 0, label, range(1, num_classes))
    return np.array(found, dtype=float).reshape(num_classes - 1, label.ndim)


def class_order(centroids: np.ndarray) -> list[float] | None:
    """Per axis, the share of (case, class pair) comparisons in which two foreground classes lie
    in their majority order along that axis: 1.0 where every case shows the same layout (for
    example anterior before posterior), about 0.5 where the order is arbitrary. None with fewer
    than two foreground classes seen together in any case. ``centroids``: (cases, C - 1, 3),
    :func:`class_centroids` of each case."""
    i, j = np.triu_indices(centroids.shape[1], 1)
    signs = np.sign(centroids[:, i] - centroids[:, j])  # (cases, pairs, axes); NaN: not both
    seen = int((~np.isnan(signs).any(axis=-1)).sum())
    if not seen:
        return None
    agree = np.maximum((signs > 0).sum(axis=0), (signs < 0).sum(axis=0)).sum(axis=0)
    return [float(v) for v in agree / seen]


def fingerprint_arrays(
    cases: Iterable[tuple[np.ndarray, np.ndarray, Sequence[float]]],
    class_names: Sequence[str],
    ignore_index: int | None = None,
    seed: int = 0,
) -> dict:
    """Fingerprint of (image (X, Y, Z) or (Cin, X, Y, Z), label (X, Y, Z), spacing mm) cases.

    Returns a JSON-able dict: 'cases', 'num_classes', 'class_names', per-case 'shapes' and
    'spacings', 'median_shape', 'median_spacing', 'anisotropy' (largest / smallest median
    spacing), 'thick_axis' (the axis with the largest spacing when anisotropy >= 2, else None),
    'intensity' (mean, std, 0.5 / 99.5 percentiles of the first channel over annotated
    foreground voxels, or all annotated voxels when there is no foreground), 'annotated_fraction'
    (labelled voxels / all voxels), 'class_fractions' (share of each class among the annotated
    voxels), 'foreground_fraction' (share of the annotated voxels that are not class 0) and
    'class_order' (:func:`class_order`: per axis, how consistently the foreground classes keep
    one layout across cases; None with one foreground class).
    """
    rng = np.random.default_rng(seed)
    shapes, spacings, samples, centroids = [], [], [], []
    counts = np.zeros(len(class_names), dtype=np.int64)
    annotated = total = 0
    for image, label, spacing in cases:
        image = np.asarray(image)
        first = image if image.ndim == 3 else image[0]
        shapes.append([int(n) for n in label.shape])
        spacings.append([float(s) for s in spacing])
        mask = label != ignore_index if ignore_index is not None else np.ones(label.shape, bool)
        values = label[mask].astype(np.int64)
        counts += np.bincount(values, minlength=len(class_names))[: len(class_names)]
        annotated += int(mask.sum())
        total += int(label.size)
        centroids.append(class_centroids(label, len(class_names)))
        pool = mask & (label > 0)
        if not pool.any():
            pool = mask
        flat = first[pool].astype(np.float64)
        if flat.size > INTENSITY_SAMPLES:
            flat = rng.choice(flat, INTENSITY_SAMPLES, replace=False)
        samples.append(flat)
    if not shapes:
        raise ValueError("no training case to fingerprint")
    median_spacing = [float(v) for v in np.median(np.array(spacings), axis=0)]
    median_shape = [int(round(v)) for v in np.median(np.array(shapes), axis=0)]
    anisotropy = max(median_spacing) / min(median_spacing)
    values = np.concatenate(samples) if samples else np.zeros(1)
    values = values if values.size else np.zeros(1)
    class_fractions = counts / max(int(counts.sum()), 1)
    return {
        "cases": len(shapes),
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "shapes": shapes,
        "spacings": spacings,
        "median_shape": median_shape,
        "median_spacing": median_spacing,
        "spacing_spread": [
            [float(v) for v in np.min(np.array(spacings), axis=0)],
            [float(v) for v in np.max(np.array(spacings), axis=0)],
        ],
        "anisotropy": float(anisotropy),
        "thick_axis": int(np.argmax(median_spacing)) if anisotropy >= 2 else None,
        "intensity": {
            "mean": float(values.mean()),
            "std": float(values.std()),
            "p00_5": float(np.percentile(values, 0.5)),
            "p99_5": float(np.percentile(values, 99.5)),
        },
        "annotated_fraction": annotated / max(total, 1),
        "class_fractions": [float(v) for v in class_fractions],
        "foreground_fraction": float(class_fractions[1:].sum()),
        "class_order": class_order(np.array(centroids)),
    }


def fingerprint(dataset, split: str = "Tr") -> dict:
    """:func:`fingerprint_arrays` of the training images and labels of a Dataset (each case
    read once; the dataset's ``ignore`` label marks unannotated voxels)."""

    def cases():
        for case in dataset.cases(split):
            image, label = dataset.load_pair(case, split)
            yield image.array, label.array, image.spacing

    fp = fingerprint_arrays(cases(), dataset.class_names, dataset.ignore_value)
    fp["dataset"] = dataset.name
    return fp
