"""The one exception type that the CLI turns into a single clear line and exit code 2."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad user input: a missing, corrupt or inconsistent file, or an impossible request.

    The message names the file (when there is one) and the problem, in one line.
    """

    def __init__(self, problem: str, path: str | Path | None = None):
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")
