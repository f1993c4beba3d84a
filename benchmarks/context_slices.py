"""Neighbouring slices as extra input channels of the 2D base model: does context help?

Trains the 2D base model of one finished run on one plane, once per ``--context`` k, with the
2k slices around each slice (k on each side, repeated at the volume's ends) stacked as extra
input channels, on the run's sparse labels, planned sizes and iterations; predicts the test
split along that plane and prints mean foreground Dice and the paired difference against k = 0
(the test volumes carry no annotation, so every voxel scored lies away from annotated slices)::

    PYTHONPATH=src python benchmarks/context_slices.py hippo_study/runs/ra-s20-seed1/model \
        --out context_xy --plane xy --context 0 1

The context is the engine's own (``model2d.context``: the sampler and the 2D predictor stack
the neighbouring slices as extra channels).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from sparseseg.bundle import load_bundle, save_bundle
from sparseseg.config import apply_overrides, preset_from_dict
from sparseseg.data.layout import Dataset
from sparseseg.data.planes import PLANES
from sparseseg.data.store import training_store
from sparseseg.inference import predict_planes_2d
from sparseseg.metrics import dice
from sparseseg.models import base_part
from sparseseg.pipeline import STATE_FILE
from sparseseg.pseudolabels import (
    MODEL2D,
    PART,
    preset_bundle,
    train_model2d,
    training_case,
    training_ignore_index,
)
from sparseseg.report import paired_difference


def run_context(
    run: Path, out: Path, plane: str, k: int, cache: Path, iterations: int | None
) -> tuple[list, float]:
    state = json.loads((run / STATE_FILE).read_text())
    dataset = Dataset.open(state["dataset"])
    preset = dataclasses.replace(preset_from_dict(state["preset"]), planes=(plane,))
    overrides = [f"model2d.context={k}"]
    if iterations is not None:
        overrides.append(f"train2d.iterations={iterations}")
    preset = apply_overrides(preset, overrides)
    out.mkdir(parents=True, exist_ok=True)
    bundle_file = out / "model2d.pt"
    t0 = time.perf_counter()
    if not bundle_file.exists():
        cases = training_store(dataset, cache, "Tr", preset.target_spacing)
        model, _ = train_model2d(
            cases,
            dataset.num_classes,
            training_ignore_index(dataset),
            preset,
            out / "model2d.ckpt",
            resume=True,
            progress=False,
        )
        part = {PART[MODEL2D]: base_part(model, preset.model2d.arch, preset.model2d)}
        save_bundle(preset_bundle(part, dataset, preset), bundle_file)
    trained = time.perf_counter() - t0
    model = load_bundle(bundle_file).build(PART[MODEL2D])
    rows = []
    for case in dataset.cases("Ts"):
        arrays = training_case(dataset, case, "Ts", preset.target_spacing)
        pred = predict_planes_2d(
            model,
            arrays["image"],
            (plane,),
            patch=preset.train2d.patch,
            labels_only=True,
            context=k,
        )[plane]
        label = arrays["label"]
        score = np.mean([dice(pred == c, label == c) for c in range(1, dataset.num_classes)])
        rows.append({"context": k, "case": case, "dice": float(score)})
    return rows, trained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a finished model folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--plane", choices=PLANES, default="xy")
    parser.add_argument("--context", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--iterations", type=int, default=None, help="default: the run's")
    args = parser.parse_args()
    rows, seconds = [], {}
    for k in args.context:
        found, seconds[k] = run_context(
            args.run,
            args.out / f"k{k}",
            args.plane,
            k,
            args.out / "cache" / "train",
            args.iterations,
        )
        rows += found
    print(f"2D model on {args.plane} slices, mean foreground Dice on the test split")
    print("| context k | input slices | mean Dice | minus k = 0 (95% CI, share better) | train |")
    print("|---:|---:|---:|---|---:|")
    for k in args.context:
        mean = np.mean([r["dice"] for r in rows if r["context"] == k])
        paired = ""
        if k != 0 and 0 in args.context:
            d = paired_difference(rows, "dice", {"context": k}, {"context": 0}, pair_on=("case",))
            paired = (
                f"{d['mean']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}], {d['a_better']:.0%}"
            )
        print(f"| {k} | {2 * k + 1} | {mean:.4f} | {paired} | {seconds[k]:.0f} s |", flush=True)


if __name__ == "__main__":
    main()
