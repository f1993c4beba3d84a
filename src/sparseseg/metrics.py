"""Segmentation metrics on label arrays: Dice, surface distances, HVSMR score, EM Rand F-score.

All functions are pure numpy on label or mask arrays of shape (X, Y, Z) (any ndim for the mask
functions); distances are in mm, from the voxel ``spacing`` (mm per array axis).

Definitions
-----------
- **Dice** of one class: 2|P & G| / (|P| + |G|).
- **Surface** of a mask: its voxels with at least one face neighbour (6-connectivity in 3D) outside
  the mask; outside the array counts as outside. This is MONAI's ``get_mask_edges`` (binary
  erosion, then XOR).
- **Directed surface distances** P->G: for each surface voxel of P, the Euclidean distance (mm)
  to the nearest surface voxel of G.
- **ADB** (average distance of boundaries) = mean symmetric surface distance: the mean over the
  pooled P->G and G->P distances (MONAI ``compute_average_surface_distance(symmetric=True)``).
- **Hausdorff** = the maximum of the pooled P->G and G->P distances (MONAI
  ``compute_hausdorff_distance``, symmetric, no percentile).
- **HVSMR overall score** = sum over the scored (foreground) classes of
  Dice/2 - ADB/4 - Hausdorff/30.
- **Rand F-score** (EM) = 1 - adapted Rand error (scikit-image, alpha 0.5). Segments are the 2D
  connected components (4-connectivity) of the cell interior in each xy slice ``[:, :, z]``. The
  per-slice labelings are stacked with ids unique across slices and scored as one pooled volume,
  so each slice weighs by its number of interior pixel pairs. Ground-truth non-interior voxels
  are ignored; predicted non-interior voxels inside ground-truth cells keep the single label 0
  (scikit-image's convention), so predicted membrane inside a cell counts as an error.

Empty classes
-------------
- Both P and G empty: Dice 1, ADB 0, Hausdorff 0 (nothing to get wrong).
- Exactly one empty: Dice 0, ADB and Hausdorff NaN (undefined; JSON ``null``). Means over cases
  skip NaN and report how many values they used (``n``) and skipped (``n_nan``).
- A NaN term makes the HVSMR score of that case NaN.
- Rand F: no interior in either volume gives 1; ground truth without interior but a prediction
  with some gives NaN.

Surface distances are exact Euclidean distances, computed on the union bounding box of P and G
(which holds every surface voxel): a search over voxel offsets in order of length resolves the
near voxels, a k-d tree or an EDT the rest (see :func:`directed_distances`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

METRIC_KEYS = ("dice", "adb", "hausdorff")


# Overlap ----------------------------------------------------------------------------------------
def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of two boolean masks of the same shape; 1.0 when both are empty."""
    pred, gt = _as_masks(pred, gt)
    total = int(pred.sum()) + int(gt.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, gt).sum()) / total


# Surface distances -----------------------------------------------------------------------------
def surface(mask: np.ndarray) -> np.ndarray:
    """Boolean surface of ``mask``: voxels of the mask with a face neighbour outside it (outside
    the array counts as outside). Same as ``mask ^ binary_erosion(mask)`` with the face-connected
    structure, computed with shifted views."""
    mask = np.asarray(mask, dtype=bool)
    padded = np.pad(mask, 1)
    inner = mask.copy()
    for axis in range(mask.ndim):
        for shifted in (slice(0, -2), slice(2, None)):
            view = [slice(1, -1)] * mask.ndim
            view[axis] = shifted
            inner &= padded[tuple(view)]
    return mask & ~inner


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """Slices of the bounding box of a non-empty ``mask``."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        box.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return tuple(box)


def surface_distances(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm: (pred surface -> gt surface, gt surface -> pred surface).

    Both masks must be non-empty. Each returned array has one value per surface voxel, in the
    C order of the voxels.
    """
    pred, gt = _as_masks(pred, gt)
    if not pred.any() or not gt.any():
        raise ValueError("surface distances need two non-empty masks")
    spacing = _check_spacing(spacing, pred.ndim)
    # Every surface voxel lies in the union's bounding box, so distances there are exact.
    box = _bounding_box(pred | gt)
    surf_p, surf_g = surface(pred[box]), surface(gt[box])
    return directed_distances(surf_p, surf_g, spacing), directed_distances(surf_g, surf_p, spacing)


def _offsets_within(spacing: tuple[float, ...], radius: float, limit: int):
    """Integer voxel offsets with 0 < length <= radius (mm), sorted by length; shrinks the radius
    until there are at most ``limit`` of them. Returns (offsets (K, ndim), lengths (K,), reach)."""
    while True:
        reach = [int(radius // s) for s in spacing]
        grids = np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij")
        offsets = np.stack([g.ravel() for g in grids], axis=1)
        lengths = np.sqrt(((offsets * np.asarray(spacing)) ** 2).sum(axis=1))
        keep = (lengths > 0) & (lengths <= radius)
        if keep.sum() <= limit:
            order = np.argsort(lengths[keep], kind="stable")
            return offsets[keep][order], lengths[keep][order], reach
        radius *= 0.8


def directed_distances(
    surf_a: np.ndarray, surf_b: np.ndarray, spacing: Sequence[float], method: str = "auto"
) -> np.ndarray:
    """Distance (mm) from each True voxel of ``surf_a`` to the nearest True voxel of ``surf_b``.

    Exact Euclidean distances, in the C order of ``surf_a``'s True voxels. ``method``: ``"edt"``
    is one ``scipy.ndimage.distance_transform_edt`` of ``~surf_b`` over the whole array;
    ``"auto"`` (much faster when the surfaces are close, as they are for any sensible
    prediction) tests voxel offsets in order of increasing length, up to a few voxels, so the
    first hit is the nearest, and finishes any voxel still unresolved with a k-d tree over
    ``surf_b`` (few left) or the EDT (many left).
    """
    surf_a, surf_b = _as_masks(surf_a, surf_b)
    spacing = _check_spacing(spacing, surf_a.ndim)
    if not surf_b.any():
        raise ValueError("the target surface is empty")
    if method == "edt":
        return ndimage.distance_transform_edt(~surf_b, sampling=spacing)[surf_a]
    if method != "auto":
        raise ValueError(f"unknown method {method!r}")
    radius = max(2 * max(spacing), 5 * min(spacing))
    offsets, lengths, reach = _offsets_within(spacing, radius, limit=20000)
    pads = [(r, r) for r in reach]
    padded = np.pad(surf_b, pads)
    strides = np.asarray(padded.strides, dtype=np.int64) // padded.itemsize
    flat_b, flat_offsets = padded.ravel(), offsets @ strides
    index = np.flatnonzero(np.pad(surf_a, pads))  # surf_a's voxels in padded flat indices
    dist = np.zeros(len(index), dtype=np.float64)
    unresolved = ~flat_b[index]
    pos, index = np.flatnonzero(unresolved), index[unresolved]
    # Offsets in chunks of growing size, all unresolved voxels at once. Stop when the lookups
    # cost more than finishing with the exhaustive methods (about 16 lookups per voxel), or when
    # a chunk resolved under half of a crowd of voxels that the EDT will have to finish anyway.
    start, chunk, budget = 0, 8, 16 * len(dist)
    while pos.size and start < len(flat_offsets) and budget > 0:
        before = len(pos)
        m = max(1, min(chunk, len(flat_offsets) - start, 4_000_000 // pos.size))
        hits = flat_b[index[:, None] + flat_offsets[None, start : start + m]]
        found = hits.any(axis=1)
        if found.any():
            dist[pos[found]] = lengths[start + hits[found].argmax(axis=1)]
            pos, index = pos[~found], index[~found]
        budget -= hits.size
        start, chunk = start + m, chunk * 4
        if 50 * len(pos) > surf_b.size and 2 * len(pos) > before:
            break
    if pos.size:  # no surf_b voxel among the offsets tested: exact search over all of surf_b
        points = np.stack(np.unravel_index(index, padded.shape), axis=1) - np.asarray(reach)
        if 50 * len(pos) > surf_b.size:  # many left: one EDT beats the tree's queries
            edt = ndimage.distance_transform_edt(~surf_b, sampling=spacing)
            dist[pos] = edt[tuple(points.T)]
        else:
            from scipy.spatial import cKDTree

            scale = np.asarray(spacing)
            tree = cKDTree(np.argwhere(surf_b) * scale, balanced_tree=False, compact_nodes=False)
            dist[pos] = tree.query(points * scale)[0]
    return dist


def surface_metrics(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]
) -> tuple[float, float]:
    """(ADB, Hausdorff) in mm of two masks, with the empty-mask rules in the module docstring."""
    pred, gt = _as_masks(pred, gt)
    has_p, has_g = bool(pred.any()), bool(gt.any())
    if not has_p and not has_g:
        return 0.0, 0.0
    if has_p != has_g:
        return math.nan, math.nan
    d_pg, d_gp = surface_distances(pred, gt, spacing)
    pooled = np.concatenate([d_pg, d_gp])
    return float(pooled.mean()), float(pooled.max())


def average_surface_distance(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> float:
    """ADB: mean symmetric surface distance (mm)."""
    return surface_metrics(pred, gt, spacing)[0]


def hausdorff_distance(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> float:
    """Maximum symmetric surface distance (mm)."""
    return surface_metrics(pred, gt, spacing)[1]


# Per-class and overall scores -------------------------------------------------------------------
def class_metrics(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], value: int
) -> dict[str, float]:
    """{'dice', 'adb', 'hausdorff'} of the class with label ``value`` in two label arrays."""
    p, g = pred == value, gt == value
    adb, hd = surface_metrics(p, g, spacing)
    return {"dice": dice(p, g), "adb": adb, "hausdorff": hd}


def hvsmr_score(per_class: Mapping[str, Mapping[str, float]]) -> float:
    """Sum over classes of Dice/2 - ADB/4 - Hausdorff/30; NaN if any term is NaN."""
    return float(
        sum(m["dice"] / 2 - m["adb"] / 4 - m["hausdorff"] / 30 for m in per_class.values())
    )


# EM Rand F-score --------------------------------------------------------------------------------
def slice_components(mask: np.ndarray) -> np.ndarray:
    """Label each xy slice ``[:, :, z]``'s 4-connected components of ``mask`` (X, Y, Z).

    Returns int64 (X, Y, Z) with 0 outside the mask and ids unique across all slices.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"expected a 3D mask (X, Y, Z), got shape {mask.shape}")
    out = np.zeros(mask.shape, dtype=np.int64)
    structure = ndimage.generate_binary_structure(2, 1)
    offset = 0
    for z in range(mask.shape[2]):
        labels, n = ndimage.label(mask[:, :, z], structure=structure)
        labels = labels.astype(np.int64)
        labels[labels > 0] += offset
        out[:, :, z] = labels
        offset += n
    return out


def rand_scores(pred: np.ndarray, gt: np.ndarray, interior: int) -> dict[str, float]:
    """Rand F-score, split and merge scores of two label arrays (X, Y, Z) for EM.

    ``interior`` is the label value of the cell interior. Returns {'rand_f', 'rand_split',
    'rand_merge'}: split = sum p_ij^2 / sum over true segments t^2 (1 when nothing true is split),
    merge = sum p_ij^2 / sum over predicted segments s^2 (1 when nothing is merged), over pairs of
    ground-truth interior voxels; rand_f is their harmonic mean (1 - adapted Rand error).
    """
    from skimage.metrics import adapted_rand_error

    pred_in, gt_in = _as_masks(pred == interior, gt == interior)
    if not gt_in.any():
        value = 1.0 if not pred_in.any() else math.nan
        return {"rand_f": value, "rand_split": value, "rand_merge": value}
    true_seg, test_seg = slice_components(gt_in), slice_components(pred_in)
    are, prec, rec = adapted_rand_error(true_seg, test_seg, alpha=0.5)
    # scikit-image's "precision" divides by the true segments' sizes (split score) and its
    # "recall" by the test segments' sizes (merge score).
    return {"rand_f": float(1.0 - are), "rand_split": float(prec), "rand_merge": float(rec)}


def rand_f_score(pred: np.ndarray, gt: np.ndarray, interior: int) -> float:
    """1 - adapted Rand error (alpha 0.5) of per-slice interior components; see module docs."""
    return rand_scores(pred, gt, interior)["rand_f"]


# One case, many cases ---------------------------------------------------------------------------
def case_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float],
    class_values: Mapping[str, int],
    rand_f_interior: int | None = None,
) -> dict:
    """All metrics of one case.

    ``pred`` and ``gt`` are integer label arrays (X, Y, Z); ``spacing`` is mm per axis;
    ``class_values`` maps the names of the classes to score (normally the foreground) to their
    label values. Returns ``{"classes": {name: {"dice", "adb", "hausdorff"}}, "hvsmr_score": x}``
    plus ``"rand_f"``, ``"rand_split"``, ``"rand_merge"`` when ``rand_f_interior`` is given.
    Undefined values are NaN.
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    spacing = _check_spacing(spacing, gt.ndim)
    per_class = {
        name: class_metrics(pred, gt, spacing, int(value)) for name, value in class_values.items()
    }
    out: dict = {"classes": per_class, "hvsmr_score": hvsmr_score(per_class)}
    if rand_f_interior is not None:
        out.update(rand_scores(pred, gt, int(rand_f_interior)))
    return out


def _stats(values: Iterable[float]) -> dict[str, float | int]:
    """Mean and population std of the finite values, with counts used (n) and skipped (n_nan)."""
    arr = np.asarray(list(values), dtype=np.float64)
    good = arr[np.isfinite(arr)]
    mean = float(good.mean()) if good.size else math.nan
    std = float(good.std()) if good.size else math.nan
    return {"mean": mean, "std": std, "n": int(good.size), "n_nan": int(arr.size - good.size)}


def summarize(cases: Sequence[Mapping]) -> dict:
    """Mean and std over cases of every metric in :func:`case_metrics` outputs.

    Returns ``{"num_cases": n, "classes": {name: {metric: stats}}, "hvsmr_score": stats}`` and
    ``"rand_f"``/``"rand_split"``/``"rand_merge"`` stats where the cases have them; ``stats`` is
    ``{"mean", "std", "n", "n_nan"}`` (population std over the n finite values; NaN if n = 0).
    """
    names: list[str] = []
    for case in cases:
        names += [n for n in case["classes"] if n not in names]
    summary: dict = {"num_cases": len(cases), "classes": {}}
    for name in names:
        rows = [c["classes"][name] for c in cases if name in c["classes"]]
        summary["classes"][name] = {k: _stats(r[k] for r in rows) for k in METRIC_KEYS}
    summary["hvsmr_score"] = _stats(c["hvsmr_score"] for c in cases)
    for key in ("rand_f", "rand_split", "rand_merge"):
        if any(key in c for c in cases):
            summary[key] = _stats(c[key] for c in cases if key in c)
    return summary


def json_safe(obj):
    """A copy of ``obj`` with NaN/inf floats as None and numpy scalars as Python numbers."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# Helpers ----------------------------------------------------------------------------------------
def _as_masks(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {gt.shape}")
    return pred, gt


def _check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim or not all(s > 0 and math.isfinite(s) for s in spacing):
        raise ValueError(f"spacing must be {ndim} positive numbers, got {spacing}")
    return spacing
