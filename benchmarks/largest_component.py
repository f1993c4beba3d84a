"""Does keeping only the largest connected component lift a model's test Dice?

nnU-Net's postprocessing removes every foreground component but the largest where that helps on
validation. This scores a folder of predicted label volumes (CASE.nii.gz, e.g. a model's
``test_predictions/meta``) against a dataset's labelsTs as they are, with the largest component
of the whole foreground kept, and with the largest component of each class kept (26-connected),
and prints the mean foreground Dice of each and the paired differences.

    PYTHONPATH=src .venv/bin/python benchmarks/largest_component.py PRED DATASET
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage


def largest(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean (X, Y, Z) mask (the mask if empty)."""
    comp, n = ndimage.label(mask, np.ones((3, 3, 3), dtype=bool))
    if n <= 1:
        return mask
    sizes = np.bincount(comp.ravel())
    sizes[0] = 0
    return comp == sizes.argmax()


def variants(label: np.ndarray, classes: list[int]) -> dict[str, np.ndarray]:
    """The label map (X, Y, Z) as it is, with the largest foreground component, and with the
    largest component per class."""
    whole = np.where(largest(label > 0), label, 0)
    per_class = np.zeros_like(label)
    for c in classes:
        per_class[largest(label == c)] = c
    return {"as predicted": label, "largest foreground": whole, "largest per class": per_class}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pred", help="folder of predicted CASE.nii.gz")
    parser.add_argument("dataset", help="dataset folder with labelsTs")
    args = parser.parse_args()

    from sparseseg.data.io import read_nifti
    from sparseseg.data.layout import Dataset
    from sparseseg.metrics import dice
    from sparseseg.report import paired_difference

    ds = Dataset.open(args.dataset)
    classes = [v for v in ds.labels.values() if v != 0]
    rows = []
    for case in ds.cases("Ts"):
        pred = Path(args.pred) / f"{case}{ds.file_ending}"
        gt = ds.load_label(case, "Ts").array
        for tag, label in variants(read_nifti(pred, dtype=np.int16).array, classes).items():
            score = float(np.mean([dice(label == c, gt == c) for c in classes]))
            rows.append({"tag": tag, "case": case, "budget": 0, "seed": 0, "dice": score})
    print("| postprocessing | mean Dice | minus as predicted (95% CI, share better) |")
    print("|---|---:|---|")
    for tag in ("as predicted", "largest foreground", "largest per class"):
        mean = np.mean([r["dice"] for r in rows if r["tag"] == tag])
        diff = ""
        if tag != "as predicted":
            d = paired_difference(rows, "dice", {"tag": tag}, {"tag": "as predicted"})
            diff = (
                f"{d['mean']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}], "
                f"{100 * d['a_better']:.0f}%"
            )
        print(f"| {tag} | {mean:.4f} | {diff} |")


if __name__ == "__main__":
    main()
