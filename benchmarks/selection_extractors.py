"""Which slice features select best offline? A measurement on labelled volumes.

For each training case of a canonical dataset (e.g. MSD Hippocampus imported with
``sparseseg import pairs``) and each plane, slices are chosen by representative selection (greedy
facility location) on each candidate extractor's features, and by the EIA and random baselines.
The labels, never seen by the selection, then say how well the chosen slices represent the
label content of all slices:

- ``label coverage``: F(S) under reference label features (each slice's foreground one-hot map
  pooled to 8 x 8 per class, clipped cosine), as a fraction of the greedy optimum on those very
  features (the ``oracle``, which sees the labels);
- ``label Dice``: mean over all slices j of max over chosen i of the mean foreground Dice of
  slice labels Y_i and Y_j (both empty counts as 1): how well the nearest annotated slice's
  labels describe every slice.

    .venv/bin/python benchmarks/selection_extractors.py DATASET [--cases 40] [--budgets 5 10 20]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from sparseseg.data.layout import Dataset
from sparseseg.data.planes import PLANES, to_slices
from sparseseg.selection.facility import cosine_similarity, coverage, lazy_greedy
from sparseseg.selection.features import (
    extract_features,
    intensity_features,
    normalise_volume,
    resize_slices,
)
from sparseseg.selection.strategies import budget_count, eia_indices, random_indices


def label_features(label: np.ndarray, plane: str, classes: list[int]) -> np.ndarray:
    """Reference features (N, C * 64): each foreground class's one-hot slice pooled to 8 x 8."""
    slices = to_slices(label, plane)
    parts = [
        resize_slices((slices == c).astype(np.float32), 8).reshape(len(slices), -1).numpy()
        for c in classes
    ]
    return np.concatenate(parts, axis=1)


def slice_dice(label: np.ndarray, plane: str, classes: list[int]) -> np.ndarray:
    """(N, N) mean foreground Dice between the label maps of every pair of slices."""
    slices = to_slices(label, plane)
    n = len(slices)
    total, count = np.zeros((n, n)), np.zeros((n, n))
    for c in classes:
        y = (slices == c).reshape(n, -1).astype(np.float64)
        size = y.sum(axis=1)
        denom = size[:, None] + size[None, :]
        defined = denom > 0
        total[defined] += (2.0 * (y @ y.T))[defined] / denom[defined]
        count += defined
    return np.where(count > 0, total / np.maximum(count, 1), 1.0)


def scores(chosen, ref_sim, oracle_value, dice) -> tuple[float, float]:
    chosen = np.asarray(chosen)
    return coverage(ref_sim, chosen) / oracle_value, float(dice[chosen].max(axis=0).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--cases", type=int, default=40, help="first N training cases")
    parser.add_argument("--budgets", type=float, nargs="+", default=[5, 10, 20])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--random-seeds", type=int, default=5)
    args = parser.parse_args()

    ds = Dataset.open(args.dataset)
    names = ds.cases("Tr")[: args.cases]
    images, labels = zip(*(ds.load_pair(c) for c in names), strict=True)
    images = [im.array for im in images]
    labels = [lb.array for lb in labels]
    classes = [v for v in ds.class_labels.values() if v != 0]
    print(f"{ds.name}: {len(names)} cases, planes {','.join(PLANES)}, foreground {classes}")

    candidates = {
        "intensity 16x16": dict(extractor="intensity"),
        "vgg random trunk, untrained head, 64px": dict(extractor="vgg", steps=0, image_size=64),
        f"vgg random trunk + AE {args.steps} steps, 64px (auto size)": dict(
            extractor="vgg", steps=args.steps, image_size=64
        ),
        f"vgg random trunk + AE {args.steps} steps, 128px": dict(
            extractor="vgg", steps=args.steps, image_size=128
        ),
    }
    features = {
        "intensity 8x8": [
            {p: intensity_features(normalise_volume(im), p, 8) for p in PLANES} for im in images
        ]
    }
    for name, kwargs in candidates.items():
        t = time.perf_counter()
        features[name] = extract_features(images, PLANES, seed=0, **kwargs).features
        print(f"  features {name}: {time.perf_counter() - t:.0f} s", flush=True)

    for k in args.budgets:
        rows: dict[str, list[tuple[float, float]]] = {}
        for v, (label, image) in enumerate(zip(labels, images, strict=True)):
            for p in PLANES:
                n = to_slices(image, p).shape[0]
                count = budget_count(n, k)
                ref_sim = cosine_similarity(label_features(label, p, classes))
                dice = slice_dice(label, p, classes)
                oracle = lazy_greedy(ref_sim, count)
                picks = {"oracle (sees labels)": oracle.order, "eia": eia_indices(n, count)}
                for name in features:
                    picks[f"ra: {name}"] = lazy_greedy(
                        cosine_similarity(features[name][v][p]), count
                    ).order
                for name, chosen in picks.items():
                    rows.setdefault(name, []).append(scores(chosen, ref_sim, oracle.value, dice))
                rand = [
                    scores(
                        random_indices(n, count, np.random.default_rng([s, v, n])),
                        ref_sim,
                        oracle.value,
                        dice,
                    )
                    for s in range(args.random_seeds)
                ]
                rows.setdefault("random (mean of seeds)", []).append(tuple(np.mean(rand, axis=0)))
        print(
            f"\ns{k:g}: {len(names)} cases x {len(PLANES)} planes; mean +- s.e.m., and the "
            "paired difference to ra with intensity 16x16 and to eia"
        )
        print(
            f"  {'selection':58s} {'label coverage':>17s} {'label Dice':>17s}   "
            f"{'vs intensity (cov, Dice)':>30s}   {'vs eia (cov, Dice)':>30s}"
        )
        base = np.asarray(rows["ra: intensity 16x16"])
        eia = np.asarray(rows["eia"])
        for name, vals in rows.items():
            a = np.asarray(vals)
            sem = a.std(axis=0, ddof=1) / np.sqrt(len(a))
            cells = []
            for ref in (base, eia):
                d = a - ref
                dsem = d.std(axis=0, ddof=1) / np.sqrt(len(d))
                cells.append(
                    f"{d[:, 0].mean():+.4f}+-{dsem[0]:.4f} {d[:, 1].mean():+.4f}+-{dsem[1]:.4f}"
                )
            print(
                f"  {name:58s} {a[:, 0].mean():.4f} +- {sem[0]:.4f} {a[:, 1].mean():.4f} +- "
                f"{sem[1]:.4f}   {cells[0]:>30s}   {cells[1]:>30s}"
            )


if __name__ == "__main__":
    main()
