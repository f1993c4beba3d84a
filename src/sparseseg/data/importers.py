"""Importers: convert public data layouts into the canonical nnU-Net layout (see ``layout``).

Four sources:

- ``pairs``: an images folder and a labels folder with matching file names (NIfTI or TIFF stacks).
- ``msd``: a Medical Segmentation Decathlon task folder (``dataset.json``, ``imagesTr``,
  ``labelsTr``); multi-modal (4D) images become one file per channel (``CASE_0000``,
  ``CASE_0001``, ...), or one chosen ``channel``. MSD's unlabelled ``imagesTs`` is not imported
  (a test split here is for scoring, so it needs labels).
- ``hvsmr2016``: ``training_axial_crop_patN.nii.gz`` with ``training_axial_crop_patN-label.nii.gz``
  (labels 0 background, 1 myocardium, 2 blood pool).
- ``em_stack``: one serial-section stack (slice folder in numeric order, multi-page TIFF or
  NIfTI) with a label stack whose raw pixel values are mapped to classes; a Z range can be cut
  off as the test case.

Every importer checks each case (readable, 3D, finite, image and label geometry agree, label
values declared) and builds the whole output folder atomically: on any error nothing appears.
Images are stored as float32 (16- and 32-bit integer images keep their type), labels as uint8
(int16 above 255 classes), each with its source affine.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sparseseg.data.io import NIFTI_SUFFIXES, read_nifti, read_volume, strip_nifti_suffix
from sparseseg.data.layout import (
    check_label_values,
    check_same_geometry,
    write_case,
    write_dataset_json,
)
from sparseseg.data.volume import Volume
from sparseseg.errors import InputError
from sparseseg.fileio import atomic_dir

HVSMR_LABELS = {"background": 0, "myocardium": 1, "blood_pool": 2}
# ISBI 2012 serial-section TEM: 4 x 4 nm pixels, 50 nm sections, in mm.
ISBI_SPACING = (4e-6, 4e-6, 5e-5)
VOLUME_SUFFIXES = (*NIFTI_SUFFIXES, ".tif", ".tiff")
KEEP_IMAGE_DTYPES = (np.int16, np.uint16, np.int32)


@dataclass(frozen=True)
class CaseFiles:
    """One case to import: its identifier, image file and label file."""

    case: str
    image: Path
    label: Path


@dataclass
class ImportSummary:
    """What an importer wrote."""

    root: Path
    kind: str
    labels: dict[str, int]
    train: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    shapes: list[tuple[int, ...]] = field(default_factory=list)
    spacings: list[tuple[float, ...]] = field(default_factory=list)

    def line(self) -> str:
        """A one-line human summary."""
        labels = ", ".join(f"{k}={v}" for k, v in self.labels.items())
        n = len(self.train) + len(self.test)
        return (
            f"imported {n} case{'s' if n != 1 else ''} ({len(self.train)} train, "
            f"{len(self.test)} test) from {self.kind} into {self.root}: "
            f"shape {_range_text(self.shapes, 'd')}, spacing {_range_text(self.spacings, 'g')} mm, "
            f"labels {labels}"
        )


def _range_text(items: Sequence[tuple], fmt: str) -> str:
    if not items:
        return "-"
    arr = np.asarray(items)
    lo, hi = arr.min(axis=0), arr.max(axis=0)
    text = "x".join(format(v if fmt == "g" else int(v), fmt) for v in lo)
    if (lo == hi).all():
        return text
    return f"{text} to {'x'.join(format(v if fmt == 'g' else int(v), fmt) for v in hi)}"


# Parsing helpers shared with the CLI --------------------------------------------------------------
def parse_spacing(text: str) -> tuple[float, float, float]:
    """'0.004,0.004,0.05' -> (0.004, 0.004, 0.05), all positive."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise InputError(f"spacing must be three positive numbers x,y,z in mm, got {text!r}")
    return values  # type: ignore[return-value]


def parse_label_map(text: str) -> list[tuple[str, int]]:
    """'membrane=0,interior=255' -> [('membrane', 0), ('interior', 255)]: class i is item i."""
    items = []
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        try:
            raw = int(value)
        except ValueError:
            raw = None
        if not sep or not name or raw is None:
            raise InputError(f"label map must look like membrane=0,interior=255, got {text!r}")
        items.append((name, raw))
    names = [n for n, _ in items]
    raws = [r for _, r in items]
    if len(set(names)) != len(names) or len(set(raws)) != len(raws) or len(items) < 2:
        raise InputError(f"label map needs two or more distinct names and values, got {text!r}")
    return items


def parse_label_names(text: str) -> list[str]:
    """'background,anterior,posterior' -> class names for values 0, 1, 2."""
    names = [n.strip() for n in text.split(",")]
    if len(names) < 2 or not all(names) or len(set(names)) != len(names):
        raise InputError(f"label names must be two or more distinct names, got {text!r}")
    return names


def parse_slice_range(text: str) -> tuple[int, int]:
    """'20:30' -> (20, 30), a half-open range of Z indices."""
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
    if not match or int(match[1]) >= int(match[2]):
        raise InputError(f"test slices must look like START:STOP with START < STOP, got {text!r}")
    return int(match[1]), int(match[2])


def split_cases(
    cases: Sequence[str], test_fraction: float = 0.0, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Split case ids into (train, test), deterministically for a seed.

    The ids are sorted, permuted by ``seed``, and the first round(fraction * n) (at least one when
    the fraction is positive) go to test. Both lists come back sorted.
    """
    ids = sorted(cases)
    if not 0.0 <= test_fraction < 1.0:
        raise InputError(f"test fraction must be in [0, 1), got {test_fraction}")
    n_test = int(round(test_fraction * len(ids)))
    if test_fraction > 0:
        n_test = max(1, n_test)
    if n_test >= len(ids) and n_test > 0:
        raise InputError(
            f"test fraction {test_fraction} leaves no training case among {len(ids)} cases"
        )
    order = np.random.default_rng(seed).permutation(len(ids))
    test = {ids[i] for i in order[:n_test]}
    return [c for c in ids if c not in test], [c for c in ids if c in test]


# Loading and checking -----------------------------------------------------------------------------
def _volume_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise InputError("folder not found", folder)
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(VOLUME_SUFFIXES)
    )
    if not files:
        raise InputError("no NIfTI or TIFF volumes in folder", folder)
    return files


def _case_id(path: Path) -> str:
    name = strip_nifti_suffix(path.name)
    for suffix in (".tiff", ".tif"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name


def _read(path: Path, spacing, channel: int | None = None) -> Volume:
    if str(path).lower().endswith(NIFTI_SUFFIXES):
        return read_nifti(path, channel=channel)
    return read_volume(path, spacing)


def load_image(path: Path, spacing=(1.0, 1.0, 1.0), channel: int | str | None = None) -> Volume:
    """An image volume ready to store: 3D (or (C, X, Y, Z) with ``channel='all'``), finite,
    float32 unless a 16/32-bit integer type."""
    vol = _read(Path(path), spacing, channel)
    array = vol.array
    if not any(array.dtype == t for t in KEEP_IMAGE_DTYPES):
        array = array.astype(np.float32)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise InputError("image overflows float32 (infinite values)", path)
    return vol.with_array(array)


def load_label(path: Path, spacing=(1.0, 1.0, 1.0)) -> Volume:
    """A label volume cast to int64; non-integer or non-finite values raise InputError."""
    vol = _read(Path(path), spacing)
    array = vol.array
    if np.issubdtype(array.dtype, np.floating):
        rounded = np.rint(array)
        if not np.array_equal(rounded, array):
            raise InputError("label volume holds non-integer values", path)
        array = rounded
    elif not np.issubdtype(array.dtype, np.integer) and array.dtype != np.bool_:
        raise InputError(f"label volume has unsupported type {array.dtype}", path)
    return vol.with_array(array.astype(np.int64))


def _label_storage(array: np.ndarray) -> np.ndarray:
    return array.astype(np.uint8 if array.max(initial=0) <= 255 else np.int16)


def _check_out(out: Path, inputs: Iterable[Path], overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise InputError("output already exists (pass --overwrite to replace it)", out)
    target = out.resolve()
    for src in inputs:
        src = Path(src).resolve()
        if target == src or target in src.parents:
            raise InputError(f"output would replace the input {src}", out)


# The shared writer --------------------------------------------------------------------------------
def write_cases(
    out: str | Path,
    cases: Sequence[CaseFiles],
    *,
    kind: str,
    labels: dict[str, int] | None,
    test: Iterable[str] = (),
    channel_names: dict[str, str] | None = None,
    channel: int | None = None,
    spacing=(1.0, 1.0, 1.0),
    overwrite: bool = False,
    inputs: Iterable[Path] = (),
) -> ImportSummary:
    """Check and write ``cases`` into a new dataset folder ``out``, atomically.

    ``labels`` declares the classes (name -> value 0..C-1); when None, labels are read from the
    data (values 0..C-1 must all occur) and named background, class_1, ... ``test`` names the
    cases that go to imagesTs/labelsTs. ``spacing`` (mm) is used for files without one (TIFF).
    """
    out = Path(out)
    _check_out(out, inputs, overwrite)
    test = set(test)
    summary = ImportSummary(out, kind, {})
    seen: set[int] = set()
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for item in cases:
            image = load_image(item.image, spacing, channel)
            if channel == "all" and image.array.shape[0] != len(channel_names or {}):
                raise InputError(
                    f"{image.array.shape[0]} channels, dataset.json declares "
                    f"{len(channel_names or {})}",
                    item.image,
                )
            label = load_label(item.label, spacing)
            check_same_geometry(image, label, item.label)
            if labels is not None:
                check_label_values(label.array, labels.values(), item.label)
            elif label.array.min() < 0:
                raise InputError("negative label values", item.label)
            seen.update(np.unique(label.array).tolist())
            split = "Ts" if item.case in test else "Tr"
            write_case(tmp, item.case, image, image.with_array(_label_storage(label.array)), split)
            (summary.test if split == "Ts" else summary.train).append(item.case)
            summary.shapes.append(image.shape[-3:])
            summary.spacings.append(image.spacing)
        if labels is None:
            top = max(seen)
            if seen != set(range(top + 1)):
                raise InputError(
                    f"label values {sorted(seen)[:12]} are not 0..C-1; give the class names "
                    "(--label-names) or remap the labels",
                    cases[0].label.parent,
                )
            labels = {"background": 0, **{f"class_{v}": v for v in range(1, top + 1)}}
        summary.labels = dict(sorted(labels.items(), key=lambda kv: kv[1]))
        write_dataset_json(
            tmp,
            labels,
            num_training=len(summary.train),
            channel_names=channel_names,
            name=out.name,
            description=f"imported by sparseseg from {kind}",
        )
    return summary


# The four sources ---------------------------------------------------------------------------------
def import_pairs(
    images: str | Path,
    labels: str | Path,
    out: str | Path,
    *,
    label_names: Sequence[str] | None = None,
    spacing=(1.0, 1.0, 1.0),
    test_fraction: float = 0.0,
    seed: int = 0,
    overwrite: bool = False,
) -> ImportSummary:
    """Import an images folder and a labels folder whose files have matching names.

    ``label_names`` name classes 0, 1, ...; without them the classes are read from the data.
    """
    images, labels = Path(images), Path(labels)
    image_files = _volume_files(images)
    label_files = {p.name: p for p in _volume_files(labels)}
    cases = []
    for path in image_files:
        if path.name not in label_files:
            raise InputError(f"no label file with the same name in {labels}", path)
        cases.append(CaseFiles(_case_id(path), path, label_files.pop(path.name)))
    if label_files:
        extra = sorted(label_files.values())[0]
        raise InputError(f"label file has no image with the same name in {images}", extra)
    _check_unique_ids(cases)
    declared = None if label_names is None else {n: i for i, n in enumerate(label_names)}
    _, test = split_cases([c.case for c in cases], test_fraction, seed)
    return write_cases(
        out,
        cases,
        kind="pairs",
        labels=declared,
        test=test,
        spacing=spacing,
        overwrite=overwrite,
        inputs=(images, labels),
    )


def _check_unique_ids(cases: Sequence[CaseFiles]) -> None:
    seen: dict[str, Path] = {}
    for c in cases:
        if c.case in seen:
            raise InputError(f"case id {c.case!r} also comes from {seen[c.case].name}", c.image)
        seen[c.case] = c.image


def msd_labels(raw, path: Path) -> dict[str, int]:
    """Labels of an MSD (value -> name) or nnU-Net v2 (name -> value) dataset.json."""
    if not isinstance(raw, dict) or not raw:
        raise InputError("'labels' is missing or empty", path)
    if all(isinstance(v, str) for v in raw.values()):
        try:
            labels = {name: int(value) for value, name in raw.items()}
        except ValueError:
            raise InputError("'labels' keys must be integer values", path) from None
    elif all(isinstance(v, int) for v in raw.values()):
        labels = {str(k): int(v) for k, v in raw.items()}
    else:
        raise InputError("'labels' must map values to names (or names to values)", path)
    if sorted(labels.values()) != list(range(len(labels))):
        raise InputError(f"label values {sorted(labels.values())} are not 0..C-1", path)
    return labels


def import_msd(
    task: str | Path,
    out: str | Path,
    *,
    channel: int | None = None,
    test_fraction: float = 0.0,
    seed: int = 0,
    overwrite: bool = False,
) -> ImportSummary:
    """Import a Decathlon task folder (``dataset.json``, ``imagesTr``, ``labelsTr``).

    Multi-modal (4D) images are imported with every channel (``CASE_0000``, ``CASE_0001``, ...,
    named by the task's ``modality``), or only ``channel``.
    """
    task = Path(task)
    meta_path = task / "dataset.json"
    if not task.is_dir():
        raise InputError("folder not found", task)
    if not meta_path.exists():
        raise InputError("not a Decathlon task folder: dataset.json is missing", task)
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"invalid JSON ({exc})", meta_path) from None
    if not isinstance(meta, dict):
        raise InputError("expected a JSON object", meta_path)
    labels = msd_labels(meta.get("labels"), meta_path)
    modality = meta.get("modality") or meta.get("channel_names") or {"0": "image"}
    modality = {str(k): str(v) for k, v in dict(modality).items()}
    if channel is not None and str(channel) not in modality:
        raise InputError(f"channel {channel} is not one of {sorted(modality)}", meta_path)
    if sorted(modality) != [str(i) for i in range(len(modality))]:
        raise InputError(
            "'modality' must map the channel numbers '0', '1', ... to names", meta_path
        )
    if len(modality) > 1 and channel is None:  # every channel, in nnU-Net's channel files
        channel_names = {str(i): modality[str(i)] for i in range(len(modality))}
    else:
        channel_names = {"0": modality[str(channel if channel is not None else 0)]}
    cases = _msd_cases(task, meta, meta_path)
    _, test = split_cases([c.case for c in cases], test_fraction, seed)
    pick = (channel if channel is not None else "all") if len(modality) > 1 else None
    return write_cases(
        out,
        cases,
        kind="msd",
        labels=labels,
        test=test,
        channel_names=channel_names,
        channel=pick,
        overwrite=overwrite,
        inputs=(task,),
    )


def _msd_cases(task: Path, meta: dict, meta_path: Path) -> list[CaseFiles]:
    training = meta.get("training")
    cases = []
    if isinstance(training, list) and training:
        for entry in training:
            if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
                raise InputError("'training' entries need 'image' and 'label'", meta_path)
            image, label = task / entry["image"], task / entry["label"]
            cases.append(CaseFiles(_case_id(image), image, label))
    else:
        for image in _volume_files(task / "imagesTr"):
            if image.name.lower().endswith(NIFTI_SUFFIXES):
                cases.append(CaseFiles(_case_id(image), image, task / "labelsTr" / image.name))
        if not cases:
            raise InputError("no NIfTI images", task / "imagesTr")
    cases.sort(key=lambda c: c.case)
    _check_unique_ids(cases)
    return cases


def import_hvsmr2016(
    src: str | Path,
    out: str | Path,
    *,
    variant: str = "axial_crop",
    test_fraction: float = 0.0,
    seed: int = 0,
    overwrite: bool = False,
) -> ImportSummary:
    """Import HVSMR 2016 training files ``training_{variant}_patN.nii.gz`` and ``...-label``.

    Case ids are ``patN``; ``variant`` is axial_crop (default), axial_full or sa_crop.
    """
    src = Path(src)
    if not src.is_dir():
        raise InputError("folder not found", src)
    pattern = re.compile(rf"training_{re.escape(variant)}_pat(\d+)(\.nii(?:\.gz)?)$")
    cases = []
    for path in sorted(src.iterdir()):
        match = pattern.fullmatch(path.name)
        if match and path.is_file():
            label = src / f"training_{variant}_pat{match[1]}-label{match[2]}"
            cases.append((int(match[1]), CaseFiles(f"pat{int(match[1])}", path, label)))
    if not cases:
        raise InputError(f"no training_{variant}_patN.nii.gz images in folder", src)
    cases = [c for _, c in sorted(cases, key=lambda t: t[0])]
    _, test = split_cases([c.case for c in cases], test_fraction, seed)
    return write_cases(
        out,
        cases,
        kind="hvsmr2016",
        labels=HVSMR_LABELS,
        test=test,
        channel_names={"0": "MRI"},
        overwrite=overwrite,
        inputs=(src,),
    )


def map_label_values(
    raw: np.ndarray, label_map: Sequence[tuple[str, int]], path: str | Path
) -> np.ndarray:
    """Raw label pixel values -> class values: the i-th entry of ``label_map`` becomes class i."""
    out = np.full(raw.shape, -1, dtype=np.int16)
    for cls, (_, value) in enumerate(label_map):
        out[raw == value] = cls
    if (out < 0).any():
        bad = np.unique(raw[out < 0])[:10].tolist()
        listing = ",".join(f"{n}={v}" for n, v in label_map)
        raise InputError(f"label values {bad} are not in the label map ({listing})", path)
    return out


def import_em_stack(
    images: str | Path,
    labels: str | Path,
    out: str | Path,
    *,
    label_map: Sequence[tuple[str, int]],
    spacing=ISBI_SPACING,
    test_slices: tuple[int, int] | None = None,
    name: str = "em",
    overwrite: bool = False,
) -> ImportSummary:
    """Import one serial-section stack and its label stack.

    ``images``/``labels``: a folder of PNG/TIFF sections (numeric order), a multi-page TIFF or a
    NIfTI file. ``label_map`` lists (class name, raw pixel value) for classes 0, 1, ...;
    ``spacing`` is (x, y, z) in mm for formats without one. ``test_slices`` (start, stop) cuts
    that half-open Z range off as the test case ``{name}_zSTART``; the rest becomes one or two
    training cases named by their first slice. Without it the stack is one case ``name``.
    """
    images, labels = Path(images), Path(labels)
    out = Path(out)
    _check_out(out, (images, labels), overwrite)
    image = load_image(images, spacing)
    raw = load_label(labels, spacing)
    check_same_geometry(image, raw, labels)
    label = map_label_values(raw.array, label_map, labels)
    nz = image.shape[2]
    if test_slices is None:
        pieces = [(name, 0, nz, "Tr")]
    else:
        start, stop = test_slices
        if not 0 <= start < stop <= nz or (start == 0 and stop == nz):
            raise InputError(
                f"test slices {start}:{stop} must lie within 0:{nz} and leave training slices",
                images,
            )
        pieces = [(f"{name}_z{start:03d}", start, stop, "Ts")]
        pieces += [(f"{name}_z{a:03d}", a, b, "Tr") for a, b in ((0, start), (stop, nz)) if b > a]
        pieces.sort(key=lambda p: p[1])
    declared = {n: i for i, (n, _) in enumerate(label_map)}
    summary = ImportSummary(out, "em-stack", declared)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for case, a, b, split in pieces:
            affine = image.affine.copy()
            affine[:3, 3] += affine[:3, 2] * a  # the piece keeps its place in scanner space
            img = Volume(np.ascontiguousarray(image.array[..., a:b]), affine, case)
            lab = Volume(_label_storage(label[..., a:b]), affine, case)
            write_case(tmp, case, img, lab, split)
            (summary.test if split == "Ts" else summary.train).append(case)
            summary.shapes.append(img.shape)
            summary.spacings.append(img.spacing)
        write_dataset_json(
            tmp,
            declared,
            num_training=len(summary.train),
            channel_names={"0": "EM"},
            name=out.name,
            description="imported by sparseseg from em-stack",
        )
    return summary
