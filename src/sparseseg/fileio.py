"""Atomic writes: an output file or folder appears whole or not at all.

Every file is written to a temporary sibling, flushed to disk (fsync), then renamed onto its name,
and the rename itself is flushed (fsync of the folder); so after a crash or power loss a name holds
either the complete old content or the complete new one. A replaced folder is swapped in with one
atomic exchange (``renameat2(RENAME_EXCHANGE)`` on Linux): the name always holds a complete
folder, old or new. Where the exchange is unavailable, the old folder is first renamed to a hidden
sibling ``.NAME.old-*`` and deleted only once the new one is in place, so at every moment one of
them is whole on disk (under its name or that sibling's).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Tests only: ``SPARSESEG_TEST_KILL_AT=NAME[#N]`` makes the process SIGKILL itself right after the
# N-th (default: first) file or folder named NAME is committed (see :func:`_after_commit`).
KILL_AT_ENV = "SPARSESEG_TEST_KILL_AT"
_commits: dict[str, int] = {}


def _after_commit(path: Path) -> None:
    """Crash-test hook: kill this process where ``SPARSESEG_TEST_KILL_AT`` says (else nothing)."""
    target = os.environ.get(KILL_AT_ENV)
    if not target:
        return
    name, _, nth = target.partition("#")
    if path.name == name:
        _commits[name] = _commits.get(name, 0) + 1
        if _commits[name] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)


def fsync_path(path: str | Path) -> None:
    """Flush a file's or folder's content (for a folder: its entries) to disk.

    A folder that cannot be flushed (a file system or OS without it) is left as it is."""
    is_dir = os.path.isdir(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if is_dir:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not is_dir:
            raise
    finally:
        os.close(fd)


def fsync_tree(path: str | Path) -> None:
    """fsync every file and folder under ``path`` (``path`` included)."""
    for folder, _dirs, files in os.walk(path):
        for name in files:
            if not os.path.islink(os.path.join(folder, name)):
                fsync_path(os.path.join(folder, name))
        fsync_path(folder)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffixes); rename it onto ``path`` on success.

    The temporary file keeps the full suffix (``.nii.gz``) so writers that infer the format from the
    name still work. It is fsynced before the rename. On error the temporary file is removed and
    ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) if path.suffixes else ""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        fsync_path(tmp_path)
        os.replace(tmp_path, path)
        fsync_path(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    _after_commit(path)


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap the names ``a`` and ``b`` (both must exist); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    res = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return res == 0


def replace_dir(new: Path, path: Path) -> None:
    """Put folder ``new`` in place of ``path`` (a folder, a file, or nothing) and delete the old.

    ``new`` must be a sibling of ``path`` (same file system). Its files are fsynced first. The
    name ``path`` never lacks a whole output: an atomic exchange where the OS has one, else the
    old is renamed aside (``.NAME.old-*``) just before ``new`` is renamed in.
    """
    fsync_tree(new)
    if not (path.exists() or path.is_symlink()):
        os.replace(new, path)
    else:
        aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        if path.is_dir() and not path.is_symlink() and _exchange(new, path):
            os.replace(new, aside / path.name)  # the old folder, out of the way, then deleted
        else:
            os.replace(path, aside / path.name)
            os.replace(new, path)
        shutil.rmtree(aside)
    fsync_path(path.parent)
    _after_commit(path)


@contextlib.contextmanager
def atomic_dir(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; move it to ``path`` when the block succeeds.

    Raises FileExistsError if ``path`` exists and ``overwrite`` is false. With ``overwrite`` the
    old ``path`` stays whole until the new folder replaces it (see :func:`replace_dir`).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(path)
    created = [p for p in path.parents if not p.exists()]  # removed again if the block fails
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    done = False
    try:
        yield tmp
        replace_dir(tmp, path)
        done = True
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
        if not done:
            for parent in created:  # deepest first
                with contextlib.suppress(OSError):
                    parent.rmdir()


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_text(path: str | Path, text: str) -> None:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
