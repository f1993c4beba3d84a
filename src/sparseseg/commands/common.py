"""Arguments shared by the commands that train models (pseudolabel, train, experiment)."""

from __future__ import annotations

import argparse

from sparseseg.config import DEFAULT_PRESET, PRESETS


class _Minutes(argparse.Action):
    """``--minutes M`` is the override ``budget_minutes=M``."""

    def __call__(self, parser, namespace, values, option_string=None):
        if values <= 0:
            parser.error("--minutes must be positive")
        items = list(getattr(namespace, self.dest, None) or [])
        setattr(namespace, self.dest, [*items, f"budget_minutes={values}"])


def add_preset_arguments(parser: argparse.ArgumentParser, example: str) -> None:
    """``--preset``, the repeatable ``--set FIELD=VALUE`` (``example`` shows one) and
    ``--minutes``."""
    parser.add_argument(
        "--preset",
        default=DEFAULT_PRESET,
        choices=tuple(PRESETS),
        help=f"sizes and schedules (default {DEFAULT_PRESET}: planned from the dataset, DynUNet "
        "networks, with a time budget set by --minutes, 30 minutes on a CPU by default; cpu, "
        "cpu-aniso, paper: fixed sizes and schedules)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help=f"override a preset field, e.g. {example} (repeatable)",
    )
    parser.add_argument(
        "--minutes",
        dest="overrides",
        type=float,
        action=_Minutes,
        metavar="M",
        help="time budget of the whole training in minutes (preset auto, the default): a short "
        "probe of this machine turns it into iterations (default: 30 on a CPU, the paper's "
        "schedule on a GPU)",
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
