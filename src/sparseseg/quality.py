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

from sparseseg.data.planes import NORMAL_AXIS, num_slices
from sparseseg.uncertainty import normalised_entropy

TOP_SLICES = 10
SLAB = 16  # voxels along X per slab of the computation
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
    # Slabs along X bound the temporaries, so a large volume's flags cost little memory beside
    # the prediction itself.
    sums = {p: np.zeros(num_slices(labels.shape, p)) for p in planes}
    d_sum = e_sum = 0.0
    n_union = n_fg = 0
    for x0 in range(0, labels.shape[0], SLAB):
        sl = slice(x0, x0 + SLAB)
        lab, vote = labels[sl], votes[:, sl]
        agree = np.zeros(lab.shape, np.uint8)
        for c in range(vote.shape[0]):
            np.copyto(agree, vote[c], where=lab == c)
        d = 1.0 - agree.astype(np.float64) / num_sets
        fg = lab != 0
        union = fg | (vote[0] < num_sets)
        e = normalised_entropy(meta_probs[:, sl]).astype(np.float64)
        d_sum += float(d[union].sum())
        e_sum += float(e[fg].sum())
        n_union += int(union.sum())
        n_fg += int(fg.sum())
        mass = (d * union + e * fg) / 2.0
        for p in planes:
            axis = NORMAL_AXIS[p] % 3
            if axis == 0:
                sums[p][sl] = mass.sum(axis=(1, 2))
            else:
                sums[p] += mass.sum(axis=tuple(a for a in range(3) if a != axis))
    disagreement = d_sum / n_union if n_union else 0.0
    entropy = e_sum / n_fg if n_fg else 0.0
    slices = [
        {"plane": p, "index": int(n), "mass": float(m)}
        for p in planes
        for n, m in enumerate(sums[p])
        if m > 0
    ]
    slices.sort(key=lambda s: (-s["mass"], planes.index(s["plane"]), s["index"]))
    return {
        "score": (disagreement + entropy) / 2.0,
        "disagreement": disagreement,
        "entropy": entropy,
        "foreground_voxels": n_fg,
        "union_voxels": n_union,
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
