"""Budgets and the three slice-choice strategies: representative (ra), equal-interval (eia), random.

Each strategy turns one plane of one volume (N slices) into K chosen slice indices in priority
order. The budget ``s_k`` chooses K = max(1, floor(N / k)) slices per plane per volume.
"""

from __future__ import annotations

import math

import numpy as np

from sparseseg.errors import InputError
from sparseseg.selection.facility import GreedyResult, cosine_similarity, lazy_greedy

STRATEGIES = ("ra", "eia", "random")


def check_budget(k: float) -> float:
    """Validate the budget ``s_k`` (one slice in k); k < 1 would ask for more slices than exist."""
    k = float(k)
    if not math.isfinite(k) or k < 1:
        raise InputError(
            f"budget s_k needs k >= 1 (one slice in every k); k = {k:g} would choose more "
            "slices than the volume has"
        )
    return k


def budget_count(num_slices: int, k: float) -> int:
    """K = max(1, floor(N / k)): how many of ``num_slices`` slices the budget ``s_k`` chooses."""
    k = check_budget(k)
    if num_slices < 1:
        raise InputError("a plane with no slices has nothing to choose from")
    count = max(1, math.floor(num_slices / k + 1e-9))  # 1e-9: 40 / (40 / 8) is 8, not 7.999
    if count > num_slices:
        raise InputError(f"budget s_{k:g} asks for {count} of {num_slices} slices")
    return count


def eia_indices(num_slices: int, count: int) -> np.ndarray:
    """Equal-interval choice: ``count`` slices evenly spread, each centred in its interval.

    Slice i of the choice is floor((i + 1/2) N / K): for N = 40, K = 4 that is 5, 15, 25, 35.
    Deterministic; the indices are distinct and ascending (the priority order).
    """
    _check_count(num_slices, count)
    return np.floor((np.arange(count) + 0.5) * num_slices / count).astype(np.int64)


def random_indices(num_slices: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` distinct slices drawn uniformly by ``rng``, in the order drawn."""
    _check_count(num_slices, count)
    return rng.permutation(num_slices)[:count].astype(np.int64)


def representative_indices(features: np.ndarray, count: int) -> GreedyResult:
    """Representative choice: greedy facility location on the clipped cosine similarity of the
    slice features (N, D); the result holds the order, the gains and F(S)."""
    _check_count(len(features), count)
    return lazy_greedy(cosine_similarity(features), count)


def _check_count(num_slices: int, count: int) -> None:
    if not 1 <= count <= num_slices:
        raise InputError(f"cannot choose {count} of {num_slices} slices")
