"""``sparseseg phantom``: write a phantom dataset (the embedded default data)."""

from __future__ import annotations

import argparse

HELP = "write a phantom dataset (MR-like hearts or serial-section EM) in the canonical layout"


def _shape(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 4:
        raise argparse.ArgumentTypeError(f"expected X,Y,Z of at least 4 voxels each, got {text!r}")
    return values  # type: ignore[return-value]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="dataset folder to create")
    parser.add_argument("--kind", choices=("heart", "em"), default="heart", help="default: heart")
    parser.add_argument("--cases", type=int, default=10, help="training cases (default 10)")
    parser.add_argument("--test-cases", type=int, default=0, help="test cases (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--shape",
        type=_shape,
        default=None,
        help="volume shape X,Y,Z (default 64,64,40 for heart, 128,128,24 for em)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sparseseg.data.layout import Dataset
    from sparseseg.data.phantom import write_phantom_dataset
    from sparseseg.errors import InputError

    out = Path(args.out)
    if args.cases < 1 or args.test_cases < 0:
        raise InputError("need --cases >= 1 and --test-cases >= 0")
    if out.exists() and not args.overwrite:
        raise InputError("output already exists (pass --overwrite to replace it)", out)
    write_phantom_dataset(
        out, args.kind, args.cases, args.seed, args.test_cases, args.shape, args.overwrite
    )
    ds = Dataset.open(out)
    image = ds.load_image(ds.cases("Tr")[0])
    spacing = "x".join(f"{s:g}" for s in image.spacing)
    print(
        f"wrote {args.kind} phantom {out}: {args.cases} train + {args.test_cases} test cases, "
        f"shape {'x'.join(map(str, image.shape))}, spacing {spacing} mm, "
        f"labels {', '.join(f'{k}={v}' for k, v in ds.labels.items())}"
    )
    return 0
