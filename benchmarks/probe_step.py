"""The time budget's probe against real training: seconds per 2D step, side by side in one run.

Plans the ``auto`` preset for a dataset (no budget), times the planned 2D model with the
probe's own function (3 and 30 steps on a synthetic batch), then trains it for real on the
dataset's first cases (dense labels) and prints the median seconds per step over three
stretches of the training, and each over the 3-step probe::

    PYTHONPATH=src python benchmarks/probe_step.py hippo --cases 40 --steps 300
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics

import torch

from sparseseg.data.layout import Dataset
from sparseseg.models import build_model2d
from sparseseg.planning import plan_preset
from sparseseg.planning.budget import _train_seconds
from sparseseg.pseudolabels import train_model2d, training_case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--cases", type=int, default=40)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    dataset = Dataset.open(args.dataset)
    preset = plan_preset(dataset, {}, budget=False)
    classes = dataset.num_classes
    cfg = preset.train2d
    print(f"planned 2D model: patch {cfg.patch}, batch {cfg.batch_size}")
    probed = {}
    for steps in (3, 30):
        torch.manual_seed(0)
        model = build_model2d(preset.model2d, 1, classes)
        probed[steps] = _train_seconds(model, cfg, 1, classes, None, steps)
        print(f"probe, {steps} steps: {probed[steps]:.4f} s per step")
    cases = [training_case(dataset, c) for c in dataset.cases("Tr")[: args.cases]]
    cfg = dataclasses.replace(
        cfg, iterations=args.steps, log_every=1, checkpoint_every=10**9, checkpoint_seconds=1e12
    )
    _, history = train_model2d(
        cases, classes, classes, dataclasses.replace(preset, train2d=cfg), progress=False
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
        print(f"training, {name}: {median:.4f} s per step, {median / probed[3]:.2f}x the probe")


if __name__ == "__main__":
    main()
