"""How well ``predict``'s quality score ranks the cases a person should check first.

Predicts the test split of a dataset (imagesTs, labelsTs) with a trained model folder, quality
flags on, scores every case with ``evaluate``, and prints the Spearman rank correlation between
each quality measure (score, disagreement, entropy; higher = less sure) and the case's true mean
foreground Dice. A useful score correlates negatively: the least sure cases are the worst.

    PYTHONPATH=src .venv/bin/python benchmarks/quality_ranking.py DATASET MODEL --out OUT
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="dataset folder with imagesTs and labelsTs")
    parser.add_argument("model", help="model folder from sparseseg train")
    parser.add_argument("--out", required=True, help="folder for predictions and the result")
    parser.add_argument("--worst", type=int, default=10, help="size of the 'check first' list")
    args = parser.parse_args()

    from scipy import stats

    from sparseseg import api
    from sparseseg.data.layout import Dataset

    ds = Dataset.open(args.dataset)
    out = Path(args.out)
    api.predict(args.model, ds.root / "imagesTs", out / "pred", progress=False)
    metrics = api.evaluate(out / "pred", ds.root, out=out / "metrics.json", split="Ts")
    dice = {
        case: float(np.mean([c["dice"] for c in entry["classes"].values()]))
        for case, entry in metrics["cases"].items()
    }
    quality = json.loads((out / "pred" / "quality.json").read_text())
    records = {r["case"]: r for r in quality["cases"]}
    cases = sorted(dice)
    truth = np.array([dice[c] for c in cases])
    result = {"model": str(args.model), "cases": len(cases), "spearman": {}}
    print(f"{len(cases)} test cases, mean Dice {truth.mean():.3f}")
    print(f"{'measure':<14} {'Spearman rho vs Dice':>21} {'p':>9}")
    for key in ("score", "disagreement", "entropy"):
        values = np.array([records[c][key] for c in cases])
        rho, p = stats.spearmanr(values, truth)
        result["spearman"][key] = {"rho": float(rho), "p": float(p)}
        print(f"{key:<14} {rho:>21.3f} {p:>9.2g}")
    # The check-first list: how many of the k highest-score cases are among the k worst by Dice.
    k = min(args.worst, len(cases))
    flagged = [r["case"] for r in quality["cases"][:k]]
    worst = sorted(cases, key=dice.get)[:k]
    overlap = len(set(flagged) & set(worst))
    result["top_k"] = {"k": k, "flagged_among_worst": overlap, "chance": k * k / len(cases)}
    chance = k * k / len(cases)
    print(
        f"of the {k} cases flagged first, {overlap} are among the {k} worst (chance {chance:.1f})"
    )
    (out / "quality_ranking.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
