"""What an output folder was made from: the data and the settings, as a small JSON dict.

A fingerprint has these keys (every hash a sha256 hex digest)::

    dataset       the dataset's name (dataset.json 'name', else the folder name)
    dataset_json  hash of dataset.json's content (parsed, re-serialised with sorted keys)
    labelsTr      hash of every label file of the split: file name, shape and voxel values
    imagesTr      hash of every image file of the split: file name and header (shape, affine,
                  stored dtype)
    labelsTs, imagesTs   the same for the test split, where asked for
    settings      the resolved settings, JSON-plain (e.g. ``{"preset": Preset.to_dict()}``)

Labels are hashed by content, decoded (so rewriting the same labels with another compression or
integer type hashes the same). Images are hashed by header only: hashing their voxels would read
every image in full on each run (gigabytes for real volumes), so an image whose voxels changed
under an identical header, shape and affine is not detected. A folder moved or renamed keeps its
fingerprint (paths are not part of it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

FILE = "fingerprint.json"

# What a differing key means, for the one-line refusal (first match of the key's prefix wins).
_KINDS = (
    ("settings", "other settings"),
    ("labels", "other labels"),
    ("images", "other images"),
    ("dataset", "another dataset"),
)


def plain(obj: Any) -> Any:
    """JSON round trip: tuples become lists, so settings compare equal to what was stored."""
    return json.loads(json.dumps(obj))


def _split_files(root: Path, split: str, kind: str, ending: str) -> list[Path]:
    folder = root / f"{kind}{split}"
    return sorted(folder.glob(f"*{ending}")) if folder.is_dir() else []


def labels_hash(files: Sequence[Path]) -> str:
    """Hash of label maps by content: each file's name, shape and voxel values (as int32)."""
    import nibabel as nib

    h = hashlib.sha256()
    for path in files:
        data = np.asanyarray(nib.load(str(path)).dataobj)
        if data.dtype.kind == "f":
            data = np.rint(data)
        h.update(f"{path.name}|{data.shape}|".encode())
        h.update(np.ascontiguousarray(data, dtype=np.int32).tobytes())
    return h.hexdigest()


def images_hash(files: Sequence[Path]) -> str:
    """Hash of images by header: each file's name, shape, affine (to 1e-6) and stored dtype."""
    import nibabel as nib

    h = hashlib.sha256()
    for path in files:
        img = nib.load(str(path))
        affine = np.round(np.asarray(img.affine, dtype=np.float64), 6) + 0.0  # no -0.0
        h.update(f"{path.name}|{img.shape}|{img.get_data_dtype().str}|".encode())
        h.update(affine.tobytes())
    return h.hexdigest()


def dataset_fingerprint(dataset, splits: Sequence[str] = ("Tr", "Ts")) -> dict[str, str]:
    """The data part of a fingerprint of a :class:`sparseseg.data.layout.Dataset`."""
    root, ending = Path(dataset.root), dataset.file_ending
    meta = json.dumps(dataset.meta, sort_keys=True).encode()
    out = {"dataset": dataset.name, "dataset_json": hashlib.sha256(meta).hexdigest()}
    for split in splits:
        out[f"labels{split}"] = labels_hash(_split_files(root, split, "labels", ending))
        out[f"images{split}"] = images_hash(_split_files(root, split, "images", ending))
    return out


def make(data: dict[str, str], settings: dict[str, Any]) -> dict[str, Any]:
    """A fingerprint from :func:`dataset_fingerprint` and the resolved ``settings``."""
    return {**data, "settings": plain(settings)}


def normalise(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """``fingerprint`` with a stored preset completed by today's defaults, so a folder written
    before a preset field existed still matches (the field then takes its default)."""
    from sparseseg.config import preset_from_dict

    settings = fingerprint.get("settings")
    if not isinstance(settings, dict) or not isinstance(settings.get("preset"), dict):
        return fingerprint
    try:
        preset = plain(preset_from_dict(settings["preset"]).to_dict())
    except Exception:  # noqa: BLE001 - an unreadable preset simply differs
        return fingerprint
    return {**fingerprint, "settings": {**settings, "preset": preset}}


def differences(stored: Any, current: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two fingerprints (leaves of nested dicts)."""
    if isinstance(stored, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(stored) | set(current), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in stored or key not in current:
                out.append(name)
            else:
                out += differences(stored[key], current[key], name)
        return out
    return [] if stored == current else [prefix or "value"]


def describe(keys: Sequence[str], limit: int = 4) -> str:
    """'other labels (labelsTr differs)' and the like, for a refusal message."""
    kinds = []
    for key in keys:
        kind = next((k for p, k in _KINDS if key.startswith(p)), "other inputs")
        if kind not in kinds:
            kinds.append(kind)
    shown = ", ".join(keys[:limit]) + (
        f" and {len(keys) - limit} more" if len(keys) > limit else ""
    )
    verb = "differs" if len(keys) == 1 else "differ"
    return f"{' and '.join(kinds)} ({shown} {verb})"


def read(folder: str | Path) -> dict[str, Any] | None:
    """FOLDER/fingerprint.json, or None where there is none (or it is unreadable)."""
    path = Path(folder) / FILE
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def write(folder: str | Path, fingerprint: dict[str, Any]) -> None:
    from sparseseg.fileio import write_json

    write_json(Path(folder) / FILE, fingerprint)
