"""``sparseseg evaluate PRED GT``: Dice, ADB, Hausdorff, HVSMR score and Rand F, as JSON."""

from __future__ import annotations

import argparse

HELP = "score predicted label volumes against ground truth (Dice, ADB, Hausdorff, Rand F)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pred", help="a predicted label NIfTI, or a folder of CASE.nii.gz")
    parser.add_argument(
        "gt", help="a ground-truth label NIfTI, a folder of them, or a dataset folder"
    )
    parser.add_argument("--out", help="write the metrics JSON here (per case and mean/std)")
    parser.add_argument(
        "--split",
        choices=("Tr", "Ts"),
        help="dataset label folder to score against (default: labelsTs if present, else labelsTr)",
    )
    parser.add_argument(
        "--classes",
        help="classes to score as name=value,... (default: the dataset's classes but value 0, "
        "or every nonzero label found)",
    )
    parser.add_argument(
        "--rand-f-interior",
        type=int,
        metavar="VALUE",
        help="label value of the cell interior: also compute the EM Rand F-score (automatic for "
        "datasets with 'membrane' and 'interior' labels)",
    )


def run(args: argparse.Namespace) -> int:
    from sparseseg.evaluation import evaluate, format_summary, parse_classes

    classes = parse_classes(args.classes) if args.classes else None
    report = evaluate(
        args.pred,
        args.gt,
        out=args.out,
        classes=classes,
        rand_f_interior=args.rand_f_interior,
        split=args.split,
    )
    print(format_summary(report))
    if report["unmatched_predictions"]:
        print(
            f"predictions without ground truth (not scored): {len(report['unmatched_predictions'])}"
        )
    print(f"wrote {args.out}" if args.out else "no JSON written (use --out FILE)")
    return 0
