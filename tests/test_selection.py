"""Facility-location greedy, budgets and strategies, masks and sparse labels (pure functions)."""

from __future__ import annotations

import numpy as np
import pytest

from sparseseg.errors import InputError
from sparseseg.selection.facility import (
    cosine_similarity,
    coverage,
    greedy,
    lazy_greedy,
)
from sparseseg.selection.sparsify import (
    annotation_cost,
    annotation_mask,
    sparsify_labels,
    total_cost,
)
from sparseseg.selection.strategies import (
    budget_count,
    eia_indices,
    random_indices,
    representative_indices,
)

# Binary-exact similarities with ties at steps 0 and 1 (worked by hand below).
HAND = np.array(
    [
        [1.0, 0.75, 0.25, 0.0],
        [0.75, 1.0, 0.25, 0.0],
        [0.25, 0.25, 1.0, 0.5],
        [0.0, 0.0, 0.5, 1.0],
    ]
)


@pytest.mark.parametrize("select", [greedy, lazy_greedy])
def test_hand_checked_case(select):
    # Step 0: row sums 2, 2, 2, 1.5 -> tie, lowest index 0. cur = (1, .75, .25, 0).
    # Step 1: gains 1: .25, 2: .75 + .5 = 1.25, 3: .25 + 1 = 1.25 -> tie, 2. cur = (1, .75, 1, .5).
    # Step 2: gains 1: .25, 3: .5 -> 3. F = 1 + .75 + 1 + 1 = 3.75.
    result = select(HAND, 3)
    assert result.order.tolist() == [0, 2, 3]
    assert result.gains.tolist() == [2.0, 1.25, 0.5]
    assert result.value == 3.75
    assert select(HAND, 4).order.tolist() == [0, 2, 3, 1]


def _random_features(rng, n, d=8):
    """Slice-like features: a random walk, some exact duplicates and a zero row."""
    f = np.cumsum(rng.normal(size=(n, d)), axis=0) + rng.normal(size=d) * 2
    if n >= 6:
        f[n // 2] = f[n // 3]  # exact duplicate: a tie to break by index
        f[-1] = 0.0  # an empty slice
    return f


@pytest.mark.parametrize("seed", range(6))
def test_lazy_equals_plain_greedy(seed):
    rng = np.random.default_rng(seed)
    for n in (1, 2, 7, 40, 150):
        sim = cosine_similarity(_random_features(rng, n))
        for k in sorted({1, max(1, n // 10), n // 2 or 1, n}):
            plain, lazy = greedy(sim, k), lazy_greedy(sim, k)
            assert lazy.order.tolist() == plain.order.tolist()
            assert lazy.gains.tolist() == plain.gains.tolist()
            assert lazy.value == plain.value
            assert np.isclose(plain.value, coverage(sim, plain.order))
            assert np.isclose(plain.gains.sum(), plain.value)
            # Submodularity: the gains never increase.
            assert np.all(np.diff(plain.gains) <= 1e-12)


def test_lazy_equals_plain_on_clustered_and_non_symmetric():
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(5, 16))
    f = centres[rng.integers(0, 5, 200)] + 0.05 * rng.normal(size=(200, 16))
    sim = cosine_similarity(f)
    assert lazy_greedy(sim, 20).order.tolist() == greedy(sim, 20).order.tolist()
    asym = rng.random((50, 50)) ** 3
    plain, lazy = greedy(asym, 12), lazy_greedy(asym, 12, symmetric=False)
    assert lazy.order.tolist() == plain.order.tolist()
    assert lazy.value == plain.value


def test_greedy_picks_one_per_cluster_first():
    # Three well-separated clusters: the first three choices cover one cluster each.
    rng = np.random.default_rng(1)
    centres = np.eye(3) * 10
    f = np.concatenate([c + rng.normal(scale=0.3, size=(10, 3)) for c in centres])
    order = lazy_greedy(cosine_similarity(f), 3).order
    assert sorted(o // 10 for o in order) == [0, 1, 2]


def test_cosine_similarity_clips_and_handles_zero_rows():
    f = np.array([[1.0, 0.0], [-1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    sim = cosine_similarity(f)
    assert sim[0, 1] == 0.0  # cosine -1, clipped
    assert np.isclose(sim[0, 2], np.sqrt(0.5))
    assert sim[3, 4] == 1.0 and sim[3, 0] == 0.0  # empty rows: alike, unlike the rest
    assert np.array_equal(sim, sim.T) and np.all(np.diag(sim) == 1.0)
    assert cosine_similarity(f, clip=False)[0, 1] == -1.0


def test_lazy_rejects_negative_similarities():
    with pytest.raises(ValueError, match="non-negative"):
        lazy_greedy(np.array([[1.0, -0.5], [-0.5, 1.0]]), 1)


def test_representative_indices_on_features():
    f = np.repeat(np.eye(4), 5, axis=0)  # four groups of five identical slices
    result = representative_indices(f, 4)
    assert sorted(i // 5 for i in result.order) == [0, 1, 2, 3]
    assert result.value == 20.0


def test_budget_count():
    assert budget_count(40, 10) == 4
    assert budget_count(40, 8) == 5
    assert budget_count(39, 10) == 3
    assert budget_count(5, 100) == 1  # at least one slice
    assert budget_count(7, 1) == 7
    for bad in (0.5, 0, -2, float("nan")):
        with pytest.raises(InputError, match="k >= 1"):
            budget_count(40, bad)


def test_eia_is_even_and_exact():
    assert eia_indices(40, 4).tolist() == [5, 15, 25, 35]
    assert eia_indices(10, 1).tolist() == [5]
    for n in (1, 7, 33, 120):
        for k in (1, 2, 3, 5, 10, 20):
            count = budget_count(n, k)
            idx = eia_indices(n, count)
            assert len(idx) == count == len(set(idx.tolist()))
            assert idx.min() >= 0 and idx.max() < n
            gaps = np.diff(idx)
            assert np.all(gaps >= 1) and (gaps.max() - gaps.min() <= 1 if len(gaps) else True)
    with pytest.raises(InputError):
        eia_indices(5, 6)


def test_random_is_exact_and_seeded():
    a = random_indices(50, 7, np.random.default_rng(3))
    b = random_indices(50, 7, np.random.default_rng(3))
    c = random_indices(50, 7, np.random.default_rng(4))
    assert len(a) == 7 == len(set(a.tolist()))
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()


def test_mask_and_cost_by_hand():
    shape = (4, 5, 6)
    chosen = {"xy": [0], "xz": [1, 2]}
    mask = annotation_mask(shape, chosen)
    assert mask.shape == shape
    assert mask[:, :, 0].all() and mask[:, 1, :].all() and mask[:, 2, :].all()
    assert mask.sum() == 20 + 48 - 8  # xy z=0 meets xz y=1,2 in 2 x 4 voxels
    cost = annotation_cost(shape, chosen)
    assert cost["annotated_pixels"] == 1 * 20 + 2 * 24
    assert cost["covered_voxels"] == 60
    assert cost["annotated_fraction"] == 68 / 120 and cost["covered_fraction"] == 0.5
    total = total_cost([cost, annotation_cost(shape, {"yz": [3]})])
    assert total["annotated_pixels"] == 68 + 30 and total["voxels"] == 240
    with pytest.raises(ValueError):
        annotation_mask(shape, {"xy": [6]})


def test_cost_is_about_three_over_k():
    shape = (100, 100, 100)
    chosen = {p: eia_indices(100, budget_count(100, 10)).tolist() for p in ("xy", "xz", "yz")}
    cost = annotation_cost(shape, chosen)
    assert cost["annotated_fraction"] == pytest.approx(0.3)
    assert cost["covered_fraction"] == pytest.approx(1 - 0.9**3)


def test_sparsify_labels():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 3, size=(6, 7, 8)).astype(np.int16)
    chosen = {"xy": [2, 5], "yz": [0]}
    sparse = sparsify_labels(label, chosen, ignore_value=3)
    mask = annotation_mask(label.shape, chosen)
    assert np.array_equal(sparse[mask], label[mask])
    assert np.all(sparse[~mask] == 3)
    assert np.array_equal(sparse[:, :, 2], label[:, :, 2]) and np.all(sparse[3, :, 3] == 3)
