"""Annotation in rounds: choose the next slices given those already annotated and a trained model.

Per plane of each volume, with S0 the slices already annotated (every voxel labelled), sim the
clipped cosine similarity of the slice features and u_i the model's mean voxel uncertainty on
slice i (:mod:`sparseseg.uncertainty`), the next K slices maximise greedily

    G(S) = (1 - w) * (F(S0 + S) - F(S0)) / g1  +  w * sum_{i in S} u_i / u_max

g1: the largest single-slice gain F(S0 + {i}) - F(S0) over candidates (gains only shrink, so each
normalised gain lies in [0, 1]); u_max: the largest candidate uncertainty. G is the sum of a
monotone submodular and a modular function, so greedy keeps its 1 - 1/e guarantee. w = 0 is
representative selection conditioned on S0; w = 1 ranks by uncertainty alone. Ties go to the
lowest index; S0 is never re-picked. Each choice records its gain, its uncertainty and its score
(1 - w) gain / g1 + w u_i / u_max.

With a total budget of T new slices, :func:`allocate` shares them between volumes and planes:
see its docstring (and docs/selection.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from sparseseg.data.planes import to_slices
from sparseseg.selection.facility import cosine_similarity, greedy

DEFAULT_WEIGHT = 0.5  # w: the weight of the model's uncertainty against conditioned coverage


@dataclass(frozen=True)
class RoundResult:
    """The next slices of one plane: ``order`` (k,) int64 in priority order; per choice its
    facility-location ``gains`` given S0 and the earlier choices, its ``uncertainty`` and its
    ``scores``; ``value`` F(S0 + S); ``initial_value`` F(S0)."""

    order: np.ndarray
    gains: np.ndarray
    uncertainty: np.ndarray
    scores: np.ndarray
    value: float
    initial_value: float


def annotated_slices(label: np.ndarray, ignore_value: int | None, plane: str) -> np.ndarray:
    """(m,) int64: the slices of ``plane`` whose every voxel of ``label`` (X, Y, Z) is labelled
    (not ``ignore_value``). With no ignore label every slice counts as annotated."""
    slices = to_slices(np.asarray(label), plane)
    if ignore_value is None:
        return np.arange(slices.shape[0], dtype=np.int64)
    done = (slices != ignore_value).reshape(slices.shape[0], -1).all(axis=1)
    return np.flatnonzero(done).astype(np.int64)


def round_greedy(
    sim: np.ndarray,
    annotated: Sequence[int],
    uncertainty: np.ndarray,
    count: int,
    weight: float = DEFAULT_WEIGHT,
) -> RoundResult:
    """The next ``count`` slices of one plane maximising G (module docstring) from S0 =
    ``annotated``. ``sim`` (n, n) non-negative similarities; ``uncertainty`` (n,) >= 0."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"uncertainty weight must be in [0, 1], got {weight}")
    sim = np.asarray(sim, dtype=np.float64)
    n = sim.shape[0]
    u = np.asarray(uncertainty, dtype=np.float64).reshape(-1)
    if u.shape != (n,) or not np.isfinite(u).all() or (u < 0).any():
        raise ValueError(f"need {n} finite non-negative uncertainties, got shape {u.shape}")
    start = np.asarray(annotated, dtype=np.int64).reshape(-1)
    cur = np.max(sim[start], axis=0) if start.size else np.zeros(n)
    candidates = np.setdiff1d(np.arange(n), start)
    first = np.maximum(sim[candidates] - cur, 0.0).sum(axis=1) if candidates.size else []
    g1 = float(np.max(first)) if len(first) else 0.0
    u_max = float(u[candidates].max()) if candidates.size else 0.0
    gain_weight = (1.0 - weight) / g1 if g1 > 0 else 0.0
    bonus = weight * u / u_max if u_max > 0 else np.zeros(n)
    result = greedy(sim, count, initial=start, gain_weight=gain_weight, bonus=bonus)
    scores = gain_weight * result.gains + bonus[result.order]
    return RoundResult(
        result.order,
        result.gains,
        u[result.order],
        scores,
        result.value,
        float(cur.sum()),
    )


def round_indices(
    features: np.ndarray,
    annotated: Sequence[int],
    uncertainty: np.ndarray,
    count: int,
    weight: float = DEFAULT_WEIGHT,
) -> RoundResult:
    """:func:`round_greedy` on the clipped cosine similarity of slice features (N, D)."""
    return round_greedy(cosine_similarity(features), annotated, uncertainty, count, weight)


def allocate(
    total: int,
    weights: Sequence[float],
    capacity: np.ndarray,
    sizes: np.ndarray | None = None,
) -> np.ndarray:
    """Share ``total`` new slices between V volumes and P planes; (V, P) int64.

    ``weights`` (V,): each volume's mean uncertainty; ``capacity`` (V, P): slices still
    unannotated; ``sizes`` (V, P): slices per plane (default: ``capacity``). The rule:

    1. One slice to every (volume, plane) with a free slice, if ``total`` allows; otherwise one
       each to the ``total`` pairs of the most uncertain volumes (then case order, plane order).
    2. Each remaining slice, one at a time, to the volume furthest below its share
       ``total * w_v / sum(w)`` (largest ``share - given``; ties: lower index) among volumes with
       a free slice; within it to the plane with the fewest slices given per slice it has
       (``given / size``; ties: plane order) among planes with a free slice. Uniform shares when
       every weight is 0.

    Deterministic. ``total`` beyond the free slices is a ValueError.
    """
    cap = np.asarray(capacity, dtype=np.int64)
    size = cap if sizes is None else np.asarray(sizes, dtype=np.int64)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if cap.ndim != 2 or w.shape != (cap.shape[0],) or size.shape != cap.shape:
        raise ValueError("weights (V,), capacity (V, P) and sizes (V, P) must agree")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("volume weights must be finite and non-negative")
    if total < 0 or total > cap.sum():
        raise ValueError(f"cannot place {total} new slices: {int(cap.sum())} are unannotated")
    out = np.zeros_like(cap)
    open_pairs = [(v, p) for v in range(cap.shape[0]) for p in range(cap.shape[1]) if cap[v, p]]
    if total < len(open_pairs):
        open_pairs.sort(key=lambda vp: (-w[vp[0]], vp[0], vp[1]))
        for v, p in open_pairs[:total]:
            out[v, p] = 1
        return out
    for v, p in open_pairs:
        out[v, p] = 1
    share = total * (w / w.sum() if w.sum() > 0 else np.full(w.shape, 1.0 / w.size))
    for _ in range(total - len(open_pairs)):
        free = (cap - out).sum(axis=1) > 0
        deficit = np.where(free, share - out.sum(axis=1), -np.inf)
        v = int(np.argmax(deficit))
        ratio = np.where(cap[v] > out[v], out[v] / np.maximum(size[v], 1), np.inf)
        p = int(np.argmin(ratio))
        out[v, p] += 1
    return out


def volume_uncertainty(voxels: np.ndarray, label: np.ndarray, ignore_value: int | None) -> float:
    """Mean voxel uncertainty (X, Y, Z) over the unannotated voxels of ``label`` (0 if none)."""
    free = np.ones(label.shape, bool) if ignore_value is None else label == ignore_value
    return float(voxels[free].mean()) if free.any() else 0.0


def round_counts(
    num_slices: Mapping[str, int], annotated: Mapping[str, Sequence[int]], per_plane: Mapping
) -> dict[str, int]:
    """New slices per plane: the asked count, at most the plane's unannotated slices."""
    return {p: min(int(per_plane[p]), n - len(annotated[p])) for p, n in num_slices.items()}
