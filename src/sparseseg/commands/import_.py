"""``sparseseg import KIND ...``: convert public data layouts into the canonical layout."""

from __future__ import annotations

import argparse

HELP = "convert a dataset (msd, hvsmr2016, em-stack, pairs) into the canonical nnU-Net layout"


def _common(parser: argparse.ArgumentParser, split: bool = True) -> None:
    if split:
        parser.add_argument(
            "--test-fraction",
            type=float,
            default=0.0,
            metavar="F",
            help="share of cases put into imagesTs/labelsTs (default 0)",
        )
        parser.add_argument(
            "--seed", type=int, default=0, help="seed of the test split (default 0)"
        )
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="kind", metavar="KIND", required=True)

    p = sub.add_parser("msd", help="a Medical Segmentation Decathlon task folder")
    p.add_argument("src", metavar="TASK", help="task folder with dataset.json, imagesTr, labelsTr")
    p.add_argument("out", metavar="OUT", help="dataset folder to create")
    p.add_argument(
        "--channel",
        type=int,
        default=None,
        help="import only this channel of 4D multi-modal images "
        "(default: every channel, as CASE_0000, CASE_0001, ...)",
    )
    _common(p)

    p = sub.add_parser("hvsmr2016", help="HVSMR 2016 training_axial_crop_patN(-label).nii.gz files")
    p.add_argument("src", metavar="SRC", help="folder holding the HVSMR files")
    p.add_argument("out", metavar="OUT", help="dataset folder to create")
    p.add_argument(
        "--variant",
        default="axial_crop",
        choices=("axial_crop", "axial_full", "sa_crop"),
        help="which HVSMR files (default axial_crop)",
    )
    _common(p)

    p = sub.add_parser("em-stack", help="an EM image stack and its label stack")
    p.add_argument(
        "src", metavar="IMAGES", help="slice folder (PNG/TIFF), multi-page TIFF or NIfTI"
    )
    p.add_argument("labels", metavar="LABELS", help="label slice folder, TIFF or NIfTI")
    p.add_argument("out", metavar="OUT", help="dataset folder to create")
    p.add_argument(
        "--label-map",
        required=True,
        metavar="NAME=VALUE,...",
        help="class names and their raw label pixel values, classes 0,1,... in this order, "
        "e.g. membrane=0,interior=255",
    )
    p.add_argument(
        "--spacing",
        default="0.000004,0.000004,0.00005",
        metavar="X,Y,Z",
        help="voxel size in mm (default 0.000004,0.000004,0.00005: 4 nm pixels, 50 nm sections "
        "as in ISBI 2012); ignored for NIfTI",
    )
    p.add_argument(
        "--test-slices",
        default=None,
        metavar="START:STOP",
        help="cut Z slices START..STOP-1 off as the test case",
    )
    p.add_argument("--name", default="em", help="case name (default em)")
    _common(p, split=False)

    p = sub.add_parser("pairs", help="an images folder and a labels folder with matching names")
    p.add_argument("src", metavar="IMAGES", help="folder of NIfTI (or TIFF stack) images")
    p.add_argument("labels", metavar="LABELS", help="folder of label files with the same names")
    p.add_argument("out", metavar="OUT", help="dataset folder to create")
    p.add_argument(
        "--label-names",
        default=None,
        metavar="NAMES",
        help="class names for values 0,1,..., e.g. background,anterior,posterior "
        "(default background,class_1,...)",
    )
    p.add_argument(
        "--spacing",
        default="1,1,1",
        metavar="X,Y,Z",
        help="voxel size in mm for TIFF stacks (default 1,1,1); NIfTI uses its header",
    )
    _common(p)


def run(args: argparse.Namespace) -> int:
    from sparseseg.data import importers as imp

    if args.kind == "msd":
        summary = imp.import_msd(
            args.src,
            args.out,
            channel=args.channel,
            test_fraction=args.test_fraction,
            seed=args.seed,
            overwrite=args.overwrite,
        )
    elif args.kind == "hvsmr2016":
        summary = imp.import_hvsmr2016(
            args.src,
            args.out,
            variant=args.variant,
            test_fraction=args.test_fraction,
            seed=args.seed,
            overwrite=args.overwrite,
        )
    elif args.kind == "em-stack":
        summary = imp.import_em_stack(
            args.src,
            args.labels,
            args.out,
            label_map=imp.parse_label_map(args.label_map),
            spacing=imp.parse_spacing(args.spacing),
            test_slices=None
            if args.test_slices is None
            else imp.parse_slice_range(args.test_slices),
            name=args.name,
            overwrite=args.overwrite,
        )
    else:
        summary = imp.import_pairs(
            args.src,
            args.labels,
            args.out,
            label_names=None
            if args.label_names is None
            else imp.parse_label_names(args.label_names),
            spacing=imp.parse_spacing(args.spacing),
            test_fraction=args.test_fraction,
            seed=args.seed,
            overwrite=args.overwrite,
        )
    print(summary.line())
    return 0
