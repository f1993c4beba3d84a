"""sparseseg demo: the main job on embedded phantom data, written up as a report."""

from __future__ import annotations

import argparse

HELP = "run a small RA vs EIA study with self-training on phantom hearts and write a report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument("--cases", type=int, default=6, help="training volumes")
    parser.add_argument("--test-cases", type=int, default=5, help="test volumes")
    parser.add_argument("--budget", type=float, default=10, help="k of s_k")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from sparseseg.demo import run_demo

    path = run_demo(
        args.out,
        cases=args.cases,
        test_cases=args.test_cases,
        budget=args.budget,
        seed=args.seed,
        progress=not args.quiet,
    )
    print(f"report: {path.resolve()}")
    return 0
