"""Output folders of long jobs (train, pseudolabel, experiment): reuse only what matches.

A job's folder records what it was made from in ``fingerprint.json`` (see
:mod:`sparseseg.fingerprint`), written before any other file, so even an interrupted job's folder
can be checked. :func:`claim` decides where a job works:

* no folder (or an empty one, or one holding only its fingerprint): the job starts there;
* a folder with the same fingerprint: the job continues there, reusing what is finished
  (``resume`` then decides whether interrupted training continues from its checkpoint);
* a folder with another fingerprint, or none: refused with one line naming what differs, unless
  ``overwrite``;
* ``overwrite`` and an existing folder: the job works in the hidden sibling ``.NAME.overwrite``
  and :func:`commit` swaps it in when the job is done, so the old output stays whole and in place
  until the new one is complete. An interrupted overwrite continues in that sibling when run again
  with ``overwrite`` and the same fingerprint.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from sparseseg import fingerprint as fp
from sparseseg.errors import InputError
from sparseseg.fileio import replace_dir


def staging_path(out: str | Path) -> Path:
    """Where an overwrite of ``out`` is built: the hidden sibling ``.NAME.overwrite``."""
    out = Path(out)
    return out.parent / f".{out.name}.overwrite"


def check(folder: Path, current: dict[str, Any], what: str) -> None:
    """InputError unless ``folder`` records the fingerprint ``current``."""
    stored = fp.read(folder)
    if stored is None:
        raise InputError(
            f"{what} exists but records no fingerprint of the data it was made from (written by "
            "an older sparseseg, or not a sparseseg output); use --overwrite to replace it, or "
            "another --out",
            folder,
        )
    diff = fp.differences(fp.normalise(stored), fp.normalise(current))
    if diff:
        raise InputError(
            f"{what} was made from {fp.describe(diff)}; use --overwrite to replace it, or "
            "another --out",
            folder,
        )


def _holds_no_work(path: Path) -> bool:
    """True for an empty folder, or one holding only its fingerprint (a job that stopped before
    writing anything, e.g. on a bad setting): nothing there to protect or to reuse."""
    return path.is_dir() and all(p.name == fp.FILE for p in path.iterdir())


def claim(out: str | Path, current: dict[str, Any], *, overwrite: bool, what: str) -> Path:
    """The folder to work in for output ``out`` made from ``current`` (see the module docstring).

    Returns ``out`` itself, or with ``overwrite`` and an existing ``out`` the staging sibling
    (pass it to :func:`commit` at the end). Writes the fingerprint into a new folder.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{what} must be a folder, not a file", out)
    work = out
    if out.exists() and not _holds_no_work(out):
        if not overwrite:
            check(out, current, what)
            return out
        work = staging_path(out)
        staged = fp.read(work)
        if work.exists() and (
            staged is None or fp.differences(fp.normalise(staged), fp.normalise(current))
        ):
            shutil.rmtree(work)  # a staging folder of another job: never an output
    work.mkdir(parents=True, exist_ok=True)
    if fp.read(work) is None or _holds_no_work(work):
        fp.write(work, current)
    return work


def commit(work: Path, out: str | Path) -> None:
    """Put the finished ``work`` folder in place of ``out`` (nothing to do if they are the same)."""
    out = Path(out)
    if Path(work) != out:
        replace_dir(Path(work), out)
