"""A case store on disk: the training arrays of each case as .npy files, read memory-mapped.

Training samplers draw small crops from many cases; holding every case in memory does not scale
(100 CT volumes of 512 x 512 x 300 are ~30 GiB as float32). The store writes each case's arrays
once and hands out :class:`StoredCase` mappings whose items are opened memory-mapped on each
access, so a crop reads only the pages it needs and nothing stays mapped after the crop is made
(a mapping held for the whole run would keep every page it ever touched in the resident set).

Layout of a store folder (``MODEL/cache/train/``, ``MODEL/cache/meta/``)::

    CASE.KEY.npy     one array per key (e.g. 'image', 'label'), written atomically
    CASE.json        {'source': what the arrays were made from, 'keys': {KEY: [shape, dtype]}},
                     written last: a case is valid only once its record matches its source

``source`` is any JSON-plain value that changes when the inputs change; :func:`file_source`
gives one for input files (name, size and modification time of each), so a replaced or edited
source file makes the case be rebuilt. Arrays are stored in the dtype they are given: images as
the float32 z-scored volumes training uses (bitwise the arrays the in-memory path computes, so
results do not change; float16 would halve the disk but change every crop), labels as int16.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from sparseseg.fileio import atomic_path, write_json

CACHE_DIR = "cache"  # MODEL/cache: the stores of one model folder, removed once training is done


def file_source(paths: Sequence[str | Path]) -> list[list]:
    """[name, size in bytes, modification time in ns] of each file: a cheap change detector."""
    out = []
    for path in paths:
        st = os.stat(path)
        out.append([Path(path).name, int(st.st_size), int(st.st_mtime_ns)])
    return out


class StoredCase(Mapping):
    """The arrays of one case, ``{key: np.memmap}``; each access maps the file afresh
    (copy-on-write: writable for consumers such as ``torch.from_numpy``, never written back)."""

    def __init__(self, paths: Mapping[str, Path]):
        self._paths = dict(paths)

    def __getitem__(self, key: str) -> np.ndarray:
        return np.load(self._paths[key], mmap_mode="c")

    def __contains__(self, key: object) -> bool:
        return key in self._paths

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)


class CaseStore:
    """Per-case arrays under ``root`` (see the module doc)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, case: str, key: str) -> Path:
        return self.root / f"{case}.{key}.npy"

    def _record_path(self, case: str) -> Path:
        return self.root / f"{case}.json"

    def record(self, case: str) -> dict | None:
        try:
            return json.loads(self._record_path(case).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def valid(self, case: str, source: Any) -> bool:
        """Whether ``case`` was written from ``source`` and all its arrays are in place."""
        rec = self.record(case)
        if rec is None or rec.get("source") != json.loads(json.dumps(source)):
            return False
        return all(self.path(case, key).exists() for key in rec.get("keys", {}))

    def write(self, case: str, arrays: Mapping[str, np.ndarray], source: Any) -> None:
        """Write every array of ``case`` atomically, then its record."""
        self._record_path(case).unlink(missing_ok=True)  # invalid until complete
        keys = {}
        for key, array in arrays.items():
            array = np.ascontiguousarray(array)
            with atomic_path(self.path(case, key)) as tmp, open(tmp, "wb") as f:
                np.save(f, array)
            keys[key] = [list(array.shape), array.dtype.str]
        write_json(self._record_path(case), {"source": source, "keys": keys})

    def case(self, case: str) -> StoredCase:
        rec = self.record(case) or {}
        return StoredCase({key: self.path(case, key) for key in rec.get("keys", {})})

    def ensure(
        self, case: str, source: Any, make: Callable[[], Mapping[str, np.ndarray]]
    ) -> StoredCase:
        """The stored case, written first from ``make()`` unless valid for ``source``."""
        if not self.valid(case, source):
            self.write(case, make(), source)
        return self.case(case)


def training_store(
    dataset,
    root: str | Path,
    split: str = "Tr",
    target_spacing: Sequence[float] | None = None,
) -> list[StoredCase]:
    """Store (or reuse) ``{'image': z-scored float32, 'label': int16}`` of every case of
    ``split``, one case in memory at a time; returns the cases in :meth:`Dataset.cases` order,
    each the arrays of :func:`sparseseg.pseudolabels.training_case` (on the grid of
    ``target_spacing`` where a case's differs)."""
    from sparseseg.pseudolabels import training_case

    store = CaseStore(root)
    out = []
    for case in dataset.cases(split):
        paths = [*dataset.image_paths(case, split), dataset.label_path(case, split)]
        make = partial(training_case, dataset, case, split, target_spacing)
        out.append(store.ensure(case, _source(file_source(paths), target_spacing), make))
    return out


def _source(files: list, target_spacing: Sequence[float] | None, **more) -> dict:
    """A case's source record: its files, the target spacing where one is set, and ``more``."""
    spacing = {} if target_spacing is None else {"target_spacing": list(target_spacing)}
    return {"files": files, **spacing, **more}


def meta_store(
    dataset,
    stage2_dir: str | Path,
    sets: Sequence[str],
    root: str | Path,
    target_spacing: Sequence[float] | None = None,
) -> list[StoredCase]:
    """Store (or reuse) the meta-model's sample of every training case under ``root/meta``:
    ``{'image': float32 (Cin + C, X, Y, Z), 'targets': uint8 (K, X, Y, Z)}`` as
    :func:`sparseseg.pseudolabels.read_meta_case` makes it, from the z-scored images of
    ``root/train`` (built there when missing, on the grid of ``target_spacing``) and the A(Y)
    maps and PL ``sets`` of ``stage2_dir`` (made on that grid); one case in memory at a time."""
    from sparseseg.pseudolabels import mean_path, pl_path, read_meta_case

    root = Path(root)
    train = training_store(dataset, root / "train", "Tr", target_spacing)
    store = CaseStore(root / "meta")
    out = []
    for case, stored in zip(dataset.cases("Tr"), train, strict=True):
        derived = [_existing(mean_path(stage2_dir, case))]
        derived += [_existing(pl_path(stage2_dir, s, case)) for s in sets]
        files = file_source([*dataset.image_paths(case), *derived])
        source = _source(files, target_spacing, sets=list(sets))
        make = partial(read_meta_case, stage2_dir, case, sets, stored["image"])
        out.append(store.ensure(case, source, make))
    return out


def _existing(path: Path) -> Path:
    """``path``, or its uncompressed '.nii' twin where only that exists."""
    if not path.exists() and path.name.endswith(".nii.gz"):
        twin = path.with_name(path.name[: -len(".gz")])
        if twin.exists():
            return twin
    return path
