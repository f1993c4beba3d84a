"""A napari dock widget that walks an annotator through the chosen slices of a selection.

One case at a time: the image and a labels layer to paint; the chosen slices plane by plane in
priority order (previous / next), the view turned to each slice's plane and moved to the slice; a
progress count; saving to PAINTED/CASE.nii.gz (atomic, the image's affine) and reopening where
the annotator left off. The rules (what counts as done, where paintings go) live in
:mod:`sparseseg.annotate.session`; this module only draws them. Needs the ``napari`` extra.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from sparseseg.annotate.session import (
    AnnotationProject,
    SliceTask,
    clear_outside,
    outside_chosen,
    view_order,
)
from sparseseg.data.volume import Volume
from sparseseg.errors import InputError


class AnnotateWidget(QWidget):
    """The dock widget. ``napari_viewer``: a ``napari.Viewer`` (or a bare ``ViewerModel``).

    ``selection`` (a ``sparseseg select`` folder), ``painted`` and ``dataset`` open a project at
    once; without them the widget offers a button to choose the selection folder.
    """

    def __init__(
        self,
        napari_viewer,
        selection: str | Path | None = None,
        painted: str | Path | None = None,
        dataset: str | Path | None = None,
    ):
        super().__init__()
        self.viewer = napari_viewer
        self.project: AnnotationProject | None = None
        self.case: str | None = None
        self.position = 0
        self.image: Volume | None = None
        self.labels = None  # the napari Labels layer being painted
        self._image_layer = None
        self._outside: np.ndarray | None = None
        self._busy = False  # true while the widget itself changes the labels data
        self._changed = False  # painting or background marks changed since the last save
        self._locked = True  # the lock box's state, kept for saving once Qt is gone

        self.open_button = QPushButton("Open selection folder...")
        self.open_button.clicked.connect(self._choose_selection)
        self.case_box = QComboBox()
        self.case_box.currentTextChanged.connect(self._case_chosen)
        self.next_case_button = QPushButton("Next case")
        self.next_case_button.clicked.connect(self.next_case)
        self.slice_label = QLabel("no selection open")
        self.previous_button = QPushButton("< Previous slice")
        self.previous_button.clicked.connect(self.previous_slice)
        self.next_button = QPushButton("Next slice >")
        self.next_button.clicked.connect(self.next_slice)
        self.background_box = QCheckBox("This slice is background only (done)")
        self.background_box.toggled.connect(self._background_toggled)
        self.lock_box = QCheckBox("Keep painting on the chosen slices")
        self.lock_box.setChecked(True)
        self.lock_box.setToolTip(
            "Voxels painted off the chosen slices are cleared at once and again on save"
        )
        self.lock_box.toggled.connect(self._lock_toggled)
        self.classes_label = QLabel("")
        self.progress_label = QLabel("")
        self.save_button = QPushButton("Save")
        self.save_button.clicked.connect(self.save)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.classes_label.setWordWrap(True)

        layout = QVBoxLayout(self)
        layout.addWidget(self.open_button)
        row = QHBoxLayout()
        row.addWidget(QLabel("Case"))
        row.addWidget(self.case_box, 1)
        row.addWidget(self.next_case_button)
        layout.addLayout(row)
        layout.addWidget(self.slice_label)
        row = QHBoxLayout()
        row.addWidget(self.previous_button)
        row.addWidget(self.next_button)
        layout.addLayout(row)
        for widget in (
            self.background_box,
            self.lock_box,
            self.classes_label,
            self.progress_label,
            self.save_button,
            self.status,
        ):
            layout.addWidget(widget)
        layout.addStretch(1)
        self._enable(False)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.save_on_exit)
        if selection is not None:
            self.open(selection, painted, dataset)

    # Opening ----------------------------------------------------------------------------------
    def open(
        self,
        selection: str | Path,
        painted: str | Path | None = None,
        dataset: str | Path | None = None,
    ) -> None:
        """Open a selection folder and reopen where the annotator left off."""
        project = AnnotationProject(selection, painted, dataset)
        if self.project is not None:
            self.save_if_changed()
        self.project = project
        self.classes_label.setText(
            "Paint with: "
            + ", ".join(f"{v} {k}" for k, v in self.project.classes.items() if v)
            + "; unpainted voxels on a chosen slice are background (0)"
        )
        case, position = self.project.resume()
        self.case = None
        self.case_box.blockSignals(True)
        self.case_box.clear()
        self.case_box.addItems(self.project.cases)
        self.case_box.blockSignals(False)
        self._enable(True)
        self.load_case(case, position)

    def _choose_selection(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Selection folder (sparseseg select --out)")
        if folder:
            try:
                self.open(folder)
            except InputError as exc:
                self.status.setText(str(exc))

    def _enable(self, flag: bool) -> None:
        for widget in (
            self.case_box,
            self.next_case_button,
            self.previous_button,
            self.next_button,
            self.background_box,
            self.lock_box,
            self.save_button,
        ):
            widget.setEnabled(flag)

    # Cases ------------------------------------------------------------------------------------
    def load_case(self, case: str, position: int = 0) -> None:
        """Show ``case`` (saving the current one first) at slice ``position`` of its queue."""
        project = self._project()
        if self.case is not None and self.case != case:
            self.save_if_changed()
        image = project.image(case)
        painting = project.load_painting(case, image)
        if self.labels is not None:
            self.labels.events.paint.disconnect(self._paint_announced)
            self.labels.events.data.disconnect(self._painted)
        for layer in (self.labels, self._image_layer):
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.case, self.image = case, image
        self._outside = outside_chosen(image.shape, project.chosen(case))
        scale = image.spacing
        self._image_layer = self.viewer.add_image(image.array, name=f"{case} image", scale=scale)
        self.labels = self.viewer.add_labels(painting, name=f"{case} painted", scale=scale)
        self.viewer.dims.axis_labels = ("x", "y", "z")
        self.labels.events.paint.connect(self._paint_announced)
        self.labels.events.data.connect(self._painted)
        self.labels.selected_label = min([v for v in project.classes.values() if v] or [0])
        self.viewer.layers.selection.active = self.labels
        self.case_box.blockSignals(True)
        self.case_box.setCurrentText(case)
        self.case_box.blockSignals(False)
        self.go(position)

    def _case_chosen(self, case: str) -> None:
        if case and case != self.case:
            self.load_case(case, self._project().state["cases"].get(case, {}).get("position", 0))

    def next_case(self) -> None:
        """Save, then open the next case (wrapping round to the first)."""
        cases = self._project().cases
        case = cases[(cases.index(self.case) + 1) % len(cases)]
        self.load_case(case, self._project().state["cases"].get(case, {}).get("position", 0))

    # Slices -----------------------------------------------------------------------------------
    @property
    def queue(self) -> list[SliceTask]:
        return self._project().queue(self.case)

    @property
    def task(self) -> SliceTask:
        return self.queue[self.position]

    def go(self, position: int) -> None:
        """Turn the view to the plane of slice ``position`` of the queue and move to that slice."""
        queue = self.queue
        self.position = min(max(int(position), 0), len(queue) - 1)
        task = queue[self.position]
        order = view_order(task.plane)
        if tuple(self.viewer.dims.order) != order:
            self.viewer.dims.order = order
            self.viewer.reset_view()
        self.viewer.dims.set_current_step(order[0], task.index)
        self._project().set_position(self.case, self.position)
        self._project().save_state()
        self.refresh()

    def next_slice(self) -> None:
        self.save_if_changed()
        self.go(self.position + 1)

    def previous_slice(self) -> None:
        self.save_if_changed()
        self.go(self.position - 1)

    # Painting and saving ----------------------------------------------------------------------
    def set_painting(self, painting: np.ndarray) -> None:
        """Replace the case's painting (X, Y, Z), as painting by hand would."""
        self.labels.data = np.asarray(painting, self._project().dtype)

    def _paint_announced(self, event=None) -> None:
        # napari announces a paint before it writes the voxels: look once it is done.
        QTimer.singleShot(0, self._painted)

    def _painted(self, event=None) -> None:
        if self._busy or self.labels is None:
            return
        self._changed = True
        if self.lock_box.isChecked():
            self._clear_outside("painting off the chosen slices is not kept")
        self.refresh()

    def _lock_toggled(self, flag: bool) -> None:
        self._locked = flag
        if flag and self.labels is not None:
            self._clear_outside("painting off the chosen slices is not kept")
            self.refresh()

    def _clear_outside(self, why: str) -> int:
        self._busy = True
        try:
            count = clear_outside(self.labels.data, self._outside)
            if count:
                self.labels.refresh()
                self.status.setText(f"cleared {count} voxels: {why}")
        finally:
            self._busy = False
        return count

    def save_on_exit(self) -> None:
        """Save a changed painting without touching Qt: napari may have deleted the panel's
        widgets by the time the application quits."""
        if not self._changed or self.case is None or self.labels is None:
            return
        if self._locked:
            clear_outside(self.labels.data, self._outside)
        project = self._project()
        project.save_painting(self.case, self.labels.data, self.image)
        project.save_state()
        self._changed = False

    def save_if_changed(self) -> None:
        if self._changed:
            self.save()

    def save(self) -> Path | None:
        """Write the painting atomically to PAINTED/CASE.nii.gz, and the progress file."""
        if self.case is None or self.labels is None:
            return None
        project = self._project()
        message = ""
        if self.lock_box.isChecked():
            cleared = self._clear_outside("off the chosen slices")
            if cleared:
                message = f"; cleared {cleared} voxels off the chosen slices"
        else:
            stray = int(np.count_nonzero(self._outside & (self.labels.data != 0)))
            if stray:
                message = f"; {stray} painted voxels lie off the chosen slices"
        path = project.save_painting(self.case, self.labels.data, self.image)
        project.save_state()
        self._changed = False
        self.status.setText(f"saved {path.name} in {path.parent.name}/{message}")
        self.status.setToolTip(str(path))
        self.refresh()
        return path

    def _background_toggled(self, flag: bool) -> None:
        if self.case is None or self._busy:
            return
        project = self._project()
        project.set_background(self.case, self.task, flag)
        self._changed = True
        self.refresh()

    # Display ----------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Update the slice caption, the background box and the progress counts."""
        if self.case is None:
            return
        project = self._project()
        done = project.done(self.case, self.labels.data)
        total_done, total = project.totals({self.case: sum(done)})
        task = self.task
        mark = "done" if done[self.position] else "to do"
        self.slice_label.setText(
            f"{self.case}: {task.describe()}, slice {self.position + 1} of {len(done)} [{mark}]"
        )
        self._busy = True
        self.background_box.setChecked(task.key in project.background(self.case))
        self._busy = False
        self.progress_label.setText(
            f"Done: {sum(done)} of {len(done)} slices in this case, "
            f"{total_done} of {total} in all cases"
        )
        self.previous_button.setEnabled(self.position > 0)
        self.next_button.setEnabled(self.position < len(done) - 1)

    def _project(self) -> AnnotationProject:
        if self.project is None:
            raise RuntimeError("no selection is open")
        return self.project
