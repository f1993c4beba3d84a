"""Importing painted annotations (``sparseseg annotations``): formats, geometry, every check."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
from tiny_preset import TINIER

from sparseseg import api
from sparseseg.annotations import (
    Segment,
    cover_slices,
    merge_segment_layers,
    segment_classes,
    sparse_from_painted,
    to_image_grid,
)
from sparseseg.cli import main
from sparseseg.data.io import write_nifti
from sparseseg.data.layout import Dataset
from sparseseg.data.phantom import write_phantom_dataset
from sparseseg.data.planes import slice_index
from sparseseg.data.volume import Volume
from sparseseg.errors import InputError
from sparseseg.selection import annotation_mask, read_selection

SHAPE = (24, 24, 16)
WARNING = "sparseseg annotations: warning: "


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """(dataset, selection folder with the simulated dataset) on a small heart phantom."""
    root = tmp_path_factory.mktemp("annotations")
    ds = write_phantom_dataset(root / "ph", "heart", cases=2, seed=2, test_cases=1, shape=SHAPE)
    api.select(ds, 4, root / "sel", strategy="eia", simulate_from_labels=True, progress=False)
    return ds, root / "sel"


def painting(ds: Path, sel: Path, case: str) -> Volume:
    """An ITK-SNAP-style painting: 0 everywhere, the true labels on exactly the chosen slices."""
    label = Dataset.open(ds).load_label(case)
    chosen = read_selection(sel).chosen(case)
    on = annotation_mask(label.shape, chosen)
    return label.with_array(np.where(on, label.array, 0).astype(np.uint8))


def paint_all(ds: Path, sel: Path, folder: Path) -> dict[str, Volume]:
    paintings = {}
    for case in Dataset.open(ds).cases("Tr"):
        paintings[case] = painting(ds, sel, case)
        write_nifti(folder / f"{case}.nii.gz", paintings[case])
    return paintings


def run(*argv) -> int:
    return main(["annotations", *map(str, argv)])


def assert_same_dataset(a: Path, b: Path) -> None:
    """Two sparse datasets agree voxel for voxel: labels, images, test split, dataset.json."""
    da, db = Dataset.open(a), Dataset.open(b)
    assert json.loads((a / "dataset.json").read_text()) == json.loads(
        (b / "dataset.json").read_text()
    )
    assert da.cases("Tr") == db.cases("Tr") and da.cases("Ts") == db.cases("Ts")
    for case in da.cases("Tr"):
        la, lb = nib.load(da.label_path(case)), nib.load(db.label_path(case))
        assert la.get_data_dtype() == lb.get_data_dtype()
        assert np.array_equal(np.asarray(la.dataobj), np.asarray(lb.dataobj))
        assert np.allclose(la.affine, lb.affine)
        assert da.image_path(case).read_bytes() == db.image_path(case).read_bytes()
    for case in da.cases("Ts"):
        assert da.label_path(case, "Ts").read_bytes() == db.label_path(case, "Ts").read_bytes()


def test_itksnap_painting_equals_the_simulated_dataset_and_trains(study, tmp_path, capsys):
    from sparseseg.pipeline import train

    ds, sel = study
    paint_all(ds, sel, tmp_path / "painted")
    out = tmp_path / "sparse"
    assert run(sel, tmp_path / "painted", "--out", out) == 0
    captured = capsys.readouterr()
    assert_same_dataset(out, sel / "dataset")
    lines = captured.out.splitlines()
    assert lines[0] == f"wrote {out}: 2 cases annotated from {tmp_path / 'painted'}"
    record = read_selection(sel)
    per_plane = {p: sum(len(record.chosen(c)[p]) for c in record.cases) for p in record.planes}
    assert lines[1] == "slices annotated: " + ", ".join(f"{p} {n}" for p, n in per_plane.items())
    # Per class, the voxels of the chosen slices in the true labels.
    truth = Dataset.open(ds)
    counts = np.zeros(3, int)
    for case in record.cases:
        on = annotation_mask(SHAPE, record.chosen(case))
        counts += np.bincount(truth.load_label(case).array[on], minlength=3)
    assert lines[2] == (
        f"annotated voxels: background {counts[0]}, myocardium {counts[1]}, blood_pool {counts[2]}"
    )
    # The imported dataset trains and predicts as it is.
    model = tmp_path / "model"
    state = train(out, model, "cpu", TINIER, progress=False, log=None)
    assert state["stages"]["bundle"]["done"]
    written = api.predict(model, out / "imagesTs", tmp_path / "pred", progress=False)
    case = Dataset.open(out).cases("Ts")[0]
    pred = nib.load(written[case]["meta"])
    assert pred.shape == SHAPE and set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}


def lps_geometry(ras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NRRD 'space directions' (one row per array axis) and 'space origin' in LPS."""
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ras
    return lps[:3, :3].T.copy(), lps[:3, 3].copy()


def flipped(volume: Volume, axis: int) -> Volume:
    """The same voxels stored with ``axis`` reversed, and the affine that keeps them in place."""
    n = volume.shape[axis]
    flip = np.eye(4)
    flip[axis, axis], flip[axis, 3] = -1, n - 1
    return Volume(np.flip(volume.array, axis).copy(), volume.affine @ flip)


SLICER_KEYS = {
    "Segmentation_MasterRepresentation": "Binary labelmap",
    "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
    "Segmentation_ReferenceImageExtentOffset": "0 0 0",
}


def slicer_header(ras: np.ndarray, segments: list[tuple[str, int, int]], shape) -> dict:
    """A 3D Slicer .seg.nrrd header: LPS geometry and Segment{i}_* keys."""
    directions, origin = lps_geometry(ras)
    extent = " ".join(f"0 {s - 1}" for s in shape[-3:])
    header = {"space": "left-posterior-superior", "space origin": origin, **SLICER_KEYS}
    if len(shape) == 4:
        header["space directions"] = np.vstack([np.full(3, np.nan), directions])
        header["kinds"] = ["list", "domain", "domain", "domain"]
    else:
        header["space directions"] = directions
        header["kinds"] = ["domain"] * 3
    for i, (name, value, layer) in enumerate(segments):
        header.update(
            {
                f"Segment{i}_ID": f"Segment_{i + 1}",
                f"Segment{i}_Name": name,
                f"Segment{i}_NameAutoGenerated": "0",
                f"Segment{i}_Color": "0.5 0.5 0.5",
                f"Segment{i}_ColorAutoGenerated": "0",
                f"Segment{i}_LabelValue": str(value),
                f"Segment{i}_Layer": str(layer),
                f"Segment{i}_Extent": extent,
                f"Segment{i}_Tags": "TerminologyEntry:Segmentation category and type|",
            }
        )
    return header


def test_slicer_segmentation_and_reoriented_maps_import_to_the_same_dataset(study, tmp_path):
    ds, sel = study
    paintings = paint_all(ds, sel, tmp_path / "nifti")
    folder = tmp_path / "mixed"
    folder.mkdir()
    first, second = sorted(paintings)
    # Case 1: a .seg.nrrd, x flipped, LPS. 'Blood Pool' (value 5) maps to blood_pool by name,
    # 'Segment_1' (value 1) to myocardium by value.
    vol = flipped(paintings[first], 0)
    seg = np.select([vol.array == 1, vol.array == 2], [1, 5], 0).astype(np.uint8)
    header = slicer_header(vol.affine, [("Segment_1", 1, 0), ("Blood Pool", 5, 0)], seg.shape)
    nrrd.write(str(folder / f"{first}.seg.nrrd"), seg, header)
    # Case 2: a NIfTI with axes permuted and y flipped, its affine saying so.
    vol = flipped(paintings[second], 1)
    perm = np.eye(4)[[2, 0, 1, 3]].T  # new axis j is old axis (2, 0, 1)[j]
    write_nifti(
        folder / f"{second}.nii.gz",
        Volume(np.transpose(vol.array, (2, 0, 1)).copy(), vol.affine @ perm),
    )
    assert run(sel, folder, "--out", tmp_path / "a") == 0
    assert_same_dataset(tmp_path / "a", sel / "dataset")
    # The same case as a 4D .seg.nrrd, one segment per layer, and as an ITK-SNAP .nrrd.
    for name in (f"{first}.seg.nrrd", f"{second}.nii.gz"):
        (folder / name).unlink()
    vol = paintings[first]
    layers = np.stack([vol.array == 1, vol.array == 2]).astype(np.uint8)
    header = slicer_header(vol.affine, [("myocardium", 1, 0), ("BLOOD_POOL", 1, 1)], layers.shape)
    nrrd.write(str(folder / f"{first}.seg.nrrd"), layers, header)
    directions, origin = lps_geometry(paintings[second].affine)
    nrrd.write(
        str(folder / f"{second}.nrrd"),
        paintings[second].array,
        {
            "space": "left-posterior-superior",
            "space directions": directions,
            "space origin": origin,
        },
    )
    assert run(sel, folder, "--out", tmp_path / "b") == 0
    assert_same_dataset(tmp_path / "b", sel / "dataset")
    # A segmentation cropped to its segments' extent (3D Slicer's crop to minimum extent).
    vol = flipped(paintings[first], 2)
    box = tuple(slice(a.min(), a.max() + 1) for a in np.nonzero(vol.array))
    corner = np.array([s.start for s in box] + [1.0])
    crop = vol.array[box]
    ras = vol.affine.copy()
    ras[:, 3] = vol.affine @ corner
    assert crop.shape != SHAPE
    nrrd.write(
        str(folder / f"{first}.seg.nrrd"),
        crop,
        slicer_header(ras, [("myocardium", 1, 0), ("blood_pool", 2, 0)], crop.shape),
    )
    assert run(sel, folder, "--out", tmp_path / "c") == 0
    assert_same_dataset(tmp_path / "c", sel / "dataset")


def error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("sparseseg annotations: error: ")
    return lines[0]


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    if out.parent.exists():
        assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def test_errors_exit_2_with_one_line_and_write_nothing(study, tmp_path, capsys):
    ds, sel = study
    folder = tmp_path / "painted"
    paintings = paint_all(ds, sel, folder)
    first, second = sorted(paintings)
    out = tmp_path / "out" / "sparse"

    def fails(*extra) -> str:
        assert run(sel, folder, "--out", out, *extra) == 2
        assert_nothing_written(out)
        return error_line(capsys)

    # An undeclared label value, even off the chosen slices.
    bad = paintings[second].array.copy()
    bad[0, 0, 1], bad[3, 5, 7] = 7, 9
    write_nifti(folder / f"{second}.nii.gz", paintings[second].with_array(bad))
    line = fails()
    assert f"{second}.nii.gz" in line and "label values [7, 9] are not declared" in line
    # Another grid: the spacing differs.
    scaled = Volume(paintings[second].array, np.diag([1.0, 1.0, 2.0, 1.0]))
    write_nifti(folder / f"{second}.nii.gz", scaled)
    line = fails()
    assert f"{second}.nii.gz" in line and "another grid" in line and "spacing" in line
    # Another shape.
    write_nifti(
        folder / f"{second}.nii.gz",
        Volume(paintings[second].array[:, :, :8], paintings[second].affine),
    )
    assert "shape (24, 24, 8) vs (24, 24, 16)" in fails()
    # A case without a painted file, and two files for one case.
    (folder / f"{second}.nii.gz").unlink()
    line = fails()
    assert f"no painted file for cases {second}" in line and "--allow-missing" in line
    write_nifti(folder / f"{second}.nii.gz", paintings[second])
    write_nifti(folder / f"{second}.nii", paintings[second])
    assert "two painted files" in fails()
    (folder / f"{second}.nii").unlink()
    # A Slicer segment that matches no class by name or value.
    (folder / f"{first}.nii.gz").unlink()
    vol = paintings[first]
    header = slicer_header(vol.affine, [("Tumour", 4, 0)], vol.shape)
    nrrd.write(str(folder / f"{first}.seg.nrrd"), (vol.array > 0).astype(np.uint8) * 4, header)
    line = fails()
    assert (
        f"{first}.seg.nrrd" in line and "segment 'Tumour' (label value 4) matches no class" in line
    )
    # Overlapping segments of different classes in two layers.
    layers = np.stack([vol.array > 0, vol.array == 2]).astype(np.uint8)
    header = slicer_header(vol.affine, [("myocardium", 1, 0), ("blood_pool", 1, 1)], layers.shape)
    nrrd.write(str(folder / f"{first}.seg.nrrd"), layers, header)
    assert "belong to segments of different classes" in fails()
    # An NRRD without space directions.
    (folder / f"{first}.seg.nrrd").unlink()
    nrrd.write(str(folder / f"{first}.nrrd"), vol.array)
    assert "lacks 'space directions'" in fails()
    # The output exists.
    out.mkdir(parents=True)
    (folder / f"{first}.nrrd").unlink()
    write_nifti(folder / f"{first}.nii.gz", vol)
    assert run(sel, folder, "--out", out) == 2
    assert "already exists" in error_line(capsys) and not any(out.iterdir())


def test_allow_missing_skips_and_says_so(study, tmp_path, capsys):
    ds, sel = study
    folder = tmp_path / "painted"
    paintings = paint_all(ds, sel, folder)
    first, second = sorted(paintings)
    (folder / f"{second}.nii.gz").unlink()
    write_nifti(folder / "stray.nii.gz", paintings[first])
    out = tmp_path / "sparse"
    assert run(sel, folder, "--out", out, "--allow-missing") == 0
    captured = capsys.readouterr()
    assert f"skipped 1 without a painted file: {second}" in captured.out.splitlines()[0]
    assert WARNING + "1 painted files match no case of the selection and are not used: " \
        "stray.nii.gz" in captured.err  # fmt: skip
    sparse = Dataset.open(out)
    assert sparse.cases("Tr") == [first] and sparse.meta["numTraining"] == 1
    simulated = Dataset.open(sel / "dataset")
    assert np.array_equal(sparse.load_label(first).array, simulated.load_label(first).array)
    assert not sparse.image_path(second).exists()


def test_extra_voxels_warn_and_keep_extra_keeps_whole_slices(study, tmp_path, capsys):
    ds, sel = study
    folder = tmp_path / "painted"
    paintings = paint_all(ds, sel, folder)
    first = sorted(paintings)[0]
    chosen = read_selection(sel).chosen(first)
    truth = Dataset.open(ds).load_label(first).array
    # The annotator also painted a whole xy slice that was not chosen.
    z = next(z for z in range(SHAPE[2]) if z not in chosen["xy"] and truth[:, :, z].any())
    extra = paintings[first].array.copy()
    extra[:, :, z] = truth[:, :, z]
    off = (extra != 0) & ~annotation_mask(SHAPE, chosen)
    write_nifti(folder / f"{first}.nii.gz", paintings[first].with_array(extra))

    assert run(sel, folder, "--out", tmp_path / "a") == 0
    captured = capsys.readouterr()
    assert (
        WARNING
        + (
            f"{int(off.sum())} painted voxels lie outside the chosen slices ({first} "
            f"{int(off.sum())}); they are ignored (--keep-extra keeps their slices)"
        )
        in captured.err.splitlines()
    )
    assert_same_dataset(tmp_path / "a", sel / "dataset")

    assert run(sel, folder, "--out", tmp_path / "b", "--keep-extra") == 0
    captured = capsys.readouterr()
    assert "their slices are kept as annotated slices" in captured.err
    assert f"(with 1 extra slices kept: {first} xy {z})" in captured.out.splitlines()[1]
    labels = Dataset.open(tmp_path / "b").load_label(first).array
    expected = Dataset.open(sel / "dataset").load_label(first).array.copy()
    expected[:, :, z] = truth[:, :, z]  # the whole slice: its 0 are background
    assert np.array_equal(labels, expected)
    meta = json.loads((tmp_path / "b" / "dataset.json").read_text())["sparse_annotation"]
    simulated = json.loads((sel / "dataset" / "dataset.json").read_text())["sparse_annotation"]
    assert meta["annotated_fraction"] > simulated["annotated_fraction"]


def test_blank_chosen_slices_warn(study, tmp_path, capsys):
    ds, sel = study
    folder = tmp_path / "painted"
    paintings = paint_all(ds, sel, folder)
    first = sorted(paintings)[0]
    chosen = read_selection(sel).chosen(first)
    array = paintings[first].array.copy()
    forgotten = next(z for z in chosen["xy"] if array[:, :, z].any())
    array[:, :, forgotten] = 0
    write_nifti(folder / f"{first}.nii.gz", paintings[first].with_array(array))
    assert run(sel, folder, "--out", tmp_path / "a") == 0
    err = capsys.readouterr().err.splitlines()
    blank = [line for line in err if "entirely 0" in line]
    assert len(blank) == 1
    # Every chosen slice without a painted voxel is listed, the forgotten one among them.
    expected = {}
    for case, vol in paintings.items():
        a = array if case == first else vol.array
        c = read_selection(sel).chosen(case)
        empty = {p: [i for i in v if not a[slice_index(p, i)].any()] for p, v in c.items()}
        expected[case] = {p: sorted(v) for p, v in empty.items() if v}
    total = sum(len(v) for e in expected.values() for v in e.values())
    assert blank[0].startswith(
        WARNING + f"{total} chosen slices are entirely 0, background only (forgotten?): "
    )
    assert f"xy {','.join(map(str, expected[first]['xy']))}" in blank[0]
    assert forgotten in expected[first]["xy"]
    # Legal: the slice is background in the dataset.
    labels = Dataset.open(tmp_path / "a").load_label(first).array
    assert np.all(labels[:, :, forgotten] == 0)


# Pure functions --------------------------------------------------------------------------------


def test_cover_slices_prefers_the_fewest_whole_slices():
    mask = np.zeros((6, 7, 8), bool)
    mask[1:5, 2:6, 3] = True  # a painted patch on xy slice 3
    mask[2, 6, 6] = True  # one stray voxel
    assert cover_slices(mask, ("xy", "xz", "yz")) == {"xy": [3, 6]}
    assert cover_slices(mask, ("yz",)) == {"yz": [1, 2, 3, 4]}
    assert cover_slices(np.zeros((2, 2, 2), bool), ("xy",)) == {}


def test_sparse_from_painted_counts():
    painted = np.zeros((4, 5, 6), np.int32)
    painted[:, :, 2] = 1
    painted[0, 0, 4] = 2  # outside
    result = sparse_from_painted(painted, {"xy": [2, 3]}, ignore_value=3)
    assert result.extra_voxels == 1 and result.empty == {"xy": [3]} and result.added == {}
    assert result.class_voxels == {0: 20, 1: 20}
    assert np.all(result.labels[:, :, 2] == 1) and np.all(result.labels[:, :, 3] == 0)
    assert np.all(result.labels[:, :, [0, 1, 4, 5]] == 3)
    kept = sparse_from_painted(painted, {"xy": [2, 3]}, ignore_value=3, keep_extra=True)
    assert kept.added == {"xy": [4]} and kept.chosen == {"xy": [2, 3, 4]}
    assert kept.labels[0, 0, 4] == 2 and kept.labels[1, 1, 4] == 0


def test_to_image_grid_through_affines():
    rng = np.random.default_rng(0)
    array = rng.integers(0, 3, (4, 5, 6))
    affine = np.diag([0.5, 0.7, 2.0, 1.0])
    affine[:3, 3] = (10, -3, 4)
    vol = flipped(flipped(Volume(array, affine), 0), 2)
    moved = np.transpose(vol.array, (1, 2, 0))
    perm = np.eye(4)[[1, 2, 0, 3]].T
    assert np.array_equal(to_image_grid(moved, vol.affine @ perm, affine, array.shape), array)
    shifted = affine.copy()
    shifted[0, 3] += 0.01  # 2% of a voxel
    with pytest.raises(InputError, match="another grid.*origin"):
        to_image_grid(array, shifted, affine, array.shape)
    shifted[0, 3] = 10 + 1e-4  # within tolerance
    assert np.array_equal(to_image_grid(array, shifted, affine, array.shape), array)
    # A box of the image's grid, one voxel before its start along x: placed where it lies.
    box = np.zeros((3, 2, 2), int)
    box[1:, 0, 1] = 2
    boxed = affine.copy()
    boxed[:3, 3] = (affine @ [-1, 2, 3, 1])[:3]
    with pytest.raises(InputError, match="another grid"):
        to_image_grid(box, boxed, affine, array.shape)
    placed = to_image_grid(box, boxed, affine, array.shape, cropped=True)
    assert placed.shape == array.shape and np.count_nonzero(placed) == 2
    assert placed[0, 2, 4] == placed[1, 2, 4] == 2
    box[0, 0, 0] = 1  # painted outside the image
    with pytest.raises(InputError, match="1 painted voxels lie outside the image"):
        to_image_grid(box, boxed, affine, array.shape, cropped=True)
    boxed[0, 3] += 0.25  # not on a voxel of the image
    with pytest.raises(InputError, match="another grid"):
        to_image_grid(box, boxed, affine, array.shape, cropped=True)


def test_segments_map_by_name_then_value():
    classes = {"background": 0, "myocardium": 1, "blood_pool": 2}
    lookup = segment_classes(
        [Segment("Blood pool", 1, 0), Segment("whatever", 2, 0), Segment("Myocardium", 7, 1)],
        classes,
    )
    assert lookup == {(0, 1): 2, (0, 2): 2, (1, 7): 1}
    layers = np.array([[[[1, 2, 0]]], [[[0, 0, 7]]]])
    assert merge_segment_layers(layers, lookup).tolist() == [[[2, 2, 1]]]
    with pytest.raises(InputError, match=r"label values \[3\] in layer 0 belong to no segment"):
        merge_segment_layers(np.array([[[[3]]]]), lookup)


def test_dataset_is_found_from_the_selection_or_given(study, tmp_path, capsys):
    ds, sel = study
    paint_all(ds, sel, tmp_path / "painted")
    moved = tmp_path / "sel"
    (moved).mkdir()
    record = json.loads((sel / "selection.json").read_text())
    record["dataset"] = str(tmp_path / "gone")
    (moved / "selection.json").write_text(json.dumps(record))
    assert run(moved, tmp_path / "painted", "--out", tmp_path / "a") == 2
    assert "not found; pass it (--dataset DIR)" in error_line(capsys)
    assert run(moved, tmp_path / "painted", "--out", tmp_path / "a", "--dataset", ds) == 0
    assert_same_dataset(tmp_path / "a", sel / "dataset")
