"""``sparseseg advise DATASET --out DIR``: how much coverage each annotation budget buys."""

from __future__ import annotations

import argparse

HELP = "advise an annotation budget: coverage curve, cost per budget, a recommended budget"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", metavar="DATASET", help="canonical dataset folder (imagesTr)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder to create")
    parser.add_argument(
        "--target",
        type=float,
        default=0.95,
        metavar="F",
        help="recommend the sparsest budget whose mean coverage F(S)/F(all) reaches F "
        "(default 0.95)",
    )
    parser.add_argument(
        "--round",
        metavar="MODEL",
        default=None,
        help="after a round: start from DATASET's annotated slices and report the uncertainty "
        "of this model (from `sparseseg train`) left in the unannotated slices",
    )
    parser.add_argument(
        "--uncertainty-weight",
        type=float,
        default=0.5,
        metavar="W",
        help="with --round: weight of the model's uncertainty in the order (default 0.5)",
    )
    parser.add_argument(
        "--uncertainty",
        choices=("disagreement", "entropy", "meta-entropy"),
        default="disagreement",
        help="with --round: the model's voxel uncertainty (default disagreement)",
    )
    parser.add_argument(
        "--planes", default="xy,xz,yz", help="planes to choose slices in (default xy,xz,yz)"
    )
    parser.add_argument(
        "--extractor",
        choices=("vgg", "intensity"),
        default="vgg",
        help="slice features, as for `sparseseg select` (default vgg)",
    )
    parser.add_argument("--weights", metavar="PATH", default=None, help="VGG-19 state dict")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--steps", type=int, default=300, metavar="N", help="AE steps (300)")
    parser.add_argument("--image-size", type=int, default=None, metavar="PX")
    parser.add_argument(
        "--feature-cache",
        metavar="DIR",
        default=None,
        help="keep slice features in DIR, shared with `sparseseg select --feature-cache`",
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def run(args: argparse.Namespace) -> int:
    from sparseseg.selection.advisor import advise

    advice = advise(
        args.dataset,
        args.out,
        model=args.round,
        planes=args.planes,
        target=args.target,
        weight=args.uncertainty_weight,
        uncertainty=args.uncertainty,
        extractor=args.extractor,
        weights=args.weights,
        seed=args.seed,
        steps=args.steps,
        image_size=args.image_size,
        device=args.device,
        progress=True,
        feature_cache=args.feature_cache,
        overwrite=args.overwrite,
    )
    best = advice["recommended_row"]
    if best is None:
        print(f"wrote {args.out}: no listed budget reaches coverage {args.target:g}")
    else:
        print(
            f"wrote {args.out}: recommended {best['budget']} (coverage {best['coverage']:.3f} "
            f">= {args.target:g}, {best['slices']} slices, annotated "
            f"{100 * best['annotated_fraction']:.1f}% of voxel area); table in "
            f"{args.out}/advice.md"
        )
    return 0
