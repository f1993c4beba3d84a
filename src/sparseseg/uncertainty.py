"""Voxel uncertainty from a trained model's parts: pure functions on arrays.

The pseudo-label (PL) sets of the base models (the 2D model along each plane, the 3D model) are
votes: ``votes[c]`` (C, X, Y, Z) counts the sets that give class c to a voxel, and their mean is
the meta-model's input A(Y) = votes / m for m sets. Where the sets disagree the model is unsure,
for free. Three voxel maps, each in [0, 1]:

- ``disagreement``: 1 - max_c A(Y)_c, the fraction of sets outvoted by the majority (0 where all
  agree; at most 1 - 1/m);
- ``entropy``: the entropy of A(Y) divided by log C;
- ``meta-entropy``: the meta-model's predictive entropy divided by log C (needs its
  probabilities).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sparseseg.data.planes import to_slices

KINDS = ("disagreement", "entropy", "meta-entropy")
DEFAULT_KIND = "disagreement"


def vote_counts(labels: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """(C, X, Y, Z) uint8: how many of the label maps (X, Y, Z) give each class to each voxel."""
    if not labels:
        raise ValueError("need at least one label map")
    counts = np.zeros((num_classes, *np.shape(labels[0])), dtype=np.uint8)
    for lab in labels:
        for c in range(num_classes):
            counts[c] += lab == c
    return counts


def disagreement(votes: np.ndarray, num_sets: int) -> np.ndarray:
    """(X, Y, Z) float32: 1 - max_c votes[c] / num_sets."""
    return (1.0 - votes.max(axis=0).astype(np.float32) / np.float32(num_sets)).astype(np.float32)


def normalised_entropy(probs: np.ndarray) -> np.ndarray:
    """(X, Y, Z) float32: -sum_c p_c log p_c / log C of probabilities (C, X, Y, Z); 0 for C = 1."""
    c = probs.shape[0]
    if c < 2:
        return np.zeros(probs.shape[1:], dtype=np.float32)
    out = np.zeros(probs.shape[1:], dtype=np.float32)
    term = np.empty_like(out)
    for k in range(c):
        p = np.asarray(probs[k], dtype=np.float32)
        term.fill(0.0)
        np.log(p, out=term, where=p > 0)
        term *= p
        out -= term
    out /= np.float32(np.log(c))
    return np.clip(out, 0.0, 1.0, out=out)


def vote_entropy(votes: np.ndarray, num_sets: int) -> np.ndarray:
    """(X, Y, Z) float32: the normalised entropy of A(Y) = votes / num_sets."""
    return normalised_entropy(votes.astype(np.float32) / np.float32(num_sets))


def voxel_uncertainty(
    kind: str,
    votes: np.ndarray | None = None,
    num_sets: int | None = None,
    meta_probs: np.ndarray | None = None,
) -> np.ndarray:
    """The voxel map ``kind`` (one of :data:`KINDS`) from the votes or the meta probabilities."""
    if kind == "disagreement":
        return disagreement(votes, num_sets)
    if kind == "entropy":
        return vote_entropy(votes, num_sets)
    if kind == "meta-entropy":
        return normalised_entropy(meta_probs)
    raise ValueError(f"unknown uncertainty {kind!r}; choose one of {', '.join(KINDS)}")


def slice_means(volume: np.ndarray, plane: str) -> np.ndarray:
    """(N,) float64: the mean of ``volume`` (X, Y, Z) over each slice of ``plane``."""
    slices = to_slices(np.asarray(volume, dtype=np.float64), plane)
    return slices.reshape(slices.shape[0], -1).mean(axis=1)
