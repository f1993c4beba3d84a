"""``sparseseg pseudolabel DATASET --out DIR``: Step II, base models and the four PL sets."""

from __future__ import annotations

import argparse

from sparseseg.commands.common import (
    add_output_arguments,
    add_preset_arguments,
    add_run_arguments,
)

HELP = "train the sparse 2D and 3D base models and write the four pseudo-label sets (Step II)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", metavar="DATASET", help="dataset folder with sparse labels")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_preset_arguments(parser, "train3d.iterations=200")
    add_output_arguments(parser)
    add_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from sparseseg import distributed
    from sparseseg.config import get_preset
    from sparseseg.data.layout import Dataset
    from sparseseg.errors import InputError
    from sparseseg.pseudolabels import pl_dir, pseudolabel

    try:
        preset = get_preset(args.preset, args.overrides)
    except ValueError as exc:
        raise InputError(f"bad --set: {exc}") from None
    dataset = Dataset.open(args.dataset)
    with distributed.session(args.device) as device:  # joins torchrun's group, if any
        summary = pseudolabel(
            dataset,
            args.out,
            preset,
            resume=args.resume,
            overwrite=args.overwrite,
            device=str(device),
            progress=not args.quiet and distributed.is_main(),
            overrides=args.overrides,
            log=_stderr,
        )
        if not distributed.is_main():
            return 0
    for name in summary["pl_sets"]:
        print(f"{name}: {pl_dir(args.out, name)}")
    print(
        f"{len(summary['cases'])} cases; training {summary['training_seconds_last_run']} s, "
        f"pseudo-labels {summary['pseudolabel_seconds_last_run']} s (this run)"
    )
    return 0


def _stderr(message: str) -> None:
    import sys

    print(message, file=sys.stderr, flush=True)
