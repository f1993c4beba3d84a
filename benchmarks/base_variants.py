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

import json
import time
from dataclasses import fields
from pathlib import Path

from meta_variants import case_rows, claim_variant_folder, paired_text, score, variant_arguments

from sparseseg.bundle import save_bundle
from sparseseg.config import apply_overrides, preset_from_dict
from sparseseg.data.layout import Dataset
from sparseseg.data.store import training_store
from sparseseg.models import base_part
from sparseseg.pipeline import STATE_FILE, TEST_DIR, score_predictions
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
    claim_variant_folder(out, dataset, preset, run)
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
    report = score_predictions(dataset, out, pred_root, parts)["parts"]
    scores = {p: score(report[p], report[p]["mean_dice"]) for p in parts}
    return {"parts": scores, "train_s": trained, "score_s": time.perf_counter() - t1}


def main() -> None:
    parser = variant_arguments(__doc__.split("\n")[0], "one base model's settings")
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
            ran = score(run_report[part], run_report[part]["mean_dice"])
            print(
                f"| {name} | {part} | {ran:.4f} | {value:.4f} | {paired_text(d)}; "
                f"train {result['train_s']:.0f} s, predict and score {result['score_s']:.0f} s |",
                flush=True,
            )


if __name__ == "__main__":
    main()
