"""``sparseseg train DATASET --out MODEL``: Step II and Step III into a model bundle."""

from __future__ import annotations

import argparse

from sparseseg.commands.common import (
    add_output_arguments,
    add_preset_arguments,
    add_run_arguments,
)

HELP = (
    "train the base models, pseudo-labels and self-trained meta-model from sparse labels "
    "(Steps II and III) into a model bundle"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dataset",
        metavar="DATASET",
        help="dataset folder whose labels mark unannotated voxels "
        "with the 'ignore' label (see `sparseseg select`)",
    )
    parser.add_argument("--out", required=True, metavar="MODEL", help="model folder to write")
    add_preset_arguments(parser, "meta.stage1_iterations=200")
    parser.add_argument(
        "--no-report",
        action="store_true",
        help="skip predicting and scoring the test split (done when labelsTs exists)",
    )
    add_output_arguments(parser)
    add_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import sys

    from sparseseg import distributed
    from sparseseg.pipeline import format_report, train

    with distributed.session(args.device) as device:  # joins torchrun's group, if any
        state = train(
            args.dataset,
            args.out,
            args.preset,
            args.overrides,
            resume=args.resume,
            overwrite=args.overwrite,
            device=str(device),
            progress=not args.quiet and distributed.is_main(),
            report=not args.no_report,
            log=lambda msg: print(msg, file=sys.stderr, flush=True),
        )
        if not distributed.is_main():
            return 0
    meta = state["stages"].get("meta", {})
    if meta.get("steps") is not None:
        settled = meta.get("settled_at")
        nnfit = (
            f"NN-fit settled at iteration {settled}, its choices kept from then on"
            if settled is not None
            else f"NN-fit stopped: {meta['stop_reason']}"
        )
        print(f"meta-model: {meta['steps']} iterations, {nnfit}")
    if "report" in state:
        print(format_report(state["report"]))
    print(f"model bundle: {state['stages']['bundle']['file']}")
    return 0
