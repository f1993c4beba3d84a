"""Annotating the chosen slices: a GUI-free session (:mod:`.session`) and a napari dock widget
(:mod:`.widget`, needs the ``napari`` extra)."""

from sparseseg.annotate.session import (
    PAINTED_FOLDER,
    PROGRESS_FILE,
    AnnotationProject,
    SliceTask,
    clear_outside,
    outside_chosen,
    painted_on_own,
    slice_queue,
    view_order,
)

__all__ = [
    "PAINTED_FOLDER",
    "PROGRESS_FILE",
    "AnnotationProject",
    "SliceTask",
    "clear_outside",
    "outside_chosen",
    "painted_on_own",
    "slice_queue",
    "view_order",
]
