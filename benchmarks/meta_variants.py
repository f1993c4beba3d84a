"""Step III variants on the base models of one finished run, scored side by side.

Takes a model folder that ``sparseseg train`` (or ``experiment``) finished and, for each
``--variant`` (``--set`` overrides of its planned preset), trains the meta-model again from the
same Step II (its base models and PL sets, linked, not copied) and scores the test split; a
variant that changes only ``inference.*`` reuses the run's meta-model too and only predicts again.
Every variant has the same base models, PL sets and iteration counts, so the table isolates the
variant (one seed: read the paired differences, not just the means)::

    PYTHONPATH=src python benchmarks/meta_variants.py hippo_w3d/runs/ra-s20-seed0 --out variants \
        --variant scratch meta.init=scratch --variant no-mirror inference.mirror_axes=none

Prints the score of each part (Rand F where the test split was scored with it, as on EM
stacks, else mean Dice) for the run and each variant, and the paired difference of the
meta-model against the run's over the test cases.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from sparseseg import fingerprint
from sparseseg.config import apply_overrides, preset_from_dict
from sparseseg.data.layout import Dataset
from sparseseg.pipeline import (
    STAGE2_DIR,
    STAGE3_DIR,
    STATE_FILE,
    TEST_DIR,
    make_bundle,
    run_meta_stage,
    score_test_split,
)
from sparseseg.pseudolabels import remove_cache


def per_case_score(model_dir: Path, part: str) -> dict[str, float]:
    """{case: Rand F, or mean foreground Dice where there is none} of one part's predictions."""
    metrics = json.loads((model_dir / TEST_DIR / part / "metrics.json").read_text())
    return {
        case: float(rec["rand_f"])
        if rec.get("rand_f") is not None
        else float(np.mean([c["dice"] for c in rec["classes"].values()]))
        for case, rec in metrics["cases"].items()
    }


def part_score(part: dict) -> float:
    """One part of a report.json: its Rand F where scored with it, else its mean Dice."""
    return part["rand_f"] if part.get("rand_f") is not None else part["mean_dice"]


def run_variant(run: Path, out: Path, overrides: list[str]) -> dict:
    state = json.loads((run / STATE_FILE).read_text())
    dataset = Dataset.open(state["dataset"])
    base = preset_from_dict(state["preset"])
    preset = apply_overrides(base, overrides)
    out.mkdir(parents=True, exist_ok=True)
    stage2 = out / STAGE2_DIR
    if not stage2.exists():
        stage2.symlink_to((run / STAGE2_DIR).resolve())
    settings = {"preset": fingerprint.plain(preset.to_dict()), "base_run": str(run.resolve())}
    fingerprint.write(out, fingerprint.make(fingerprint.dataset_fingerprint(dataset), settings))
    t0 = time.perf_counter()
    stage3 = out / STAGE3_DIR
    if preset.meta == base.meta:
        if not stage3.exists():
            stage3.symlink_to((run / STAGE3_DIR).resolve())
    elif not (stage3 / "meta.pt").exists():
        run_meta_stage(dataset, out, preset, resume=False, device=None, progress=False, log=print)
        remove_cache(out)
    trained = time.perf_counter() - t0
    make_bundle(dataset, out, preset)
    t1 = time.perf_counter()
    report = score_test_split(dataset, out, preset.planes, device=None, progress=False)
    return {"report": report, "train_s": trained, "score_s": time.perf_counter() - t1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a finished model folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--variant",
        nargs="+",
        action="append",
        required=True,
        metavar=("NAME", "FIELD=VALUE"),
        help="a name and its overrides of the run's preset (repeatable)",
    )
    args = parser.parse_args()
    run_report = json.loads((args.run / "report.json").read_text())
    rows = [("run", run_report, None, None)]
    base_cases = per_case_score(args.run, "meta")
    for name, *overrides in args.variant:
        folder = args.out / name
        result = run_variant(args.run, folder, overrides)
        rows.append((name, result["report"], result, per_case_score(folder, "meta")))
    parts = list(run_report["parts"])
    score = "Rand F" if run_report["parts"]["meta"].get("rand_f") is not None else "mean Dice"
    print(f"{score} of each part on the test split")
    print("| variant | " + " | ".join(parts) + " | meta - run's meta (95% CI, share better) |")
    print("|---|" + "---:|" * (len(parts) + 1))
    for name, report, result, cases in rows:
        scores = " | ".join(f"{part_score(report['parts'][p]):.4f}" for p in parts)
        paired = ""
        if cases is not None:
            d = np.array([cases[c] - base_cases[c] for c in base_cases])
            half = 1.96 * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
            paired = (
                f"{d.mean():+.4f} [{d.mean() - half:+.4f}, {d.mean() + half:+.4f}], "
                f"{(d > 0).mean():.0%}; train {result['train_s']:.0f} s, "
                f"score {result['score_s']:.0f} s"
            )
        print(f"| {name} | {scores} | {paired} |")


if __name__ == "__main__":
    main()
