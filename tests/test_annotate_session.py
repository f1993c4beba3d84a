"""The annotation session without a GUI: slice queue, done rule, locking, saving, resuming."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from sparseseg.annotate import (
    AnnotationProject,
    clear_outside,
    outside_chosen,
    painted_on_own,
    slice_queue,
    view_order,
)
from sparseseg.cli import main
from sparseseg.data.layout import Dataset
from sparseseg.data.phantom import write_phantom_dataset
from sparseseg.data.planes import slice_index
from sparseseg.errors import InputError
from sparseseg.selection import annotation_mask


@pytest.fixture(scope="module")
def selection(tmp_path_factory) -> Path:
    """A phantom dataset (2 cases of 20 x 24 x 12), an EIA s4 selection of it and the simulated
    sparse dataset (SEL/dataset)."""
    root = tmp_path_factory.mktemp("ann")
    write_phantom_dataset(root / "ph", "heart", cases=2, seed=3, shape=(20, 24, 12))
    sel = root / "sel"
    argv = ["select", root / "ph", "--budget", 4, "--strategy", "eia", "--out", sel, "--no-figures",
            "--simulate-from-labels"]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    return sel


def test_queue_is_plane_by_plane_in_priority_order():
    chosen = {"xy": [7, 2], "xz": [5], "yz": [1, 9, 4]}
    queue = slice_queue(chosen)
    assert [(t.plane, t.index, t.rank, t.of) for t in queue] == [
        ("xy", 7, 0, 2), ("xy", 2, 1, 2), ("xz", 5, 0, 1),
        ("yz", 1, 0, 3), ("yz", 9, 1, 3), ("yz", 4, 2, 3),
    ]  # fmt: skip
    assert queue[4].describe() == "yz slice 9 (priority 2 of 3)" and queue[4].key == "yz:9"
    # The slider (first in dims order) is the axis normal to the plane; xy is normal to Z.
    assert view_order("xy") == (2, 0, 1)
    assert view_order("xz") == (1, 0, 2)
    assert view_order("yz") == (0, 1, 2)


def test_done_rule_ignores_crossings_with_other_chosen_slices():
    chosen = {"xy": [3], "xz": [2], "yz": [4]}
    painting = np.zeros((6, 5, 7), np.uint8)
    painting[1, 2, 3] = 1  # on xy 3 and on xz 2 (y = 2): a crossing only
    painting[4, 0, 3] = 2  # on xy 3 and on yz 4 (x = 4): a crossing only
    assert painted_on_own(painting, chosen) == set()
    painting[0, 0, 3] = 1  # on xy 3 alone
    assert painted_on_own(painting, chosen) == {"xy:3"}
    painting[5, 2, 6] = 1  # on xz 2 alone
    assert painted_on_own(painting, chosen) == {"xy:3", "xz:2"}
    painting[:] = 0
    painting[4, 1, 0] = 1  # on yz 4 alone
    assert painted_on_own(painting, chosen) == {"yz:4"}


def test_clear_outside_keeps_chosen_slices():
    chosen = {"xy": [1], "yz": [0]}
    painting = np.ones((3, 4, 5), np.uint8)
    outside = outside_chosen(painting.shape, chosen)
    kept = annotation_mask(painting.shape, chosen)
    assert clear_outside(painting, outside) == int((~kept).sum()) > 0
    assert np.array_equal(painting, kept.astype(np.uint8))
    assert clear_outside(painting, outside) == 0


def test_project_saves_resumes_and_counts(selection, tmp_path):
    painted = tmp_path / "painted"
    project = AnnotationProject(selection, painted)
    ds = Dataset.open(project.dataset.root)
    assert project.cases == ds.cases("Tr") and project.classes == ds.class_labels
    assert project.resume() == (project.cases[0], 0)
    case = project.cases[1]
    image = project.image(case)
    chosen = project.chosen(case)
    queue = project.queue(case)
    assert len(queue) == sum(len(v) for v in chosen.values()) == 3 + 6 + 5
    painting = project.load_painting(case)
    assert painting.shape == image.shape and not painting.any()
    # Paint the true labels on the first plane's first slice; mark the last slice background.
    truth = ds.load_label(case).array
    first, last = queue[0], queue[-1]
    where = slice_index(first.plane, first.index)
    painting[where] = truth[where]
    assert truth[where].any()
    project.set_background(case, last, True)
    done = project.done(case, painting)
    assert done[0] and done[-1] and sum(done) == 2
    path = project.save_painting(case, painting)
    project.set_position(case, 5)
    project.save_state()
    saved = nib.load(path)
    assert path == painted / f"{case}.nii.gz"
    assert np.allclose(saved.affine, image.affine) and saved.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(saved.dataobj), painting)
    assert not list(painted.glob(".*"))  # no temporary files left
    # A new session finds the painting, the marks, the counts and the position.
    again = AnnotationProject(selection, painted)
    assert again.resume() == (case, 5)
    assert np.array_equal(again.load_painting(case), painting)
    assert again.background(case) == {last.key}
    assert again.totals() == (2, 2 * len(queue))
    assert again.totals({case: 4}) == (4, 2 * len(queue))
    again.set_background(case, last, False)
    assert again.done(case, painting)[-1] is False
    state = json.loads((painted / "progress.json").read_text())
    assert state["case"] == case and state["cases"][case]["position"] == 5


def test_project_bad_input(selection, tmp_path):
    with pytest.raises(InputError, match="selection file not found"):
        AnnotationProject(tmp_path / "nowhere")
    painted = tmp_path / "painted"
    painted.mkdir()
    (painted / "progress.json").write_text("{not json")
    with pytest.raises(InputError, match="invalid JSON"):
        AnnotationProject(selection, painted)
    (painted / "progress.json").write_text('{"format": "other"}')
    with pytest.raises(InputError, match="not a sparseseg annotation progress file"):
        AnnotationProject(selection, painted)
    (painted / "progress.json").unlink()
    project = AnnotationProject(selection, painted)
    case = project.cases[0]
    image = project.image(case)
    wrong = np.zeros(image.shape, np.uint8)
    wrong[0, 0, 0] = 9
    nib.save(nib.Nifti1Image(wrong, image.affine), project.painted_path(case))
    with pytest.raises(InputError, match=r"painted values \[9\]"):
        project.load_painting(case)
    nib.save(nib.Nifti1Image(wrong[:-1], image.affine), project.painted_path(case))
    with pytest.raises(InputError, match="differs from image shape"):
        project.load_painting(case)
    record = json.loads((selection / "selection.json").read_text())
    record["dataset"] = str(tmp_path / "moved")
    moved = tmp_path / "moved_sel"
    moved.mkdir()
    (moved / "selection.json").write_text(json.dumps(record))
    with pytest.raises(InputError, match="pass --dataset"):
        AnnotationProject(moved)
    assert AnnotationProject(moved, dataset=project.dataset.root).cases == project.cases


def test_cli_bad_selection_exits_2(tmp_path, capsys):
    assert main(["annotate", str(tmp_path / "nowhere")]) == 2
    assert "selection file not found" in capsys.readouterr().err


def test_cli_without_napari_exits_2(selection, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "napari", None)  # as if the extra were not installed
    assert main(["annotate", str(selection)]) == 2
    assert "pip install 'sparseseg[napari]'" in capsys.readouterr().err


def test_painted_truth_is_the_simulated_sparse_dataset(selection, tmp_path):
    """Paintings of the true labels on the chosen slices, read with the selection's masks, hold
    exactly the sparse labels that ``--simulate-from-labels`` writes: what importing them gives."""
    project = AnnotationProject(selection, tmp_path / "painted")
    ds = project.dataset
    simulated = Dataset.open(selection / "dataset")
    ignore = simulated.ignore_value
    for case in project.cases:
        truth = ds.load_label(case).array
        on = annotation_mask(truth.shape, project.chosen(case))
        path = project.save_painting(case, np.where(on, truth, 0))
        painted = np.asarray(nib.load(path).dataobj)
        mask = np.asarray(nib.load(selection / "masks" / f"{case}.nii.gz").dataobj) == 1
        assert np.array_equal(mask, on)
        assert np.array_equal(np.where(mask, painted, ignore), simulated.load_label(case).array)
        assert np.allclose(nib.load(path).affine, simulated.load_label(case).affine)
