"""The canonical on-disk layout: an nnU-Net v2 raw dataset.

    ROOT/dataset.json                 labels {name: value}, channel_names, file_ending, numTraining
    ROOT/imagesTr/CASE_0000.nii.gz    training images: one file per channel of ``channel_names``
    ROOT/imagesTr/CASE_0001.nii.gz    (CASE_0000, CASE_0001, ...), all on the same grid
    ROOT/labelsTr/CASE.nii.gz         training labels; sparse labels use the ``ignore`` value
    ROOT/imagesTs/, ROOT/labelsTs/    optional test split

As nnU-Net requires, the class values of ``labels`` are consecutive, 0..C-1, and a label named
``ignore`` (unannotated voxels) has the highest value, so the sparse and pseudo labels written
here train nnU-Net as they are. :meth:`Dataset.open` checks dataset.json and that every case
has all its channel files; every label file is checked against dataset.json when it is read
(each file is read once; a value not declared is an InputError naming the file and the values,
before any training starts).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from sparseseg.data.io import read_nifti, write_nifti
from sparseseg.data.volume import Volume
from sparseseg.errors import InputError
from sparseseg.fileio import write_json

IGNORE = "ignore"
FILE_ENDING = ".nii.gz"
SPLITS = ("Tr", "Ts")


def with_ignore(labels: dict[str, int]) -> dict[str, int]:
    """Add an ``ignore`` label one above the highest class value (no-op if present)."""
    if IGNORE in labels:
        return dict(labels)
    return {**labels, IGNORE: max(labels.values()) + 1}


def write_dataset_json(
    root: str | Path,
    labels: dict[str, int],
    num_training: int,
    channel_names: dict[str, str] | None = None,
    name: str = "",
    **extra,
) -> None:
    """Write ROOT/dataset.json in nnU-Net v2 form."""
    meta = {
        "name": name or Path(root).name,
        "channel_names": channel_names or {"0": "image"},
        "labels": {k: int(v) for k, v in sorted(labels.items(), key=lambda kv: kv[1])},
        "numTraining": int(num_training),
        "file_ending": FILE_ENDING,
        **extra,
    }
    write_json(Path(root) / "dataset.json", meta)


def channel_file(case: str, channel: int, file_ending: str = FILE_ENDING) -> str:
    """'heart_001', 1 -> 'heart_001_0001.nii.gz' (nnU-Net's channel suffix)."""
    return f"{case}_{channel:04d}{file_ending}"


def write_case(
    root: str | Path, case: str, image: Volume, label: Volume | None = None, split: str = "Tr"
) -> None:
    """Write one case's image (and label) into ROOT, each file atomically.

    An image of shape (C, X, Y, Z) is written as C channel files CASE_0000, CASE_0001, ...
    """
    root = Path(root)
    channels = image.array if image.array.ndim == 4 else [image.array]
    for c, array in enumerate(channels):
        write_nifti(root / f"images{split}" / channel_file(case, c), image.with_array(array))
    if label is not None:
        write_nifti(root / f"labels{split}" / f"{case}{FILE_ENDING}", label)


@dataclass(frozen=True)
class Dataset:
    """A dataset in the canonical layout. Open with :meth:`Dataset.open`."""

    root: Path
    meta: dict

    @classmethod
    def open(cls, root: str | Path) -> Dataset:
        root = Path(root)
        meta_path = root / "dataset.json"
        if not root.is_dir():
            raise InputError("dataset folder not found", root)
        if not meta_path.exists():
            raise InputError("not a dataset: dataset.json is missing", root)
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise InputError(f"invalid JSON ({exc})", meta_path) from None
        labels = meta.get("labels")
        if not isinstance(labels, dict) or not labels:
            raise InputError("'labels' must map label names to integer values", meta_path)
        if not all(isinstance(v, int) for v in labels.values()):
            raise InputError(
                "label values must be integers (region labels are not supported)", meta_path
            )
        if IGNORE in labels and labels[IGNORE] != max(labels.values()):
            raise InputError("the 'ignore' label must have the highest value", meta_path)
        check_declared_labels(labels, meta_path)
        channels = meta.get("channel_names", {"0": "image"})
        if not isinstance(channels, dict) or sorted(channels) != [
            str(c) for c in range(len(channels))
        ]:
            raise InputError(
                "'channel_names' must map the channel numbers '0', '1', ... to names", meta_path
            )
        dataset = cls(root, meta)
        if not dataset.cases("Tr") and not dataset.cases("Ts"):
            raise InputError("dataset has no cases in imagesTr or imagesTs", root)
        for split in SPLITS:  # every channel file of every case (names only; cheap)
            for case in dataset.cases(split):
                for path in dataset.image_paths(case, split)[1:]:
                    if not path.exists():
                        raise InputError(
                            f"channel file missing (dataset.json declares "
                            f"{dataset.num_channels} channels)",
                            path,
                        )
        return dataset

    # Labels -----------------------------------------------------------------------------------
    @property
    def labels(self) -> dict[str, int]:
        """All labels, ``ignore`` included, name -> value."""
        return dict(self.meta["labels"])

    @property
    def class_labels(self) -> dict[str, int]:
        """Segmentation classes (background included, ``ignore`` excluded), name -> value."""
        return {k: v for k, v in self.labels.items() if k != IGNORE}

    @property
    def class_names(self) -> list[str]:
        return [k for k, _ in sorted(self.class_labels.items(), key=lambda kv: kv[1])]

    @property
    def num_classes(self) -> int:
        """Number of classes C; class values must be 0..C-1."""
        return len(self.class_labels)

    @property
    def ignore_value(self) -> int | None:
        return self.labels.get(IGNORE)

    @property
    def name(self) -> str:
        return str(self.meta.get("name", self.root.name))

    @property
    def num_channels(self) -> int:
        """Number of image channels (files CASE_0000, CASE_0001, ... per case)."""
        return len(self.meta.get("channel_names", {"0": "image"}))

    # Files ------------------------------------------------------------------------------------
    @property
    def file_ending(self) -> str:
        return self.meta.get("file_ending", FILE_ENDING)

    def cases(self, split: str = "Tr") -> list[str]:
        """Case identifiers of a split, sorted."""
        folder = self.root / f"images{split}"
        if not folder.is_dir():
            return []
        suffix = f"_0000{self.file_ending}"
        return sorted(p.name[: -len(suffix)] for p in folder.glob(f"*{suffix}"))

    def image_path(self, case: str, split: str = "Tr", channel: int = 0) -> Path:
        return self.root / f"images{split}" / channel_file(case, channel, self.file_ending)

    def image_paths(self, case: str, split: str = "Tr") -> list[Path]:
        """The files of every channel of a case, CASE_0000 first."""
        return [self.image_path(case, split, c) for c in range(self.num_channels)]

    def label_path(self, case: str, split: str = "Tr") -> Path:
        return self.root / f"labels{split}" / f"{case}{self.file_ending}"

    def has_labels(self, split: str = "Tr") -> bool:
        cases = self.cases(split)
        return bool(cases) and all(self.label_path(c, split).exists() for c in cases)

    # Loading ----------------------------------------------------------------------------------
    def load_image(self, case: str, split: str = "Tr") -> Volume:
        """The image as float32: (X, Y, Z) with one channel, (C, X, Y, Z) with C > 1 (every
        channel file, each checked to be on the grid of CASE_0000)."""
        return replace(read_channels(self.image_paths(case, split)), name=case)

    def load_label(self, case: str, split: str = "Tr", image: Volume | None = None) -> Volume:
        """The label map as int16 (X, Y, Z), checked against the declared labels and the image."""
        path = self.label_path(case, split)
        vol = read_nifti(path, dtype=np.int16)
        check_label_values(vol.array, self.labels.values(), path)
        if image is not None:
            check_same_geometry(image, vol, path)
        return replace(vol, name=case)

    def load_pair(self, case: str, split: str = "Tr") -> tuple[Volume, Volume]:
        image = self.load_image(case, split)
        return image, self.load_label(case, split, image)


def read_channels(paths: list[Path]) -> Volume:
    """The channel files of one case (CASE_0000 first) -> float32 (X, Y, Z) for one file,
    (C, X, Y, Z) for C; InputError for a missing channel file or one off the grid of the first."""
    first = read_nifti(paths[0], dtype=np.float32)
    if len(paths) == 1:
        return first
    arrays = [first.array]
    for path in paths[1:]:
        if not Path(path).exists():
            raise InputError(f"channel file missing (the case has {len(paths)} channels)", path)
        other = read_nifti(path, dtype=np.float32)
        check_same_geometry(first, other, path, what="channel")
        arrays.append(other.array)
    return replace(first, array=np.stack(arrays))


def check_declared_labels(labels: dict[str, int], path: str | Path) -> None:
    """Raise InputError unless the class values are 0..C-1 (nnU-Net's rule), ``ignore`` aside."""
    values = sorted(int(v) for k, v in labels.items() if k != IGNORE)
    if values != list(range(len(values))):
        raise InputError(
            f"label values {values} are not consecutive: nnU-Net requires classes 0..C-1 "
            f"(here 0..{len(values) - 1}) plus an optional 'ignore' label with the highest value",
            path,
        )


def check_label_values(array: np.ndarray, allowed, path: str | Path) -> None:
    """Raise InputError if ``array`` holds values outside ``allowed``."""
    values = np.unique(array)
    extra = sorted(set(values.tolist()) - {int(v) for v in allowed})
    if extra:
        raise InputError(
            f"label values {extra} are not declared (declared: {sorted(int(v) for v in allowed)})",
            path,
        )


def check_same_geometry(
    image: Volume, label: Volume, path: str | Path, what: str = "label"
) -> None:
    """Raise InputError unless image and label (or another ``what``) share spatial shape and
    affine (to 1e-3 of a voxel)."""
    if image.shape[-3:] != label.shape[-3:]:
        raise InputError(
            f"{what} shape {label.shape[-3:]} differs from image shape {image.shape[-3:]}", path
        )
    tolerance = 1e-3 * min(image.spacing)  # EM voxels are a few nm: an absolute mm bound is useless
    if not np.allclose(image.affine, label.affine, atol=tolerance, rtol=1e-4):
        raise InputError(f"{what} affine differs from the image affine", path)
