"""Do cheap prediction-time additions lift a model's test Dice?

Scores, against a dataset's labelsTs, with paired differences to the reference prediction:

- PRED a folder of label maps (CASE.nii.gz, e.g. a model's ``test_predictions/meta``): the
  labels as predicted (the reference), with only the largest connected component of the whole
  foreground kept, and with the largest component of each class kept (26-connected; nnU-Net's
  postprocessing removes every component but the largest where that helps on validation);
- PRED the output of ``sparseseg predict MODEL DATASET/imagesTs --out PRED --part all
  --probabilities``: each part alone, the meta-model's (the reference) and the 3D model's
  probabilities averaged, every part averaged, and the two largest-component variants of the
  meta-model.

    PYTHONPATH=src .venv/bin/python benchmarks/prediction_variants.py PRED DATASET
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
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


def components(label: np.ndarray, classes: list[int]) -> dict[str, np.ndarray]:
    """A label map (X, Y, Z) with its largest foreground component, and with the largest
    component per class."""
    per_class = np.zeros_like(label)
    for c in classes:
        per_class[largest(label == c)] = c
    return {
        "largest foreground": np.where(largest(label > 0), label, 0),
        "largest per class": per_class,
    }


def read(path: Path) -> np.ndarray:
    """A NIfTI array as stored (predictions and labels share the image's grid and order)."""
    return np.asarray(nib.load(path).dataobj)


def variants(
    pred: Path, name: str, classes: list[int], parts: list[str]
) -> tuple[str, dict[str, np.ndarray]]:
    """(reference tag, label maps (X, Y, Z) by tag) of one case file ``name``; ``parts``: the
    parts with probabilities under ``pred`` (none: ``pred`` holds label maps)."""
    if not parts:
        label = read(pred / name).astype(np.int16)
        return "as predicted", {"as predicted": label, **components(label, classes)}
    # probabilities on the image's own grid, X x Y x Z x C
    probs = {p: read(pred / p / "probabilities" / name) for p in parts}
    probs["meta + 3d"] = (probs["meta"] + probs["3d"]) / 2
    probs["every part"] = sum(probs[p] for p in parts) / len(parts)
    labels = {tag: prob.argmax(-1) for tag, prob in probs.items()}
    return "meta", {**labels, **components(labels["meta"], classes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pred", help="folder of label maps, or from predict --probabilities")
    parser.add_argument("dataset", help="dataset folder with labelsTs")
    args = parser.parse_args()

    from sparseseg.data.layout import Dataset
    from sparseseg.metrics import dice
    from sparseseg.report import paired_difference

    ds = Dataset.open(args.dataset)
    classes = [v for v in ds.labels.values() if v != 0]
    pred = Path(args.pred)
    parts = sorted(p.name for p in pred.iterdir() if (p / "probabilities").is_dir())
    if parts and not {"meta", "3d"} <= set(parts):
        raise SystemExit(f"{pred}: needs the meta and 3d parts' probabilities")
    rows, ref, tags = [], "", []
    for case in ds.cases("Ts"):
        gt = read(ds.label_path(case, "Ts"))
        ref, labels = variants(pred, f"{case}{ds.file_ending}", classes, parts)
        tags = list(labels)
        for tag, label in labels.items():
            score = float(np.mean([dice(label == c, gt == c) for c in classes]))
            rows.append({"tag": tag, "case": case, "budget": 0, "seed": 0, "dice": score})
    print(f"| prediction | mean Dice | minus {ref} (95% CI, share better) |")
    print("|---|---:|---|")
    for tag in tags:
        mean = np.mean([r["dice"] for r in rows if r["tag"] == tag])
        diff = ""
        if tag != ref:
            d = paired_difference(rows, "dice", {"tag": tag}, {"tag": ref})
            diff = (
                f"{d['mean']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}], "
                f"{100 * d['a_better']:.0f}%"
            )
        print(f"| {tag} | {mean:.4f} | {diff} |")


if __name__ == "__main__":
    main()
