"""Import painted annotations of a selection into a sparse training dataset.

    SEL/selection.json      the chosen slices per case and plane (``sparseseg select``)
    PAINTED/CASE.nii.gz     one painted map per case (.nii, .nii.gz, .nrrd or a 3D Slicer
                            .seg.nrrd), 0 everywhere the annotator did not paint
    OUT/                    the sparse dataset, as ``select --simulate-from-labels`` writes it

Every painted file is read and checked before anything is written (the output appears whole or
not at all), then read again to write it, so that memory holds one case at a time; the checks
that do not stop the import come back as warnings in the report.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sparseseg.annotations import (
    CaseAnnotation,
    describe_classes,
    merge_segment_layers,
    segment_classes,
    sparse_from_painted,
    to_image_grid,
    undeclared_values,
)
from sparseseg.data.layout import IGNORE, Dataset
from sparseseg.data.painted import painted_case, read_painted
from sparseseg.data.volume import Volume
from sparseseg.errors import InputError
from sparseseg.fileio import atomic_dir
from sparseseg.selection.export import sparse_labels, write_sparse_dataset
from sparseseg.selection.selector import Selection, read_selection


@dataclass
class ImportReport:
    """What :func:`import_annotations` wrote and found.

    ``cases``: case -> its :class:`CaseAnnotation` (without the label array); ``skipped``:
    selection cases without a painted file (``allow_missing``); ``unmatched``: painted files
    named after no case of the selection; ``classes``: class name -> value.
    """

    out: Path
    painted: Path
    cases: dict[str, CaseAnnotation]
    classes: dict[str, int]
    planes: tuple[str, ...]
    skipped: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    keep_extra: bool = False

    def warnings(self) -> list[str]:
        """One line per kind of problem that did not stop the import."""
        lines = []
        extra = {c: a.extra_voxels for c, a in self.cases.items() if a.extra_voxels}
        if extra:
            counts = ", ".join(f"{c} {n}" for c, n in extra.items())
            fate = (
                "their slices are kept as annotated slices"
                if self.keep_extra
                else "they are ignored (--keep-extra keeps their slices)"
            )
            lines.append(
                f"{sum(extra.values())} painted voxels lie outside the chosen slices ({counts}); "
                f"{fate}"
            )
        empty = {c: a.empty for c, a in self.cases.items() if a.empty}
        if empty:
            total = sum(len(v) for e in empty.values() for v in e.values())
            listed = "; ".join(f"{c} {_slices(e)}" for c, e in empty.items())
            lines.append(
                f"{total} chosen slices are entirely 0, background only (forgotten?): {listed}"
            )
        if self.unmatched:
            lines.append(
                f"{len(self.unmatched)} painted files match no case of the selection and are "
                f"not used: {', '.join(self.unmatched)}"
            )
        return lines

    def summary(self) -> list[str]:
        """What was written: cases, slices per plane, annotated voxels per class."""
        n = len(self.cases)
        head = f"wrote {self.out}: {n} case{'s' * (n != 1)} annotated from {self.painted}"
        if self.skipped:
            head += (
                f"; skipped {len(self.skipped)} without a painted file: {', '.join(self.skipped)}"
            )
        per_plane = Counter()
        for a in self.cases.values():
            per_plane.update({p: len(v) for p, v in a.chosen.items()})
        slices = "slices annotated: " + ", ".join(f"{p} {per_plane[p]}" for p in self.planes)
        added = {c: a.added for c, a in self.cases.items() if a.added}
        if added:
            total = sum(len(v) for a in added.values() for v in a.values())
            listed = "; ".join(f"{c} {_slices(a)}" for c, a in added.items())
            slices += f" (with {total} extra slices kept: {listed})"
        voxels = Counter()
        for a in self.cases.values():
            voxels.update(a.class_voxels)
        counts = ", ".join(f"{name} {voxels[v]}" for name, v in self.classes.items())
        return [head, slices, f"annotated voxels: {counts}"]


def _slices(by_plane: dict[str, list[int]]) -> str:
    """{'xy': [3, 5], 'yz': [2]} -> 'xy 3,5, yz 2'."""
    return ", ".join(f"{p} {','.join(map(str, v))}" for p, v in by_plane.items())


def find_painted(folder: Path, cases: list[str]) -> tuple[dict[str, Path], list[str]]:
    """Painted file per case in ``folder``, and the painted files named after no case."""
    if not folder.is_dir():
        raise InputError("painted folder not found", folder)
    found: dict[str, Path] = {}
    unmatched = []
    known = set(cases)
    for path in sorted(folder.iterdir()):
        case = painted_case(path.name) if path.is_file() else None
        if case is None:
            continue
        if case not in known:
            unmatched.append(path.name)
        elif case in found:
            raise InputError(
                f"two painted files for case {case}: {found[case].name} and {path.name}", folder
            )
        else:
            found[case] = path
    return found, unmatched


def painted_classes(path: Path, classes: dict[str, int], image_affine, image_shape) -> np.ndarray:
    """The painted map at ``path`` as class values (X, Y, Z) on the image's grid."""
    painted = read_painted(path)
    try:
        array = painted.array
        if painted.segments is not None:
            layers = array if array.ndim == 4 else array[None]
            array = merge_segment_layers(layers, segment_classes(painted.segments, classes))
        else:
            extra = undeclared_values(array, classes)
            if extra:
                raise InputError(
                    f"label values {extra} are not declared by the dataset (classes: "
                    f"{describe_classes(classes)})"
                )
        cropped = painted.segments is not None  # Slicer may crop to the segments' extent
        return to_image_grid(array, painted.affine, image_affine, image_shape, cropped)
    except InputError as exc:
        raise InputError(exc.problem, path) from None


def _annotate(
    ds: Dataset, selection: Selection, case: str, path: Path, keep_extra: bool
) -> tuple[CaseAnnotation, Volume]:
    """One case's sparse labels from its painted file (canonical orientation), and the image.

    Selections index slices of the canonical orientation; the painted map is brought onto the
    image's canonical grid through the affines, and written back in the image file's
    orientation by the dataset writer.
    """
    image = ds.load_image(case)
    shape = tuple(image.shape[-3:])
    if shape != tuple(selection.cases[case].shape):
        raise InputError(
            f"image shape {shape} differs from the selection's {selection.cases[case].shape}",
            ds.image_path(case),
        )
    array = painted_classes(path, ds.class_labels, image.affine, shape)
    ignore = sparse_labels(ds)[IGNORE]
    return sparse_from_painted(array, selection.chosen(case), ignore, keep_extra), image


def import_annotations(
    selection: str | Path,
    painted: str | Path,
    out: str | Path,
    *,
    dataset: str | Path | None = None,
    allow_missing: bool = False,
    keep_extra: bool = False,
    overwrite: bool = False,
) -> ImportReport:
    """Write the sparse training dataset ``out`` from the painted maps in ``painted``.

    ``selection``: the folder ``sparseseg select`` wrote (or its selection.json); ``dataset``:
    the dataset it was made on (default: the one it records). See the module docstring; every
    check runs on every case before anything is written.
    """
    sel = read_selection(selection)
    root = dataset if dataset is not None else sel.dataset
    if root is None:
        raise InputError(
            "the selection does not record its dataset; pass it (--dataset DIR)", selection
        )
    if dataset is None and not Path(root).is_dir():
        raise InputError(
            f"the selection's dataset {root} is not found; pass it (--dataset DIR)", root
        )
    ds = Dataset.open(root)
    out, painted = Path(out), Path(painted)
    target = out.resolve()
    for source in (ds.root, Path(selection), painted):
        resolved = source.resolve()
        if target == resolved or resolved.is_relative_to(target):
            raise InputError("the output folder would replace an input", out)
    if out.exists() and not overwrite:
        raise InputError("output already exists (pass --overwrite to replace it)", out)
    missing = [c for c in sel.cases if c not in ds.cases("Tr")]
    if missing:
        raise InputError(f"no training image for the selection's cases {missing[:3]}", ds.root)
    files, unmatched = find_painted(painted, list(sel.cases))
    skipped = [c for c in sel.cases if c not in files]
    if skipped and not allow_missing:
        more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        raise InputError(
            f"no painted file for cases {', '.join(skipped[:3])}{more} (--allow-missing skips "
            "them)",
            painted,
        )
    if not files:
        raise InputError("no painted file for any case of the selection", painted)
    cases: dict[str, CaseAnnotation] = {}
    for case in (c for c in sel.cases if c in files):
        annotation, _ = _annotate(ds, sel, case, files[case], keep_extra)
        annotation.labels = np.empty((0, 0, 0), annotation.labels.dtype)  # kept: the statistics
        cases[case] = annotation

    def sparse_label(case: str) -> Volume:
        annotation, image = _annotate(ds, sel, case, files[case], keep_extra)
        return image.with_array(annotation.labels)

    chosen = {case: a.chosen for case, a in cases.items()}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_sparse_dataset(ds, sel, tmp, chosen, sparse_label)
    return ImportReport(
        out, painted, cases, ds.class_labels, sel.planes, skipped, unmatched, keep_extra
    )
