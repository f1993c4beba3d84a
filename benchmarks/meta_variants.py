"""Step III variants on the base models of one finished run, scored side by side.

Takes a model folder that ``sparseseg train`` (or ``experiment``) finished and, for each
``--variant`` (``--set`` overrides of its planned preset), trains the meta-model again from the
same Step II (its base models and PL sets, linked, not copied) and scores the test split; a
variant that changes only ``inference.*`` reuses the run's meta-model too and only predicts again.
Every variant has the same base models, PL sets and iteration counts, so the table isolates the
variant (one seed: read the paired differences, not just the means)::

    PYTHONPATH=src python benchmarks/meta_variants.py hippo_w3d/runs/ra-s20-seed0 --out variants \
        --variant scratch meta.init=scratch --variant no-mirror inference.mirror_axes=none
    PYTHONPATH=src python benchmarks/meta_variants.py isbi_auto30/runs/ra-s10-seed0/model \
        --out isbi_oracle --force-set xy --variant force-xy meta.switch_threshold=0.049

Prints the score of each part (Rand F where the test split was scored with it, as on EM
stacks, else mean Dice) for the run and each variant, and the paired difference of the
meta-model against the run's over the test cases (a 95% t-interval, as in the experiment's
comparisons).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from sparseseg import fingerprint, output_folder
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
from sparseseg.pseudolabels import pl_sets, remove_cache
from sparseseg.report import paired_difference


def score(record: dict, mean_dice: float) -> float:
    """A case's or a part's Rand F where it was scored with it (EM stacks), else ``mean_dice``."""
    return record["rand_f"] if record.get("rand_f") is not None else mean_dice


def case_rows(model_dir: Path, part: str, variant: str) -> list[dict]:
    """One row per test case of one part's predictions: variant, case, score."""
    metrics = json.loads((model_dir / TEST_DIR / part / "metrics.json").read_text())
    return [
        {
            "variant": variant,
            "case": case,
            "score": score(rec, float(np.mean([c["dice"] for c in rec["classes"].values()]))),
        }
        for case, rec in metrics["cases"].items()
    ]


def claim_variant_folder(out: Path, dataset: Dataset, preset, run: Path) -> None:
    """Record what variant folder ``out`` is made from (the preset and the base run); a folder
    made from other settings is refused, so a stopped variant resumes only for what made it."""
    out.mkdir(parents=True, exist_ok=True)
    settings = {"preset": fingerprint.plain(preset.to_dict()), "base_run": str(run.resolve())}
    current = fingerprint.make(fingerprint.dataset_fingerprint(dataset), settings)
    if fingerprint.read(out) is not None:
        output_folder.check(out, current, f"variant folder {out}")
    fingerprint.write(out, current)


def variant_arguments(description: str, what: str) -> argparse.ArgumentParser:
    """The parser both variant benchmarks share: a finished run, --out, repeated --variant."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("run", type=Path, help="a finished model folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--variant",
        nargs="+",
        action="append",
        required=True,
        metavar=("NAME", "FIELD=VALUE"),
        help=f"a name and its overrides of {what} (repeatable)",
    )
    return parser


def paired_text(d: dict) -> str:
    """'+0.0012 [-0.0003, +0.0027], 58%' for a :func:`paired_difference` result."""
    interval = (
        f" [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}], {d['a_better']:.0%}" if "ci_low" in d else ""
    )
    return f"{d['mean']:+.4f}{interval}"


def force_nnfit(index: int) -> None:
    """Make every NN-fit round of this process choose the PL set at ``index``."""
    import torch

    from sparseseg import selftrain

    selftrain.nearest_sets = lambda ce: torch.full((ce.shape[0],), index, dtype=torch.int64)


def run_variant(run: Path, out: Path, overrides: list[str]) -> dict:
    state = json.loads((run / STATE_FILE).read_text())
    dataset = Dataset.open(state["dataset"])
    base = preset_from_dict(state["preset"])
    preset = apply_overrides(base, overrides)
    claim_variant_folder(out, dataset, preset, run)
    stage2 = out / STAGE2_DIR
    if not stage2.exists():
        stage2.symlink_to((run / STAGE2_DIR).resolve())
    t0 = time.perf_counter()
    stage3 = out / STAGE3_DIR
    if preset.meta == base.meta:
        if not stage3.exists():
            stage3.symlink_to((run / STAGE3_DIR).resolve())
    elif not (stage3 / "meta.pt").exists():
        # resume: a stopped variant continues from its checkpoint (same preset, same base run)
        run_meta_stage(dataset, out, preset, resume=True, device=None, progress=False, log=print)
        remove_cache(out)
    trained = time.perf_counter() - t0
    make_bundle(dataset, out, preset)
    t1 = time.perf_counter()
    report = score_test_split(dataset, out, preset.planes, device=None, progress=False)
    return {"report": report, "train_s": trained, "score_s": time.perf_counter() - t1}


def main() -> None:
    parser = variant_arguments(__doc__.split("\n")[0], "the run's preset")
    parser.add_argument(
        "--force-set",
        default=None,
        metavar="NAME",
        help="NN-fit always chooses this PL set (e.g. xy): what the meta-model reaches when "
        "it fits that set (a measurement, not a project option)",
    )
    args = parser.parse_args()
    if args.force_set is not None:
        planes = preset_from_dict(json.loads((args.run / STATE_FILE).read_text())["preset"]).planes
        sets = pl_sets(planes)
        if args.force_set not in sets:
            parser.error(f"--force-set must be one of the run's PL sets {', '.join(sets)}")
        force_nnfit(sets.index(args.force_set))
    run_report = json.loads((args.run / "report.json").read_text())
    rows = [("run", run_report, None)]
    cases = case_rows(args.run, "meta", "run")
    for name, *overrides in args.variant:
        folder = args.out / name
        result = run_variant(args.run, folder, overrides)
        rows.append((name, result["report"], result))
        cases += case_rows(folder, "meta", name)
    parts = list(run_report["parts"])
    metric = "Rand F" if run_report["parts"]["meta"].get("rand_f") is not None else "mean Dice"
    print(f"{metric} of each part on the test split")
    print("| variant | " + " | ".join(parts) + " | meta - run's meta (95% CI, share better) |")
    print("|---|" + "---:|" * (len(parts) + 1))
    for name, report, result in rows:
        scores = " | ".join(
            f"{score(report['parts'][p], report['parts'][p]['mean_dice']):.4f}" for p in parts
        )
        paired = ""
        if result is not None:
            d = paired_difference(
                cases, "score", {"variant": name}, {"variant": "run"}, pair_on=("case",)
            )
            paired = (
                f"{paired_text(d)}; train {result['train_s']:.0f} s, "
                f"score {result['score_s']:.0f} s"
            )
        print(f"| {name} | {scores} | {paired} |")


if __name__ == "__main__":
    main()
