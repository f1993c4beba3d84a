"""The progress bars of every command, in one place.

On a terminal (or in a notebook) they are ordinary tqdm bars. When stderr is not a terminal (a
log file, a pipe, a batch job) a bar that redraws itself would write a carriage-return update
several times a second into the log; there it prints a plain line instead, at most one every
:data:`LOG_INTERVAL` seconds, plus the last one when the bar closes.
"""

from __future__ import annotations

import sys
from typing import Any

LOG_INTERVAL = 60.0  # seconds between progress lines when stderr is not a terminal


class _Lines:
    """A stream for tqdm that turns its carriage-return redraws into whole lines."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").rstrip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def _interactive() -> bool:
    if "ipykernel" in sys.modules:  # a notebook: tqdm.auto draws a widget
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def progress_bar(iterable: Any = None, *, enabled: bool = True, **kwargs: Any):
    """A tqdm bar over ``iterable`` (or with ``total=``), hidden when not ``enabled``;
    ``kwargs`` go to tqdm (desc, unit, total, initial, ...)."""
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", not enabled)
    if not _interactive():
        kwargs.update(file=_Lines(sys.stderr), mininterval=LOG_INTERVAL, dynamic_ncols=False)
        kwargs.setdefault("ncols", 100)
    return tqdm(iterable, **kwargs)
