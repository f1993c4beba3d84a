"""``sparseseg annotations SEL PAINTED --out DATASET``: painted slices -> sparse training data."""

from __future__ import annotations

import argparse

HELP = "import the painted label maps of a selection as a sparse training dataset"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("selection", metavar="SEL", help="selection folder (sparseseg select)")
    parser.add_argument(
        "painted",
        metavar="PAINTED",
        help="folder of painted label maps, one per case: CASE.nii.gz, .nii, .nrrd or a 3D "
        "Slicer CASE.seg.nrrd; 0 is background on the chosen slices",
    )
    parser.add_argument("--out", required=True, metavar="DATASET", help="dataset folder to create")
    parser.add_argument(
        "--dataset",
        metavar="DIR",
        default=None,
        help="the dataset the selection was made on (default: the one selection.json records)",
    )
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="skip cases without a painted file (default: an error)",
    )
    parser.add_argument(
        "--keep-extra",
        action="store_true",
        help="keep painted voxels outside the chosen slices: their whole slices become annotated "
        "slices (0 there is background); default: they are ignored",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace DATASET if it exists")


def run(args: argparse.Namespace) -> int:
    import sys

    from sparseseg.api import import_annotations

    report = import_annotations(
        args.selection,
        args.painted,
        args.out,
        dataset=args.dataset,
        allow_missing=args.allow_missing,
        keep_extra=args.keep_extra,
        overwrite=args.overwrite,
    )
    for line in report.warnings():
        print(f"sparseseg annotations: warning: {line}", file=sys.stderr)
    for line in report.summary():
        print(line)
    return 0
