"""Facility-location coverage and its greedy maximisation (paper eqs. 5-8).

For the n slices of one plane of one volume with similarity matrix ``sim`` (n, n), the coverage of
a set S is ``F(S) = sum_j max_{i in S} sim[i, j]``. Similarities are cosines of feature vectors
with negative values clipped to 0, so F is monotone submodular and greedy selection is within
1 - 1/e of the optimum.

Two exact greedy implementations return the same order, the same gains and the same F(S):

- :func:`greedy` evaluates every candidate at every step (O(k n^2)); the reference.
- :func:`lazy_greedy` keeps a priority queue of upper bounds (stale gains) and re-evaluates only
  the top candidate until it stays on top (Minoux's accelerated greedy); the default.

Both compute a gain with the same arithmetic, ``sum_j max(sim[i, j] - cur[j], 0)``, where ``cur``
is the coverage of each slice so far. Each term can only shrink as ``cur`` grows and floating-point
addition is monotone, so a stale gain is an upper bound in floating point too, not only in exact
arithmetic. Ties go to the lowest index in both, so they agree exactly.

Both can start from an initial set S0 (slices already annotated): they then maximise the
conditioned gain F(S0 + S) - F(S0) and never re-pick S0. :func:`greedy` also takes a modular
bonus per item (a model's uncertainty, for annotation rounds: :mod:`sparseseg.selection.rounds`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Elements per block when tightening bounds (1 MB of float64: stays in cache).
CHUNK_ELEMENTS = 1 << 17


@dataclass(frozen=True)
class GreedyResult:
    """The outcome of a greedy selection.

    ``order`` (k,) int64: chosen indices in the order chosen (the annotation priority).
    ``gains`` (k,) float64: the marginal gain F(S + {i}) - F(S) of each choice when it was made.
    ``value``: F(S) of the final set.
    """

    order: np.ndarray
    gains: np.ndarray
    value: float


def cosine_similarity(features: np.ndarray, clip: bool = True) -> np.ndarray:
    """Cosine similarity (n, n) float64 of the rows of ``features`` (n, d), negatives clipped to 0.

    Zero rows (e.g. an empty slice under a contrast-normalised extractor) have no direction: they
    are similar (1) to each other and dissimilar (0) to every other row.
    """
    f = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    norms = np.linalg.norm(f, axis=1)
    zero = norms <= np.finfo(np.float64).tiny
    unit = f / np.where(zero, 1.0, norms)[:, None]
    sim = unit @ unit.T
    np.clip(sim, 0.0 if clip else -1.0, 1.0, out=sim)
    if zero.any():
        sim[np.ix_(zero, zero)] = 1.0
    # Exact symmetry and a unit diagonal, independent of BLAS rounding.
    sim = np.maximum(sim, sim.T)
    np.fill_diagonal(sim, 1.0)
    return sim


def coverage(sim: np.ndarray, selected) -> float:
    """F(S) = sum_j max_{i in S} sim[i, j]; 0 for the empty set."""
    selected = np.asarray(selected, dtype=np.int64)
    if selected.size == 0:
        return 0.0
    return float(np.max(sim[selected], axis=0).sum())


def _check(sim: np.ndarray, k: int, initial=None) -> tuple[np.ndarray, np.ndarray]:
    """The similarity as contiguous float64 and the initial set as distinct int64 indices."""
    sim = np.asarray(sim)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"similarity must be a square matrix, got shape {sim.shape}")
    n = sim.shape[0]
    start = np.asarray([] if initial is None else initial, dtype=np.int64).reshape(-1)
    if start.size and (start.min() < 0 or start.max() >= n or np.unique(start).size != start.size):
        raise ValueError(f"initial set must hold distinct indices in 0..{n - 1}, got {start}")
    if not 0 <= k <= n - start.size:
        raise ValueError(f"cannot choose {k} more of {n} items ({start.size} already chosen)")
    if sim.dtype != np.float64:
        sim = sim.astype(np.float64)
    return np.ascontiguousarray(sim), start


def _initial_coverage(sim: np.ndarray, start: np.ndarray) -> np.ndarray:
    """cur (n,): the coverage of each item by the initial set (zeros for the empty set)."""
    cur = np.zeros(sim.shape[0])
    for i in start:
        np.maximum(cur, sim[i], out=cur)
    return cur


def _row_gains(rows: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """Gains (m,) of the rows (m, n) given the current coverage ``cur`` (n,).

    The one place gains are computed, so that both greedy variants round identically.
    """
    return np.maximum(rows - cur, 0.0).sum(axis=1)


def greedy(
    sim: np.ndarray,
    k: int,
    initial=None,
    gain_weight: float = 1.0,
    bonus: np.ndarray | None = None,
) -> GreedyResult:
    """Plain greedy facility location: k steps, each evaluating every remaining candidate.

    ``sim`` (n, n) non-negative similarities (row i: how well item i covers each item j).
    ``initial``: indices already chosen (S0): the greedy starts from S0, never re-picks them and
    records the gains F(S0 + S + {i}) - F(S0 + S); ``value`` is F(S0 + S).
    ``gain_weight`` and ``bonus`` (n,) make the step's score ``gain_weight * gain + bonus[i]``
    (a modular term added to F, e.g. a model's uncertainty per item); the recorded gains stay the
    facility-location gains. With the defaults it is plain greedy on F.
    """
    sim, start = _check(sim, k, initial)
    n = sim.shape[0]
    if bonus is not None:
        bonus = np.asarray(bonus, dtype=np.float64).reshape(-1)
        if bonus.shape != (n,) or not np.isfinite(bonus).all():
            raise ValueError(f"bonus must be {n} finite values, got shape {bonus.shape}")
    cur = _initial_coverage(sim, start)
    taken = np.zeros(n, dtype=bool)
    taken[start] = True
    order = np.empty(k, dtype=np.int64)
    gains = np.empty(k)
    for t in range(k):
        g = _row_gains(sim, cur)
        score = (
            g
            if bonus is None and gain_weight == 1.0
            else gain_weight * g + (0.0 if bonus is None else bonus)
        )
        score[taken] = -np.inf
        i = int(np.argmax(score))  # first maximum: the lowest index wins ties
        order[t], gains[t] = i, g[i]
        taken[i] = True
        np.maximum(cur, sim[i], out=cur)
    return GreedyResult(order, gains, float(cur.sum()))


def lazy_greedy(sim: np.ndarray, k: int, symmetric: bool = True, initial=None) -> GreedyResult:
    """Lazy greedy facility location: the same order, gains and F(S) as :func:`greedy`, faster.

    ``sim`` (n, n) non-negative similarities; with ``symmetric`` (the default, true of cosine
    similarities) row j is read in place of column j, which is faster. ``initial``: indices
    already chosen, as in :func:`greedy`.

    Each candidate has an upper bound on its gain. The candidate with the highest bound (lowest
    index on ties) is evaluated exactly with the arithmetic of :func:`greedy`; once the exactly
    evaluated candidate is on top, no other can beat it, or tie it with a lower index. After a
    choice, the bounds are tightened by the exact decrease of every gain, computed only over the
    slices whose coverage rose, and loosened by a bound on the rounding error of that update, so
    they stay upper bounds of the floating-point gains. Usually one evaluation per step suffices.
    """
    sim, start = _check(sim, k, initial)
    n = sim.shape[0]
    order = np.empty(k, dtype=np.int64)
    gains = np.empty(k)
    cur = _initial_coverage(sim, start)
    if k == 0:
        return GreedyResult(order, gains, float(cur.sum()))
    if not sim.min() >= 0.0:
        raise ValueError("similarities must be non-negative and finite (clip negatives to 0)")
    eps = np.finfo(np.float64).eps
    # A gain never exceeds its row sum (cur >= 0); with an initial set the exact gains are
    # tighter. The margin covers a different summation order.
    bounds = sim.sum(axis=1) if start.size == 0 else _row_gains(sim, cur)
    bounds += 2.0 * (np.log2(n) + 16.0) * eps * n
    bounds[start] = -np.inf
    fresh = np.full(n, -1, dtype=np.int64)  # the step at which a bound was last evaluated exactly
    buf = np.empty((1, n))
    chunk = max(1, CHUNK_ELEMENTS // n)
    blockbuf = np.empty((min(chunk, n), n))
    for t in range(k):
        while True:
            i = int(np.argmax(bounds))
            if fresh[i] == t:
                break
            np.subtract(sim[i], cur, out=buf[0])
            bounds[i] = _row_gains_inplace(buf)
            fresh[i] = t
        order[t], gains[t] = i, bounds[i]
        row = sim[i]
        rose = np.flatnonzero(row > cur)
        lo, hi = cur[rose], row[rose]
        # Gain i loses sum over risen j of clip(sim[i, j], lo_j, hi_j) - lo_j.
        decrease = None
        for start in range(0, rose.size, chunk):
            stop = start + chunk
            block = blockbuf[: min(stop, rose.size) - start]
            if symmetric:
                np.take(sim, rose[start:stop], axis=0, out=block)
            else:
                block[...] = sim[:, rose[start:stop]].T
            np.clip(block, lo[start:stop, None], hi[start:stop, None], out=block)
            part = block.sum(axis=0)
            decrease = part if decrease is None else np.add(decrease, part, out=decrease)
        lo_sum, hi_sum = lo.sum(), hi.sum()
        # Loosen by the rounding error: at most (m + 2) eps times the sum of the terms' bounds
        # for the sums, and eps |bound| for each of the two updates.
        slack = (rose.size + 4) * eps * (lo_sum + hi_sum) + 4.0 * eps * n
        if decrease is not None:  # None: no coverage rose, no gain changed
            decrease -= lo_sum + slack
            bounds -= decrease
        np.maximum(cur, row, out=cur)
        bounds[i] = -np.inf
    return GreedyResult(order, gains, float(cur.sum()))


def _row_gains_inplace(diff: np.ndarray) -> float:
    """``_row_gains`` of one row, given ``diff`` (1, n) = ``sim[i] - cur``; overwrites ``diff``."""
    np.maximum(diff, 0.0, out=diff)
    return diff.sum(axis=1)[0]
