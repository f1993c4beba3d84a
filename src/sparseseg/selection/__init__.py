"""Step I: choose the slices worth annotating (representative, equal-interval or random)."""

from sparseseg.selection.export import simulate_sparse_dataset, write_selection
from sparseseg.selection.facility import (
    GreedyResult,
    cosine_similarity,
    coverage,
    greedy,
    lazy_greedy,
)
from sparseseg.selection.selector import (
    CaseSelection,
    PlaneChoice,
    Selection,
    read_selection,
    select_slices,
    select_volumes,
)
from sparseseg.selection.sparsify import annotation_cost, annotation_mask, sparsify_labels
from sparseseg.selection.strategies import STRATEGIES, budget_count, eia_indices, random_indices

__all__ = [
    "STRATEGIES",
    "CaseSelection",
    "GreedyResult",
    "PlaneChoice",
    "Selection",
    "annotation_cost",
    "annotation_mask",
    "budget_count",
    "cosine_similarity",
    "coverage",
    "eia_indices",
    "greedy",
    "lazy_greedy",
    "random_indices",
    "read_selection",
    "select_slices",
    "select_volumes",
    "simulate_sparse_dataset",
    "sparsify_labels",
    "write_selection",
]
