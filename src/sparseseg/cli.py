"""The ``sparseseg`` command: parses arguments, calls the library, prints.

Each subcommand lives in ``sparseseg.commands.<name>`` and provides ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``. Those modules import heavy libraries (torch)
inside ``run`` so that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from sparseseg import __version__
from sparseseg.errors import InputError

# Subcommand name -> module under sparseseg.commands, in the order users meet them.
COMMANDS: dict[str, str] = {
    "phantom": "phantom",
    "import": "import_",
    "select": "select",
    "advise": "advise",
    "annotate": "annotate",
    "annotations": "annotations",
    "pseudolabel": "pseudolabel",
    "train": "train",
    "predict": "predict",
    "evaluate": "evaluate",
    "experiment": "experiment",
    "demo": "demo",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparseseg",
        description="Choose the few slices worth annotating, then train a dense 3D segmentation "
        "model from them.",
    )
    parser.add_argument("--version", action="version", version=f"sparseseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"sparseseg.commands.{module_name}")
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except InputError as exc:
        print(f"sparseseg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sparseseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
