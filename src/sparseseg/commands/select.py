"""``sparseseg select``: choose the slices to annotate in a dataset's training images."""

from __future__ import annotations

import argparse

HELP = "choose the 2D slices to annotate in each training volume, in priority order"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", metavar="DATASET", help="canonical dataset folder (imagesTr)")
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        metavar="K",
        help="annotation budget s_K: max(1, floor(N/K)) slices per plane per volume of N slices "
        "(required, except with --round --total-slices)",
    )
    parser.add_argument(
        "--strategy",
        choices=("ra", "eia", "random"),
        default="ra",
        help="ra: representative (facility location on slice features, default); "
        "eia: equal interval; random: seeded random",
    )
    parser.add_argument("--out", required=True, metavar="SEL", help="output folder to create")
    parser.add_argument(
        "--planes", default="xy,xz,yz", help="planes to choose slices in (default xy,xz,yz)"
    )
    parser.add_argument(
        "--extractor",
        choices=("vgg", "intensity"),
        default="vgg",
        help="slice features for ra: vgg (VGG-19 auto-encoder, default; ImageNet weights from "
        "--weights or the torch hub cache, else a random-init trunk) or intensity (16x16 "
        "thumbnails)",
    )
    parser.add_argument(
        "--weights",
        metavar="PATH",
        default=None,
        help="torchvision VGG-19 ImageNet state dict (default: the torch hub cache)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--steps",
        type=int,
        default=300,
        metavar="N",
        help="auto-encoder training steps (default 300)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        metavar="PX",
        help="slice size for the VGG-19 trunk, a multiple of 32 (default: the longest slice "
        "side rounded up to a multiple of 32, at most 128)",
    )
    parser.add_argument(
        "--feature-cache",
        metavar="DIR",
        default=None,
        help="keep ra slice features in DIR and reuse them for the same images and settings "
        "(e.g. when selecting at several budgets)",
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    parser.add_argument(
        "--simulate-from-labels",
        action="store_true",
        help="also write OUT/dataset: true labels on the chosen slices, ignore elsewhere",
    )
    parser.add_argument("--no-figures", action="store_true", help="skip contact sheets and t-SNE")
    rounds = parser.add_argument_group(
        "later rounds",
        "choose the next slices given DATASET's current sparse labels and a trained model: "
        "coverage conditioned on the annotated slices, weighted with the model's uncertainty",
    )
    rounds.add_argument(
        "--round",
        metavar="MODEL",
        default=None,
        help="model folder from `sparseseg train` on DATASET's current labels",
    )
    rounds.add_argument(
        "--total-slices",
        type=int,
        default=None,
        metavar="T",
        help="instead of --budget: T new slices in all, more to the volumes the model is less "
        "sure of",
    )
    rounds.add_argument(
        "--uncertainty-weight",
        type=float,
        default=None,
        metavar="W",
        help="weight w in [0, 1] of the model's uncertainty against conditioned coverage "
        "(default 0.5)",
    )
    rounds.add_argument(
        "--uncertainty",
        choices=("disagreement", "entropy", "meta-entropy"),
        default="disagreement",
        help="disagreement: 1 - max_c A(Y)_c of the base models' PL sets (default); entropy: "
        "of A(Y); meta-entropy: the meta-model's predictive entropy",
    )
    rounds.add_argument(
        "--dense-labels",
        metavar="DATASET",
        default=None,
        help="with --simulate-from-labels: the dataset whose dense labels simulate the new slices",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from sparseseg import api
    from sparseseg.data.layout import Dataset
    from sparseseg.errors import InputError
    from sparseseg.selection.vgg import WEIGHTS_FILE, default_weights_path, resolve_weights

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise InputError("output already exists (pass --overwrite to replace it)", out)
    check_round_arguments(args)
    ds = Dataset.open(args.dataset)
    if args.strategy == "ra" and args.extractor == "vgg" and resolve_weights(args.weights) is None:
        print(
            f"sparseseg select: no ImageNet VGG-19 weights (pass --weights, or put {WEIGHTS_FILE} "
            f"in {default_weights_path().parent}): the VGG-19 trunk keeps its random "
            "initialisation",
            file=sys.stderr,
        )
    selection = api.select(
        ds.root,
        args.budget,
        out,
        strategy=args.strategy,
        planes=args.planes,
        extractor=args.extractor,
        weights=args.weights,
        seed=args.seed,
        steps=args.steps,
        image_size=args.image_size,
        device=args.device,
        simulate_from_labels=args.simulate_from_labels,
        figures=not args.no_figures,
        overwrite=args.overwrite,
        progress=not args.quiet,
        feature_cache=args.feature_cache,
        model=args.round,
        total_slices=args.total_slices,
        uncertainty_weight=args.uncertainty_weight,
        uncertainty=args.uncertainty,
        dense_labels=args.dense_labels,
    )
    cost = selection.cost
    extractor = selection.extractor or {}
    weights = extractor.get("weights")
    used = f", features {extractor['name']}" if extractor else ""
    if isinstance(weights, dict):
        used += f" (weights {weights['path']}, sha256 {weights['sha256']})"
    elif weights:
        used += f" (weights {weights})"
    what = f"{args.strategy} s{selection.budget:g}"
    if selection.round is not None:
        what = f"round {selection.round}, {cost['slices']} new slices (about s{selection.budget:g})"
    print(
        f"wrote {out}: {what} on {len(selection.cases)} cases, "
        f"planes {','.join(selection.planes)}{used}; {cost['slices']} slices, "
        f"annotated {100 * cost['annotated_fraction']:.1f}% of voxel area, "
        f"covering {100 * cost['covered_fraction']:.1f}% of voxels"
    )
    return 0


def check_round_arguments(args: argparse.Namespace) -> None:
    """The budget options and the round options fit together (InputError otherwise)."""
    from sparseseg.errors import InputError

    if args.round is None:
        given = [
            flag
            for flag, value in (
                ("--total-slices", args.total_slices),
                ("--uncertainty-weight", args.uncertainty_weight),
                ("--dense-labels", args.dense_labels),
            )
            if value is not None
        ]
        if given:
            raise InputError(f"{', '.join(given)} apply to later rounds only (--round MODEL)")
        if args.budget is None:
            raise InputError("--budget is required")
        return
    if (args.budget is None) == (args.total_slices is None):
        raise InputError("a later round needs either --budget or --total-slices (not both)")
    if args.strategy != "ra":
        raise InputError("later rounds choose by coverage and uncertainty (--strategy ra)")
