"""sparseseg demo: the main job on embedded phantom data, written up as a report."""

from __future__ import annotations

import argparse

from sparseseg.config import PRESETS

HELP = "run a small RA vs EIA study with self-training on phantom hearts and write a report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sparseseg.demo import DEMO_MINUTES, DEMO_PRESET

    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument("--cases", type=int, default=6, help="training volumes")
    parser.add_argument("--test-cases", type=int, default=5, help="test volumes")
    parser.add_argument("--budget", type=float, default=10, help="k of s_k")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--preset",
        default=DEMO_PRESET,
        choices=tuple(PRESETS),
        help=f"sizes and schedules (default {DEMO_PRESET}, at half its schedules; auto: planned "
        "from the data, with --minutes per training; cpu-aniso, paper: their full schedules)",
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=DEMO_MINUTES,
        metavar="M",
        help=f"time budget of each of the three trainings under preset auto (default "
        f"{DEMO_MINUTES:g}: the whole demo in under ten minutes on two CPU cores)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from sparseseg.demo import run_demo
    from sparseseg.errors import InputError

    if args.minutes <= 0:
        raise InputError(f"--minutes must be positive, got {args.minutes:g}")
    path = run_demo(
        args.out,
        cases=args.cases,
        test_cases=args.test_cases,
        budget=args.budget,
        seed=args.seed,
        preset=args.preset,
        minutes=args.minutes,
        progress=not args.quiet,
    )
    print(f"report: {path.resolve()}")
    return 0
