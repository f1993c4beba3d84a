"""``sparseseg select``: choose the slices to annotate in a dataset's training images."""

from __future__ import annotations

import argparse

HELP = "choose the 2D slices to annotate in each training volume, in priority order"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", metavar="DATASET", help="canonical dataset folder (imagesTr)")
    parser.add_argument(
        "--budget",
        type=float,
        required=True,
        metavar="K",
        help="annotation budget s_K: max(1, floor(N/K)) slices per plane per volume of N slices",
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
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from sparseseg.data.layout import Dataset
    from sparseseg.errors import InputError
    from sparseseg.selection import select_slices, write_selection
    from sparseseg.selection.vgg import WEIGHTS_FILE, default_weights_path, resolve_weights

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise InputError("output already exists (pass --overwrite to replace it)", out)
    ds = Dataset.open(args.dataset)
    if args.strategy == "ra" and args.extractor == "vgg" and resolve_weights(args.weights) is None:
        print(
            f"sparseseg select: no ImageNet VGG-19 weights (pass --weights, or put {WEIGHTS_FILE} "
            f"in {default_weights_path().parent}): the VGG-19 trunk keeps its random "
            "initialisation",
            file=sys.stderr,
        )
    selection = select_slices(
        ds,
        args.budget,
        args.strategy,
        args.planes,
        args.extractor,
        args.weights,
        args.seed,
        steps=args.steps,
        image_size=args.image_size,
        device=args.device,
        progress=not args.quiet,
        feature_cache=args.feature_cache,
    )
    write_selection(
        selection,
        out,
        ds,
        overwrite=args.overwrite,
        simulate_from_labels=args.simulate_from_labels,
        sheets=not args.no_figures,
        tsne=not args.no_figures,
    )
    cost = selection.cost
    extractor = selection.extractor or {}
    weights = extractor.get("weights")
    used = f", features {extractor['name']}" if extractor else ""
    if isinstance(weights, dict):
        used += f" (weights {weights['path']}, sha256 {weights['sha256']})"
    elif weights:
        used += f" (weights {weights})"
    print(
        f"wrote {out}: {args.strategy} s{args.budget:g} on {len(selection.cases)} cases, "
        f"planes {','.join(selection.planes)}{used}; {cost['slices']} slices, "
        f"annotated {100 * cost['annotated_fraction']:.1f}% of voxel area, "
        f"covering {100 * cost['covered_fraction']:.1f}% of voxels"
    )
    return 0
