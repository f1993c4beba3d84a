"""Quality flags on predictions: which cases and slices a person should check first.

Pure functions on arrays. For one case, with the meta-model's labels L (X, Y, Z) and
probabilities P (C, X, Y, Z) and the base models' PL-set votes V (C, X, Y, Z) of m sets:

- per voxel, ``d = 1 - V[L] / m``: the fraction of base-model sets that disagree with the
  meta-model; ``e``: the meta-model's entropy divided by log C;
- ``disagreement``: the mean of d over the predicted foreground union (voxels the meta-model or
  any set calls foreground; 0 when it is empty);
- ``entropy``: the mean of e over the meta-model's foreground (0 when empty);
- ``score = (disagreement + entropy) / 2``, in [0, 1]: cases rank by it, highest first.

Slices rank by their uncertain mass: the sum over the slice's voxels of
``(d * [foreground union] + e * [meta foreground]) / 2`` (in voxels), highest first; each case
lists its :data:`TOP_SLICES` highest slices with a non-zero mass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from sparseseg.uncertainty import normalised_entropy, slice_sums

TOP_SLICES = 10
RULE = (
    "score = (disagreement + entropy) / 2; disagreement: mean over the predicted foreground union "
    "of the fraction of base-model PL sets disagreeing with the meta-model; entropy: the "
    "meta-model's mean normalised entropy inside its foreground; slices by the sum of "
    "(disagreement + entropy) / 2 over their voxels"
)


def case_quality(
    meta_labels: np.ndarray,
    meta_probs: np.ndarray,
    votes: np.ndarray,
    num_sets: int,
    planes: Sequence[str] = ("xy", "xz", "yz"),
    top: int = TOP_SLICES,
) -> dict:
    """The quality record of one case (module docstring): score, disagreement, entropy,
    foreground sizes and its ``top`` slices as ``{"plane", "index", "mass"}``."""
    labels = np.asarray(meta_labels)
    if votes.shape[1:] != labels.shape or meta_probs.shape[1:] != labels.shape:
        raise ValueError("labels (X, Y, Z), probabilities and votes (C, X, Y, Z) must agree")
    # Whole-volume temporaries are float32 or smaller and updated in place: a large volume's
    # flags cost a few bytes per voxel beside the prediction itself.
    agree = np.zeros(labels.shape, np.uint8)
    for c in range(votes.shape[0]):
        np.copyto(agree, votes[c], where=labels == c)
    d = agree.astype(np.float32)
    del agree
    d *= np.float32(-1.0 / num_sets)
    d += np.float32(1.0)
    fg = labels != 0
    union = votes[0] < num_sets
    union |= fg
    e = normalised_entropy(meta_probs)
    disagreement = float(d.mean(where=union, dtype=np.float64)) if union.any() else 0.0
    entropy = float(e.mean(where=fg, dtype=np.float64)) if fg.any() else 0.0
    mass = d
    mass *= union
    e *= fg
    mass += e
    mass *= np.float32(0.5)
    del e
    slices = [
        {"plane": p, "index": int(n), "mass": float(m)}
        for p in planes
        for n, m in enumerate(slice_sums(mass, p))
        if m > 0
    ]
    slices.sort(key=lambda s: (-s["mass"], planes.index(s["plane"]), s["index"]))
    return {
        "score": (disagreement + entropy) / 2.0,
        "disagreement": disagreement,
        "entropy": entropy,
        "foreground_voxels": int(fg.sum()),
        "union_voxels": int(union.sum()),
        "slices": slices[:top],
    }


def rank_cases(records: Mapping[str, dict]) -> list[dict]:
    """Case records (from :func:`case_quality`) as a list, highest score first (ties by name),
    each with its ``case`` name and ``rank`` (1 = check first)."""
    order = sorted(records, key=lambda c: (-records[c]["score"], c))
    return [{"rank": r + 1, "case": c, **records[c]} for r, c in enumerate(order)]


def rank_slices(records: Mapping[str, dict]) -> list[dict]:
    """Every listed slice of every case, highest mass first (ties: case, plane, index)."""
    rows = [{"case": c, **s} for c, rec in records.items() for s in rec["slices"]]
    rows.sort(key=lambda s: (-s["mass"], s["case"], s["plane"], s["index"]))
    return [{"rank": r + 1, **s} for r, s in enumerate(rows)]
