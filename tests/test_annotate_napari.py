"""The napari annotation widget, headless: walk the chosen slices, paint, save, reopen.

napari's canvas needs OpenGL, which Qt's ``offscreen`` platform lacks: where no X display is set,
a virtual one (Xvfb with Mesa, installed by ``make install``) is started for the module and Qt
draws on it with its ``xcb`` platform (``offscreen`` drawing through that display's GLX proved
unreliable). Without Xvfb, Qt runs ``offscreen``, the widget drives a bare ``ViewerModel`` (no
canvas) and only the widget itself is grabbed for the screenshots.

Screenshots go to a temporary folder, or to ``$SPARSESEG_SCREENSHOTS`` (e.g. docs/figures).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("napari", reason="the napari extra is not installed")

from tiny_preset import TINIER  # noqa: E402

from sparseseg.annotate import AnnotationProject, painted_on_own  # noqa: E402
from sparseseg.cli import main  # noqa: E402
from sparseseg.data.layout import Dataset  # noqa: E402
from sparseseg.data.phantom import write_phantom_dataset  # noqa: E402
from sparseseg.data.planes import slice_index  # noqa: E402
from sparseseg.selection import annotation_mask  # noqa: E402


def _start_xvfb() -> str | None:
    """Start Xvfb on a free display numbered from this process's id; return ':N', or None.

    Xvfb lives until this process ends (a bash loop watches it): ending it earlier would break
    the Qt application's shutdown, which keeps its connection to the end. A display number of
    its own keeps it clear of a server from an earlier run that is still shutting down.
    """
    me = os.getpid()
    for attempt in range(20):
        number = 100 + (me + attempt) % 800
        read, write = os.pipe()
        watch = (
            f'Xvfb :{number} "$@" & x=$!; exec {write}>&-; '
            f"while kill -0 {me} && kill -0 $x; do sleep 1; done 2>/dev/null; kill $x 2>/dev/null"
        )
        args = ["-displayfd", str(write), "-screen", "0", "1400x1000x24", "-nolisten", "tcp"]
        subprocess.Popen(
            ["bash", "-c", watch, "bash", *args],
            pass_fds=(write,),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        os.close(write)
        with os.fdopen(read) as f:
            reported = f.readline().strip()  # empty when that Xvfb failed (display taken)
        if reported:
            return f":{reported}"
    return None


def _qt_starts() -> bool:
    """Whether a Qt application starts on this display and platform (Qt aborts the process when
    its platform plugin cannot load, so try in a child process)."""
    probe = "from qtpy.QtWidgets import QApplication; QApplication([])"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def display():
    """An X display for OpenGL (the one set, else a fresh Xvfb), or None where there is none;
    the Qt platform to match (``xcb`` on a display, else ``offscreen``), unless one is set."""
    saved = {k: os.environ.get(k) for k in ("DISPLAY", "QT_QPA_PLATFORM")}
    found = os.environ.get("DISPLAY") or (_start_xvfb() if shutil.which("Xvfb") else None)
    if found:
        os.environ["DISPLAY"] = found
        os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
        if not _qt_starts():
            warnings.warn(
                f"Qt cannot open display {found} (missing X libraries? see GUI_DEBS in the "
                "Makefile): testing the widget without a canvas",
                stacklevel=1,
            )
            found = None
    if not found:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    try:
        yield found
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def make_viewer(display):
    """Build viewers (closed at the end): ``napari.Viewer(show=False)`` where OpenGL is there."""
    from napari import Viewer
    from napari.components import ViewerModel
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])  # napari.Viewer makes one; a model does not
    made = []

    def make():
        viewer = Viewer(show=False) if display else ViewerModel()
        made.append(viewer)
        return viewer

    yield make
    assert app is not None
    for viewer in made:
        if hasattr(viewer, "close"):
            viewer.close()


@pytest.fixture(scope="module")
def selection(tmp_path_factory) -> Path:
    """A phantom dataset (2 cases of 40 x 48 x 24) and an EIA s8 selection of it."""
    root = tmp_path_factory.mktemp("napari")
    write_phantom_dataset(root / "ph", "heart", cases=2, seed=3, shape=(40, 48, 24))
    sel = root / "sel"
    argv = ["select", root / "ph", "--budget", 8, "--strategy", "eia", "--out", sel, "--no-figures"]
    assert main([str(a) for a in argv]) == 0
    return sel


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = os.environ.get("SPARSESEG_SCREENSHOTS")
    return Path(folder) if folder else tmp_path / "shots"


def _widget(viewer, *args, **kwargs):
    from sparseseg.annotate.widget import AnnotateWidget

    widget = AnnotateWidget(viewer, *args, **kwargs)
    if hasattr(viewer, "window"):
        viewer.window.add_dock_widget(widget, name="sparseseg annotate", area="right")
        viewer.window._qt_window.resize(1300, 820)
    else:
        widget.resize(420, 480)
    return widget


def _screenshot(viewer, widget, path: Path) -> None:
    """The viewer window with the widget docked (OpenGL), else the widget alone."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    if hasattr(viewer, "window"):
        Image.fromarray(viewer.screenshot(canvas_only=False, flash=False)).save(path)
    else:
        widget.grab().save(str(path))
    assert path.stat().st_size > 0


def _shown(viewer, widget):
    """(plane normal axis, slice index) the labels layer shows now."""
    axis = viewer.dims.order[0]
    point = viewer.dims.point[axis]
    index = widget.labels.world_to_data([*viewer.dims.point])[axis]
    assert index == pytest.approx(viewer.dims.current_step[axis])
    assert point == pytest.approx(viewer.dims.current_step[axis] * widget.labels.scale[axis])
    return axis, int(round(index))


def test_widget_walks_paints_saves_and_resumes(selection, tmp_path, make_viewer, shots):
    ds = Dataset.open(AnnotationProject(selection).dataset.root)
    painted = tmp_path / "painted"
    viewer = make_viewer()
    widget = _widget(viewer, selection, painted)
    cases = ds.cases("Tr")
    assert widget.case == cases[0] and widget.position == 0
    assert [layer.name for layer in viewer.layers] == [f"{cases[0]} image", f"{cases[0]} painted"]
    expected = {}
    for case in cases:
        truth = ds.load_label(case).array
        chosen = widget.project.chosen(case)
        on = annotation_mask(truth.shape, chosen)
        expected[case] = np.where(on, truth, 0).astype(np.uint8)
        assert widget.case == case and widget.position == 0
        own = painted_on_own(expected[case], chosen)
        queue = widget.queue
        for position, task in enumerate(queue):
            assert widget.position == position
            # The view is turned to the slice's plane and moved to the slice.
            axis = {"xy": 2, "xz": 1, "yz": 0}[task.plane]
            assert _shown(viewer, widget) == (axis, task.index)
            assert set(viewer.dims.displayed) == {0, 1, 2} - {axis}
            # Paint the true labels on this slice, as an annotator would.
            data = widget.labels.data.copy()
            where = slice_index(task.plane, task.index)
            data[where] = expected[case][where]
            widget.set_painting(data)
            if task.key not in own:  # nothing of its own to paint: mark it background-only
                assert "[to do]" in widget.slice_label.text()
                widget.background_box.setChecked(True)
            assert "[done]" in widget.slice_label.text()
            assert widget.progress_label.text().startswith(
                f"Done: {position + 1} of {len(queue)} slices in this case"
            )
            if case == cases[0] and position == 1:
                _screenshot(viewer, widget, shots / "annotate_napari.png")
            if case == cases[1] and task.plane == "xz" and task.rank == 1:
                _screenshot(viewer, widget, shots / "annotate_napari_xz.png")
            if position < len(queue) - 1:
                assert widget.next_button.isEnabled()
                widget.next_slice()
        assert not widget.next_button.isEnabled()
        widget.previous_slice()
        assert widget.position == len(queue) - 2
        widget.next_slice()
        # Painting off the chosen slices is cleared at once (the lock is on by default).
        stray = np.argwhere(~annotation_mask(truth.shape, chosen))[0]
        data = widget.labels.data.copy()
        data[tuple(stray)] = 1
        widget.set_painting(data)
        assert widget.labels.data[tuple(stray)] == 0
        assert "cleared 1 voxels" in widget.status.text()
        if case == cases[0]:
            widget.next_case()  # saves this case
    widget.save()
    total = sum(len(widget.project.queue(c)) for c in cases)
    assert widget.progress_label.text().endswith(f"{total} of {total} in all cases")
    for case in cases:  # the saved files: the true labels on the chosen slices, 0 elsewhere
        saved = nib.load(painted / f"{case}.nii.gz")
        assert np.array_equal(np.asarray(saved.dataobj), expected[case])
        assert np.allclose(saved.affine, ds.load_image(case).affine)
        assert saved.get_data_dtype() == np.uint8
    assert not list(painted.glob(".*"))  # atomic writes leave no temporary files

    # Reopen: the last case at its last slice, with the painting and the background marks.
    widget.go(3)
    again = _widget(make_viewer(), selection, painted)
    assert again.case == cases[-1] and again.position == 3
    assert np.array_equal(again.labels.data, expected[cases[-1]])
    assert again.progress_label.text().endswith(f"{total} of {total} in all cases")
    again.case_box.setCurrentText(cases[0])
    assert again.case == cases[0] and again.position == len(again.queue) - 1
    assert np.array_equal(again.labels.data, expected[cases[0]])

    # With the lock off, stray paint is kept and reported on save; locking clears it.
    again.lock_box.setChecked(False)
    stray = np.argwhere(~annotation_mask(expected[cases[0]].shape, again.project.chosen(cases[0])))
    data = again.labels.data.copy()
    data[tuple(stray[0])] = 2
    again.set_painting(data)
    again.save()
    assert "1 painted voxels lie off the chosen slices" in again.status.text()
    assert np.asarray(nib.load(painted / f"{cases[0]}.nii.gz").dataobj)[tuple(stray[0])] == 2
    again.lock_box.setChecked(True)
    assert again.labels.data[tuple(stray[0])] == 0
    again.save()
    saved = np.asarray(nib.load(painted / f"{cases[0]}.nii.gz").dataobj)
    assert np.array_equal(saved, expected[cases[0]])

    # What the widget saved imports as the simulated sparse dataset, and trains.
    from sparseseg.pipeline import train

    imported = tmp_path / "imported"
    assert main(["annotations", str(selection), str(painted), "--out", str(imported)]) == 0
    sparse = Dataset.open(imported)
    for case in cases:
        label = sparse.load_label(case).array
        on = annotation_mask(label.shape, again.project.chosen(case))
        assert np.array_equal(np.where(on, expected[case], sparse.ignore_value), label)
    state = train(imported, tmp_path / "model", "cpu", TINIER, progress=False, log=None)
    assert state["stages"]["bundle"]["done"]


def test_widget_without_selection_and_the_command(selection, tmp_path, make_viewer, monkeypatch):
    viewer = make_viewer()
    widget = _widget(viewer)
    assert widget.project is None and not widget.next_button.isEnabled()
    assert widget.open_button.isEnabled()
    widget.open(selection, tmp_path / "q")  # what "Open selection folder..." does
    first = AnnotationProject(selection).cases[0]
    assert widget.case == first and widget.position == 0 and widget.next_button.isEnabled()
    assert [layer.name for layer in viewer.layers] == [f"{first} image", f"{first} painted"]
    if not hasattr(viewer, "window"):
        return  # the command needs a full viewer
    import napari

    seen = {}

    def run():  # instead of the event loop: look at what the command built
        current = napari.current_viewer()
        seen["layers"] = [layer.name for layer in current.layers]
        seen["docked"] = list(current.window.dock_widgets)
        current.close()

    monkeypatch.setattr(napari, "run", run)
    monkeypatch.setattr(napari, "Viewer", lambda **kw: make_viewer())
    painted = tmp_path / "p"
    assert main(["annotate", str(selection), "--painted", str(painted)]) == 0
    assert seen["layers"] == [f"{first} image", f"{first} painted"]
    assert "sparseseg annotate" in seen["docked"]
    assert (painted / "progress.json").exists()


def test_brush_strokes_count_and_stay_on_the_chosen_slices(selection, tmp_path, make_viewer):
    from qtpy.QtWidgets import QApplication

    viewer = make_viewer()
    widget = _widget(viewer, selection, tmp_path / "painted")
    task = widget.task
    assert task.plane == "xy" and widget.labels.n_edit_dimensions == 2
    chosen = widget.project.chosen(widget.case)
    widget.labels.brush_size = 5
    widget.labels.paint((20, 24, task.index), 2)  # a brush stroke, as the mouse paints
    QApplication.processEvents()  # the widget looks at a stroke once napari has written it
    assert np.count_nonzero(widget.labels.data[:, :, task.index] == 2) > 4
    assert "[done]" in widget.slice_label.text()
    assert widget.progress_label.text().startswith("Done: 1 of")
    # A stroke on a slice that was not chosen keeps only the voxels on chosen slices it crosses.
    other = next(z for z in range(widget.image.shape[2]) if z not in chosen["xy"])
    viewer.dims.set_current_step(2, other)
    before = np.count_nonzero(widget.labels.data)
    widget.labels.paint((20, 24, other), 1)
    QApplication.processEvents()
    on = annotation_mask(widget.image.shape, chosen)
    assert not np.any(widget.labels.data[~on])
    assert "cleared" in widget.status.text()
    assert np.count_nonzero(widget.labels.data) >= before
    widget.save()
    saved = np.asarray(nib.load(tmp_path / "painted" / f"{widget.case}.nii.gz").dataobj)
    assert np.array_equal(saved, widget.labels.data) and not np.any(saved[~on])
    # A change not saved yet is saved on exit, after napari has closed the panel.
    data = widget.labels.data.copy()
    data[on & (data == 0)] = 1
    widget.set_painting(data)
    if hasattr(viewer, "close"):
        viewer.close()
    widget.save_on_exit()
    saved = np.asarray(nib.load(tmp_path / "painted" / f"{widget.case}.nii.gz").dataobj)
    assert np.array_equal(saved, data)


def test_napari_finds_the_plugin_widget():
    """The installed package registers its npe2 manifest (needs ``pip install -e .``)."""
    from npe2 import PluginManager

    manager = PluginManager.instance()
    manager.discover()
    widgets = [w for w in manager.iter_widgets() if w.plugin_name == "sparseseg"]
    assert [w.display_name for w in widgets] == ["Annotate chosen slices"]
    command = manager.get_command(widgets[0].command)
    assert command.python_name == "sparseseg.annotate.widget:AnnotateWidget"
