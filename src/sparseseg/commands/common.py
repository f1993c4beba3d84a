"""Arguments shared by the commands that train models (pseudolabel, train, experiment)."""

from __future__ import annotations

import argparse

from sparseseg.config import PRESETS


def add_preset_arguments(parser: argparse.ArgumentParser, example: str) -> None:
    """``--preset`` and the repeatable ``--set FIELD=VALUE`` (``example`` shows one)."""
    parser.add_argument(
        "--preset", default="cpu", choices=tuple(PRESETS), help="sizes and schedules (cpu)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help=f"override a preset field, e.g. {example} (repeatable)",
    )


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """``--resume`` and ``--overwrite``, with one meaning for train, pseudolabel and experiment.

    An existing --out is reused (finished parts skipped) only if it was made from the same data
    and settings; otherwise the command stops, unless --overwrite.
    """
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue interrupted training from its last checkpoint (finished parts of --out "
        "are reused whenever it was made from the same data and settings; without --resume an "
        "interrupted training starts again)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out if it exists, even if made from other data or settings (the old "
        "one stays in place until the new one is complete)",
    )


def add_run_arguments(parser: argparse.ArgumentParser, resume_help: str | None = None) -> None:
    """``--resume`` (when ``resume_help`` is given), ``--device`` and ``--quiet``."""
    if resume_help is not None:
        parser.add_argument("--resume", action="store_true", help=resume_help)
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (default: CUDA if available, else CPU; under torchrun cuda:LOCAL_RANK), "
        "cpu, cuda, cuda:1, ...",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
