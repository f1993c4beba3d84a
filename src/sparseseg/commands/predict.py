"""``sparseseg predict MODEL INPUT --out DIR``: segment NIfTI images with a trained bundle."""

from __future__ import annotations

import argparse

HELP = "segment NIfTI images with a trained model (base models -> A(Y) -> meta-model)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="model folder from `sparseseg train`")
    parser.add_argument(
        "input",
        metavar="INPUT",
        help="a NIfTI image or a folder of them (e.g. DATASET/imagesTs); CASE_0000, CASE_0001, "
        "... are the channels of one case",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the label maps")
    parser.add_argument(
        "--part",
        default="meta",
        metavar="PARTS",
        help="meta (default), or base models alone: 3d, xy, xz, yz; several as meta,3d, or all "
        "(meta, 3d and the 2D model's trained planes); with several, each goes to DIR/PART/",
    )
    parser.add_argument(
        "--probabilities",
        action="store_true",
        help="also write class probabilities (float32, X x Y x Z x C) to .../probabilities/",
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (default: CUDA if available, else CPU; under torchrun cuda:LOCAL_RANK), "
        "cpu, cuda, cuda:1, ...",
    )
    parser.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "bf16", "fp32"),
        help="auto: bf16 where the hardware supports it (default)",
    )
    parser.add_argument(
        "--no-quality",
        action="store_true",
        help="skip the quality flags (DIR/quality.json, quality_cases.csv, quality_slices.csv: "
        "the cases and slices to check first, from the base models' disagreement with the "
        "meta-model and its entropy)",
    )
    parser.add_argument(
        "--no-mirror",
        action="store_true",
        help="no test-time mirroring (the plan's inference.mirror_axes: 2^n passes of each 3D "
        "network, averaged): faster, slightly less accurate",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from sparseseg import distributed
    from sparseseg.predict import parse_parts, predict_files

    parse_parts(args.part)  # a bad list fails before any model is loaded
    with distributed.session(args.device) as device:  # joins torchrun's group, if any
        written = predict_files(
            args.model,
            args.input,
            args.out,
            parts=args.part,
            probabilities=args.probabilities,
            device=str(device),
            precision=args.precision,
            progress=not args.quiet and distributed.is_main(),
            quality=not args.no_quality,
            mirror=not args.no_mirror,
        )
        if not distributed.is_main():
            return 0
    files = sum(len(v) for v in written.values())
    print(f"wrote {files} label maps for {len(written)} images to {args.out}")
    return 0
