"""sparseseg experiment: the paper's study on a dataset with dense labels and a test split."""

from __future__ import annotations

import argparse

from sparseseg.commands.common import (
    add_output_arguments,
    add_preset_arguments,
    add_run_arguments,
)

HELP = "simulate sparse annotation from dense labels and reproduce the paper's study"


def _numbers(kind):
    def parse(text: str):
        try:
            return tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected numbers like 5,10, got {text!r}") from None

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="dataset folder (canonical layout, dense labels, imagesTs)")
    parser.add_argument("--out", required=True, help="results folder (runs are cached here)")
    parser.add_argument("--budgets", type=_numbers(float), default=(5, 10, 20, 40), help="k of s_k")
    parser.add_argument(
        "--strategies",
        default="ra,eia",
        help="from ra,eia,random,rounds (rounds: ra at s_2k, then the rest of s_k by its model)",
    )
    parser.add_argument("--seeds", type=_numbers(int), default=(0,), help="e.g. 0,1,2")
    add_preset_arguments(parser, "train3d.iterations=300")
    parser.add_argument(
        "--planes", default=None, help="planes to annotate (default: the preset's, e.g. xy,xz,yz)"
    )
    parser.add_argument(
        "--extractor", default="vgg", choices=("vgg", "intensity"), help="slice features for ra"
    )
    parser.add_argument(
        "--no-full", action="store_true", help="skip the fully supervised reference"
    )
    add_output_arguments(parser)
    add_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from sparseseg.errors import InputError
    from sparseseg.experiment import run_experiment

    bad = [item for item in args.overrides if "=" not in item]
    if bad:
        raise InputError(f"--set expects FIELD=VALUE, got {bad[0]!r}")
    overrides = dict(item.split("=", 1) for item in args.overrides)
    paths = run_experiment(
        args.dataset,
        args.out,
        budgets=args.budgets,
        strategies=[s.strip() for s in args.strategies.split(",") if s.strip()],
        seeds=args.seeds,
        preset=args.preset,
        overrides=overrides,
        planes=args.planes,
        extractor=args.extractor,
        full=not args.no_full,
        resume=args.resume,
        overwrite=args.overwrite,
        device=args.device,
        progress=not args.quiet,
    )
    print((paths["tables.md"]).read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
