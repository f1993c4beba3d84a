"""Annotating a selection: the slice queue, progress, where to resume, the painted maps on disk.

Pure logic with no GUI, shared by the napari widget and its tests.

    SEL/selection.json       the chosen slices (``sparseseg select``)
    PAINTED/CASE.nii.gz      a painted label map: the image's grid and affine, class values on the
                             chosen slices (0 is background there), 0 everywhere else
    PAINTED/progress.json    the case and slice the annotator is at, the slices marked
                             background-only, and each case's done count

A chosen slice is *done* when it holds a painted (non-zero) voxel that lies on no other chosen
slice (a stroke on an xy slice crosses the chosen xz and yz slices along lines; those crossings do
not count), or when the annotator marked it background-only.

Slices are visited plane by plane (the selection's plane order), each plane's slices in priority
order, so the view changes plane as rarely as possible.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sparseseg.data.io import read_nifti, write_nifti
from sparseseg.data.layout import FILE_ENDING, Dataset, check_same_geometry
from sparseseg.data.planes import NORMAL_AXIS, slice_index
from sparseseg.data.volume import Volume
from sparseseg.errors import InputError
from sparseseg.fileio import write_json
from sparseseg.selection.selector import Selection, read_selection
from sparseseg.selection.sparsify import annotation_mask

PROGRESS_FILE = "progress.json"
PAINTED_FOLDER = "painted"  # default painted folder, inside the selection folder
PROGRESS_FORMAT = "sparseseg-annotation-progress"


@dataclass(frozen=True)
class SliceTask:
    """One chosen slice: ``index`` along the normal of ``plane``; ``rank`` 0 is the plane's first
    (highest-priority) choice, ``of`` the number of slices chosen in that plane."""

    plane: str
    index: int
    rank: int
    of: int

    @property
    def key(self) -> str:
        return f"{self.plane}:{self.index}"

    def describe(self) -> str:
        return f"{self.plane} slice {self.index} (priority {self.rank + 1} of {self.of})"


def slice_queue(chosen: Mapping[str, Sequence[int]]) -> list[SliceTask]:
    """The chosen slices to visit: plane by plane (in ``chosen``'s order), priority order within."""
    return [
        SliceTask(plane, int(n), rank, len(indices))
        for plane, indices in chosen.items()
        for rank, n in enumerate(indices)
    ]


def normal_axis(plane: str) -> int:
    """The array axis (0, 1 or 2 of (X, Y, Z)) normal to ``plane``."""
    return 3 + NORMAL_AXIS[plane]


def view_order(plane: str) -> tuple[int, int, int]:
    """A napari ``dims.order`` that shows slices of ``plane``: the normal axis first (it is the
    slider), the two in-plane axes displayed."""
    n = normal_axis(plane)
    return (n, *(a for a in range(3) if a != n))


def painted_on_own(painting: np.ndarray, chosen: Mapping[str, Sequence[int]]) -> set[str]:
    """Keys ``plane:index`` of the chosen slices holding a painted voxel on no other chosen slice.

    ``painting``: (X, Y, Z) label map, 0 unpainted.
    """
    done = set()
    for task in slice_queue(chosen):
        axis = normal_axis(task.plane)
        painted = painting[slice_index(task.plane, task.index)] != 0  # the two other axes, in order
        for plane, indices in chosen.items():
            other = normal_axis(plane)
            if other != axis and len(indices):
                index: list = [slice(None)] * 2
                index[other if other < axis else other - 1] = list(indices)
                painted[tuple(index)] = False  # crossings with other planes' chosen slices
        if painted.any():
            done.add(task.key)
    return done


def outside_chosen(shape: tuple[int, int, int], chosen: Mapping[str, Sequence[int]]) -> np.ndarray:
    """Boolean (X, Y, Z): true on every voxel that lies on no chosen slice."""
    return ~annotation_mask(shape, chosen)


def clear_outside(painting: np.ndarray, outside: np.ndarray) -> int:
    """Set painted voxels where ``outside`` is true back to 0, in place; return how many."""
    stray = outside & (painting != 0)
    count = int(np.count_nonzero(stray))
    if count:
        painting[stray] = 0
    return count


def painting_dtype(max_value: int) -> np.dtype:
    """The narrowest type for label values up to ``max_value``: uint8 or int16."""
    return np.dtype(np.uint8) if max_value <= 255 else np.dtype(np.int16)


class AnnotationProject:
    """A selection being annotated: its cases, images, slice queues, paintings and progress.

    ``selection``: the ``sparseseg select`` output folder (or its selection.json). ``painted``:
    where paintings are saved (default SEL/painted). ``dataset``: the dataset whose training images
    were selected from (default: the folder the selection records).
    """

    def __init__(
        self,
        selection: str | Path,
        painted: str | Path | None = None,
        dataset: str | Path | None = None,
    ):
        sel_path = Path(selection)
        self.selection_dir = sel_path if sel_path.is_dir() else sel_path.parent
        self.selection: Selection = read_selection(sel_path)
        if dataset is None:
            if not self.selection.dataset:
                raise InputError(
                    "the selection does not record its dataset; pass --dataset",
                    self.selection_dir / "selection.json",
                )
            dataset = Path(self.selection.dataset)
            if not dataset.is_dir():
                raise InputError(
                    f"the selection's dataset {dataset} is not found; pass --dataset",
                    self.selection_dir / "selection.json",
                )
        self.dataset = Dataset.open(dataset)
        self.painted = Path(painted) if painted is not None else self.selection_dir / PAINTED_FOLDER
        if self.painted.exists() and not self.painted.is_dir():
            raise InputError("the painted folder is a file", self.painted)
        self.cases: list[str] = list(self.selection.cases)
        if not self.cases:
            raise InputError("the selection has no cases", self.selection_dir)
        missing = [c for c in self.cases if not self.dataset.image_path(c).exists()]
        if missing:
            raise InputError(
                f"the selection's cases {missing[:3]} have no image here",
                self.dataset.image_path(missing[0]),
            )
        self.state = self._read_state()

    # Labels -----------------------------------------------------------------------------------
    @property
    def classes(self) -> dict[str, int]:
        """The classes to paint, name -> value (background 0 included, ``ignore`` excluded)."""
        return self.dataset.class_labels

    @property
    def dtype(self) -> np.dtype:
        return painting_dtype(max(self.classes.values()))

    # Per case ---------------------------------------------------------------------------------
    def chosen(self, case: str) -> dict[str, list[int]]:
        return self.selection.chosen(case)

    def queue(self, case: str) -> list[SliceTask]:
        return slice_queue(self.chosen(case))

    def image(self, case: str) -> Volume:
        """The case's training image, float32 (X, Y, Z), checked against the selection's shape."""
        image = self.dataset.load_image(case)
        if tuple(image.shape) != tuple(self.selection.cases[case].shape):
            raise InputError(
                f"image shape {image.shape} differs from the selection's "
                f"{tuple(self.selection.cases[case].shape)}",
                self.dataset.image_path(case),
            )
        return image

    def painted_path(self, case: str) -> Path:
        return self.painted / f"{case}{FILE_ENDING}"

    def load_painting(self, case: str, image: Volume | None = None) -> np.ndarray:
        """The saved painting of ``case`` (X, Y, Z), or zeros when none is saved yet."""
        image = self.image(case) if image is None else image
        path = self.painted_path(case)
        if not path.exists():
            return np.zeros(image.shape, self.dtype)
        painting = read_nifti(path, dtype=np.int64)
        check_same_geometry(image, painting, path)
        values = set(np.unique(painting.array).tolist())
        extra = sorted(values - set(self.classes.values()))
        if extra:
            raise InputError(f"painted values {extra} are not classes of the dataset", path)
        return painting.array.astype(self.dtype)

    def save_painting(self, case: str, painting: np.ndarray, image: Volume | None = None) -> Path:
        """Write ``painting`` (X, Y, Z) as PAINTED/CASE.nii.gz with the image's affine, atomically,
        and update the case's done count in the progress file."""
        image = self.image(case) if image is None else image
        if tuple(painting.shape) != tuple(image.shape):
            raise ValueError(f"painting shape {painting.shape} differs from image {image.shape}")
        path = self.painted_path(case)
        write_nifti(path, Volume(np.asarray(painting, self.dtype), image.affine, case))
        self.record_done(case, painting)
        return path

    # Progress ---------------------------------------------------------------------------------
    def background(self, case: str) -> set[str]:
        """Keys of the slices of ``case`` marked background-only."""
        return set(self._case_state(case).get("background", []))

    def set_background(self, case: str, task: SliceTask, flag: bool) -> None:
        marks = self.background(case)
        marks = marks | {task.key} if flag else marks - {task.key}
        keys = [t.key for t in self.queue(case)]
        self._case_state(case)["background"] = [k for k in keys if k in marks]

    def done(self, case: str, painting: np.ndarray) -> list[bool]:
        """Per slice of ``queue(case)``: done (see the module docstring)."""
        finished = painted_on_own(painting, self.chosen(case)) | self.background(case)
        return [t.key in finished for t in self.queue(case)]

    def record_done(self, case: str, painting: np.ndarray) -> None:
        self._case_state(case)["done"] = int(sum(self.done(case, painting)))

    def totals(self, live: Mapping[str, int] | None = None) -> tuple[int, int]:
        """(done, all) chosen slices over all cases: the counts recorded at each save, or those in
        ``live`` (case -> done count of an unsaved painting)."""
        live = live or {}
        done = sum(
            int(live[c] if c in live else self.state["cases"].get(c, {}).get("done", 0))
            for c in self.cases
        )
        return done, sum(len(self.queue(c)) for c in self.cases)

    def set_position(self, case: str, position: int) -> None:
        """Remember that the annotator is at slice ``position`` of ``case``'s queue."""
        self.state["case"] = case
        self._case_state(case)["position"] = int(position)

    def resume(self) -> tuple[str, int]:
        """The case and queue position to reopen at: where the annotator left off, else 0."""
        case = self.state.get("case")
        if case not in self.cases:
            return self.cases[0], 0
        position = int(self._case_state(case).get("position", 0))
        return case, min(max(position, 0), len(self.queue(case)) - 1)

    def save_state(self) -> Path:
        """Write PAINTED/progress.json atomically."""
        path = self.painted / PROGRESS_FILE
        write_json(path, self.state)
        return path

    def _case_state(self, case: str) -> dict:
        return self.state["cases"].setdefault(case, {})

    def _read_state(self) -> dict:
        path = self.painted / PROGRESS_FILE
        fresh = {"format": PROGRESS_FORMAT, "case": None, "cases": {}}
        if not path.exists():
            return fresh
        try:
            state = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise InputError(f"invalid JSON ({exc})", path) from None
        if not isinstance(state, dict) or state.get("format") != PROGRESS_FORMAT:
            raise InputError("not a sparseseg annotation progress file", path)
        if not isinstance(state.get("cases"), dict):
            raise InputError("'cases' must be an object", path)
        return state
