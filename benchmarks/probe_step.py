"""The time budget's probe against real training: seconds per step, side by side in one run.

Plans the ``auto`` preset for a dataset (no budget), times the planned 2D or 3D model with the
probe's own function (``--probe-steps``, each on a synthetic batch after a warm-up step), then
trains it for real on the dataset's first cases (dense labels) and prints the median seconds
per step over three stretches of the training, each over every probe length::

    PYTHONPATH=src python benchmarks/probe_step.py hippo --cases 40 --steps 300
    PYTHONPATH=src python benchmarks/probe_step.py hippo --model 3d --steps 150 \
        --probe-steps 3,10,30
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics

import torch

from sparseseg.data.layout import Dataset
from sparseseg.models import build_model2d, build_model3d
from sparseseg.planning import plan_preset
from sparseseg.planning.budget import _train_seconds
from sparseseg.pseudolabels import train_model2d, train_model3d, training_case

MODELS = {  # --model: (preset field of its training config, builder, trainer)
    "2d": ("train2d", lambda p: p.model2d, build_model2d, train_model2d),
    "3d": ("train3d", lambda p: p.model3d, build_model3d, train_model3d),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--model", choices=sorted(MODELS), default="2d")
    parser.add_argument("--cases", type=int, default=40)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--probe-steps", default="3,30", help="comma-separated probe lengths")
    args = parser.parse_args()
    dataset = Dataset.open(args.dataset)
    preset = plan_preset(dataset, {}, budget=False)
    classes = dataset.num_classes
    field, model_cfg, build, train = MODELS[args.model]
    cfg = getattr(preset, field)
    print(f"planned {args.model} model: patch {cfg.patch}, batch {cfg.batch_size}")
    probed = {}
    for steps in (int(s) for s in args.probe_steps.split(",")):
        torch.manual_seed(0)
        model = build(model_cfg(preset), 1, classes)
        probed[steps] = _train_seconds(model, cfg, 1, classes, None, steps)
        print(f"probe, {steps} steps: {probed[steps]:.4f} s per step")
    cases = [training_case(dataset, c) for c in dataset.cases("Tr")[: args.cases]]
    cfg = dataclasses.replace(
        cfg, iterations=args.steps, log_every=1, checkpoint_every=10**9, checkpoint_seconds=1e12
    )
    _, history = train(
        cases, classes, classes, dataclasses.replace(preset, **{field: cfg}), progress=False
    )
    times = [h["time"] for h in history]
    steps = [b - a for a, b in zip(times, times[1:], strict=False)]
    third = len(steps) // 3
    for name, part in (
        ("first third", steps[:third]),
        ("second third", steps[third : 2 * third]),
        ("last third", steps[2 * third :]),
    ):
        median = statistics.median(part)
        ratios = ", ".join(f"{median / s:.2f}x the {n}-step probe" for n, s in probed.items())
        print(f"training, {name}: {median:.4f} s per step, {ratios}")


if __name__ == "__main__":
    main()
