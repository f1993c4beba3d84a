"""Base-model variants on the sparse labels of one finished run, scored side by side.

Takes a model folder that ``sparseseg train`` (or ``experiment``) finished and, for each
``--variant`` (``--set`` overrides of its planned preset, in ``model2d``/``train2d`` or
``model3d``/``train3d``), trains that base model again on the run's dataset with the run's
planned iterations, predicts the test split with it (the 2D model along the run's planes) and
compares it case by case with the run's own model of the same part. Nothing but the overridden
fields differs from the run, so the table isolates the variant (one seed: read the paired
differences, not just the means)::

    PYTHONPATH=src python benchmarks/base_variants.py hippo_study/runs/ra-s20-seed1/model \
        --out base_variants --variant zoom train3d.scale_range=0.7,1.4 \
        --variant intensity train3d.intensity_scale=0.25 train3d.noise_std=0.1

A stopped variant resumes from its checkpoint, in a folder made from the same settings only.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import fields
from pathlib import Path

from meta_variants import case_rows, score

from sparseseg import fingerprint, output_folder
from sparseseg.bundle import save_bundle
from sparseseg.config import apply_overrides, preset_from_dict
from sparseseg.data.layout import Dataset
from sparseseg.data.store import training_store
from sparseseg.evaluation import evaluate
from sparseseg.models import base_part
from sparseseg.pipeline import STATE_FILE, TEST_DIR
from sparseseg.predict import parse_parts, predict_files
from sparseseg.pseudolabels import (
    MODEL2D,
    MODEL3D,
    PART,
    preset_bundle,
    train_model2d,
    train_model3d,
    training_ignore_index,
)
from sparseseg.report import paired_difference

SECTIONS = {MODEL2D: ("model2d", "train2d"), MODEL3D: ("model3d", "train3d")}


def changed_model(base, preset) -> str:
    """MODEL2D or MODEL3D: the one base model whose settings ``preset`` changes."""
    own = {s for sections in SECTIONS.values() for s in sections}
    if any(
        getattr(base, f.name) != getattr(preset, f.name) for f in fields(base) if f.name not in own
    ):
        raise SystemExit("a variant may change model2d/train2d or model3d/train3d only")
    changed = [
        n for n, ss in SECTIONS.items() if any(getattr(base, s) != getattr(preset, s) for s in ss)
    ]
    if len(changed) != 1:
        raise SystemExit("a variant must change the settings of exactly one base model")
    return changed[0]


def run_variant(run: Path, out: Path, overrides: list[str], cache: Path) -> dict:
    state = json.loads((run / STATE_FILE).read_text())
    dataset = Dataset.open(state["dataset"])
    base = preset_from_dict(state["preset"])
    preset = apply_overrides(base, overrides)
    name = changed_model(base, preset)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"preset": fingerprint.plain(preset.to_dict()), "base_run": str(run.resolve())}
    current = fingerprint.make(fingerprint.dataset_fingerprint(dataset), settings)
    if fingerprint.read(out) is not None:  # resumed only for what made it
        output_folder.check(out, current, f"variant folder {out}")
    fingerprint.write(out, current)
    bundle_file = out / f"{name}.pt"
    t0 = time.perf_counter()
    if not bundle_file.exists():
        cases = training_store(dataset, cache, "Tr", preset.target_spacing)
        trainer = train_model2d if name == MODEL2D else train_model3d
        model, _history = trainer(
            cases,
            dataset.num_classes,
            training_ignore_index(dataset),
            preset,
            out / f"{name}.ckpt",
            resume=True,
            progress=False,
        )
        cfg = getattr(preset, SECTIONS[name][0])
        part = {PART[name]: base_part(model, cfg.arch, cfg)}
        save_bundle(preset_bundle(part, dataset, preset), bundle_file)
    trained = time.perf_counter() - t0
    parts = parse_parts(preset.planes if name == MODEL2D else ("3d",))
    pred_root = out / TEST_DIR
    t1 = time.perf_counter()
    predict_files(
        bundle_file,
        dataset.root / "imagesTs",
        pred_root if len(parts) > 1 else pred_root / parts[0],
        parts=parts,
        progress=False,
        overwrite=False,
    )
    report = {}
    for part in parts:
        scores = evaluate(
            pred_root / part, dataset.root, out=pred_root / part / "metrics.json", split="Ts"
        )
        summary = scores["summary"]
        dice = [v["dice"]["mean"] for v in summary["classes"].values()]
        report[part] = score(
            {"rand_f": summary.get("rand_f", {}).get("mean")}, sum(dice) / len(dice)
        )
    return {"parts": report, "train_s": trained, "score_s": time.perf_counter() - t1}


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
        help="a name and its overrides of one base model's settings (repeatable)",
    )
    args = parser.parse_args()
    run_report = json.loads((args.run / "report.json").read_text())["parts"]
    print("| variant | part | run's model | variant | variant - run (95% CI, share better) |")
    print("|---|---|---:|---:|---|")
    for name, *overrides in args.variant:
        folder = args.out / name
        result = run_variant(args.run, folder, overrides, args.out / "cache" / "train")
        for part, value in result["parts"].items():
            cases = case_rows(args.run, part, "run") + case_rows(folder, part, name)
            d = paired_difference(
                cases, "score", {"variant": name}, {"variant": "run"}, pair_on=("case",)
            )
            interval = (
                f" [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}], {d['a_better']:.0%}"
                if "ci_low" in d
                else ""
            )
            ran = score(run_report[part], run_report[part]["mean_dice"])
            print(
                f"| {name} | {part} | {ran:.4f} | {value:.4f} | {d['mean']:+.4f}{interval}; "
                f"train {result['train_s']:.0f} s, predict and score {result['score_s']:.0f} s |",
                flush=True,
            )


if __name__ == "__main__":
    main()
