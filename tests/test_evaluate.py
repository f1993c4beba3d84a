"""`sparseseg evaluate` and `sparseseg.evaluation.evaluate` on small NIfTI folders and datasets."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from sparseseg.cli import main
from sparseseg.data.io import write_nifti
from sparseseg.data.layout import write_case, write_dataset_json
from sparseseg.data.volume import Volume
from sparseseg.errors import InputError
from sparseseg.evaluation import evaluate, parse_classes

SPACING = (0.8, 1.2, 2.0)
AFFINE = np.diag([*SPACING, 1.0])
AFFINE[:3, 3] = (10.0, -5.0, 3.0)


def blobs(shape=(20, 18, 10), seed=0):
    field = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), 2.0)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[field > 0.0] = 1
    labels[field > 0.05] = 2
    return labels


def independent(pred, gt, value, spacing):
    """Dice, ADB and Hausdorff by other means: counts, erosion surfaces and all-pairs distances."""
    p, g = pred == value, gt == value
    dice = 2 * (p & g).sum() / (p.sum() + g.sum())
    sp, sg = p & ~ndimage.binary_erosion(p), g & ~ndimage.binary_erosion(g)
    d = cdist(np.argwhere(sp) * spacing, np.argwhere(sg) * spacing)
    pooled = np.concatenate([d.min(axis=1), d.min(axis=0)])
    return dice, pooled.mean(), pooled.max()


@pytest.fixture
def folders(tmp_path):
    """GT and prediction folders: case 'a' predicted exactly, case 'b' perturbed."""
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_a, gt_b = blobs(seed=1), blobs(seed=2)
    pred_b = np.roll(gt_b, 1, axis=0)
    pred_b[5:9, 5:9, 4:6] = 2
    for name, lab in [("a", gt_a), ("b", gt_b)]:
        write_nifti(gt_dir / f"{name}.nii.gz", lab, AFFINE)
    write_nifti(pred_dir / "a.nii.gz", gt_a, AFFINE)
    write_nifti(pred_dir / "b.nii.gz", pred_b, AFFINE)
    return gt_dir, pred_dir, gt_b, pred_b


def test_cli_on_a_folder_matches_an_independent_computation(folders, tmp_path, capsys):
    gt_dir, pred_dir, gt_b, pred_b = folders
    out = tmp_path / "metrics.json"
    assert main(["evaluate", str(pred_dir), str(gt_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Dice" in printed and "wrote" in printed and str(out) in printed
    report = json.loads(out.read_text())
    assert report["classes"] == {"1": 1, "2": 2}
    assert report["rand_f_interior"] is None and report["split"] is None
    assert set(report["cases"]) == {"a", "b"}
    case_a, case_b = report["cases"]["a"], report["cases"]["b"]
    assert case_a["spacing"] == pytest.approx(list(SPACING))
    for metrics in case_a["classes"].values():
        assert metrics == {"dice": 1.0, "adb": 0.0, "hausdorff": 0.0}
    score_b = 0.0
    for name, value in report["classes"].items():
        dice, adb, hd = independent(pred_b, gt_b, value, SPACING)
        got = case_b["classes"][name]
        assert got["dice"] == pytest.approx(dice)
        assert got["adb"] == pytest.approx(adb)
        assert got["hausdorff"] == pytest.approx(hd)
        assert dice < 1 and adb > 0
        score_b += dice / 2 - adb / 4 - hd / 30
    assert case_b["hvsmr_score"] == pytest.approx(score_b)
    summary = report["summary"]
    assert summary["num_cases"] == 2
    dice2 = [report["cases"][c]["classes"]["2"]["dice"] for c in ("a", "b")]
    stats = summary["classes"]["2"]["dice"]
    assert stats["mean"] == pytest.approx(np.mean(dice2))
    assert stats["std"] == pytest.approx(np.std(dice2))
    assert stats["n"] == 2 and stats["n_nan"] == 0
    assert summary["hvsmr_score"]["mean"] == pytest.approx((1.0 + score_b) / 2)


def test_single_files_and_named_classes(folders, tmp_path):
    gt_dir, pred_dir, _, _ = folders
    shutil.copy(pred_dir / "b.nii.gz", tmp_path / "other_name.nii.gz")
    report = evaluate(tmp_path / "other_name.nii.gz", gt_dir / "b.nii.gz", classes={"two": 2})
    assert list(report["cases"]) == ["b"]
    assert list(report["cases"]["b"]["classes"]) == ["two"]
    assert parse_classes("myo=1, bp=2") == {"myo": 1, "bp": 2}
    for bad in ("myo", "myo=x", "a=1,a=2", ","):
        with pytest.raises(InputError):
            parse_classes(bad)


def em_labels(nz, split_first=False):
    """Membrane 0 / interior 1, two cells per xy slice; optionally a membrane splitting cell 1."""
    lab = np.zeros((12, 8, nz), dtype=np.uint8)
    lab[1:5, 1:7] = 1
    lab[6:11, 1:7] = 1
    if split_first:
        lab[1:5, 3] = 0
    return lab


def test_dataset_with_membrane_and_interior_gets_rand_f(tmp_path):
    root, pred_dir = tmp_path / "em", tmp_path / "pred"
    write_dataset_json(root, {"membrane": 0, "interior": 1}, num_training=1)
    spacing_affine = np.diag([0.004, 0.004, 0.05, 1.0])
    image = Volume(np.zeros((12, 8, 3), np.float32), spacing_affine)
    write_case(root, "tr", image, image.with_array(em_labels(3)), split="Tr")
    write_case(root, "ts", image, image.with_array(em_labels(3)), split="Ts")
    write_nifti(pred_dir / "ts.nii.gz", em_labels(3, split_first=True), spacing_affine)
    write_nifti(pred_dir / "tr.nii.gz", em_labels(3), spacing_affine)

    report = evaluate(pred_dir, root)  # labelsTs is preferred
    assert report["split"] == "Ts" and list(report["cases"]) == ["ts"]
    assert report["classes"] == {"interior": 1} and report["rand_f_interior"] == 1
    assert report["unmatched_predictions"] == ["tr"]
    case = report["cases"]["ts"]
    # Cell 1 (24 px) split into 8 + 12 px (+4 px of membrane, one predicted segment with the
    # other slices'); cell 2 (30 px) intact. Independent: skimage on the stacked components.
    from skimage.measure import label
    from skimage.metrics import adapted_rand_error

    def stack(lab):
        out, offset = np.zeros(lab.shape, np.int64), 0
        for z in range(lab.shape[2]):
            seg, n = label(lab[:, :, z] == 1, connectivity=1, return_num=True)
            out[:, :, z] = np.where(seg > 0, seg + offset, 0)
            offset += n
        return out

    are, _, _ = adapted_rand_error(stack(em_labels(3)), stack(em_labels(3, split_first=True)))
    assert case["rand_f"] == pytest.approx(1 - are) and case["rand_f"] < 1
    assert report["summary"]["rand_f"]["mean"] == pytest.approx(1 - are)

    report_tr = evaluate(pred_dir, root, split="Tr")
    assert report_tr["split"] == "Tr" and report_tr["cases"]["tr"]["rand_f"] == 1.0


def test_dataset_labels_against_themselves(tmp_path, capsys):
    root = tmp_path / "heart"
    write_dataset_json(root, {"background": 0, "myocardium": 1, "blood_pool": 2}, 2)
    for i in range(2):
        lab = blobs(seed=10 + i)
        image = Volume(lab.astype(np.float32), AFFINE)
        write_case(root, f"case{i}", image, image.with_array(lab))
    out = tmp_path / "m.json"
    assert main(["evaluate", str(root / "labelsTr"), str(root), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["split"] == "Tr" and list(report["classes"]) == ["myocardium", "blood_pool"]
    for name in ("myocardium", "blood_pool"):
        s = report["summary"]["classes"][name]
        assert (s["dice"]["mean"], s["adb"]["mean"], s["hausdorff"]["mean"]) == (1.0, 0.0, 0.0)
    assert "myocardium" in capsys.readouterr().out


def test_real_hippocampus_labels_against_themselves(hippocampus_dir, tmp_path):
    files = sorted((hippocampus_dir / "labels").glob("*.nii.gz"))[:3]
    for f in files:
        shutil.copy(f, tmp_path / f.name)
    report = evaluate(tmp_path, tmp_path, classes={"anterior": 1, "posterior": 2})
    assert len(report["cases"]) == 3
    for case in report["cases"].values():
        for m in case["classes"].values():
            assert m == {"dice": 1.0, "adb": 0.0, "hausdorff": 0.0}


# Bad input: exit 2, one line naming the file, nothing written ----------------------------------
def run_bad(args, out, capsys):
    code = main(["evaluate", *args, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))
    return err


def test_missing_prediction(folders, tmp_path, capsys):
    gt_dir, pred_dir, _, _ = folders
    (pred_dir / "b.nii.gz").unlink()
    err = run_bad([str(pred_dir), str(gt_dir)], tmp_path / "m.json", capsys)
    assert "b.nii.gz" in err and "missing prediction" in err


def test_shape_mismatch(folders, tmp_path, capsys):
    gt_dir, pred_dir, gt_b, _ = folders
    write_nifti(pred_dir / "b.nii.gz", gt_b[:, :, :-1], AFFINE)
    err = run_bad([str(pred_dir), str(gt_dir)], tmp_path / "m.json", capsys)
    assert str(pred_dir / "b.nii.gz") in err and "shape" in err


def test_affine_mismatch(folders, tmp_path, capsys):
    gt_dir, pred_dir, gt_b, _ = folders
    write_nifti(pred_dir / "b.nii.gz", gt_b, np.eye(4))
    err = run_bad([str(pred_dir), str(gt_dir)], tmp_path / "m.json", capsys)
    assert str(pred_dir / "b.nii.gz") in err and "affine" in err
    # At EM scale (nm voxels in mm) a voxel-size mismatch is still caught.
    em = np.diag([4e-6, 4e-6, 5e-5, 1.0])
    write_nifti(gt_dir / "b.nii.gz", gt_b, em)
    write_nifti(pred_dir / "b.nii.gz", gt_b, np.diag([8e-6, 8e-6, 5e-5, 1.0]))
    err = run_bad([str(pred_dir), str(gt_dir)], tmp_path / "m.json", capsys)
    assert str(pred_dir / "b.nii.gz") in err and "affine" in err


def test_corrupt_and_empty_inputs(folders, tmp_path, capsys):
    gt_dir, pred_dir, _, _ = folders
    (pred_dir / "b.nii.gz").write_bytes(b"not a nifti")
    err = run_bad([str(pred_dir), str(gt_dir)], tmp_path / "m.json", capsys)
    assert str(pred_dir / "b.nii.gz") in err
    empty = tmp_path / "empty"
    empty.mkdir()
    err = run_bad([str(empty), str(gt_dir)], tmp_path / "m.json", capsys)
    assert str(empty) in err and "no prediction NIfTI" in err
    err = run_bad([str(pred_dir), str(tmp_path / "nowhere")], tmp_path / "m.json", capsys)
    assert "nowhere" in err
    err = run_bad([str(pred_dir), str(gt_dir), "--split", "Ts"], tmp_path / "m.json", capsys)
    assert "split" in err
    err = run_bad([str(pred_dir), str(gt_dir), "--classes", "a=b"], tmp_path / "m.json", capsys)
    assert "--classes" in err


def test_dataset_value_checks(tmp_path, capsys):
    root, pred_dir = tmp_path / "ds", tmp_path / "pred"
    write_dataset_json(root, {"background": 0, "fg": 1, "ignore": 2}, 1)
    lab = (blobs(seed=3) > 0).astype(np.uint8)
    image = Volume(lab.astype(np.float32), AFFINE)
    write_case(root, "c", image, image.with_array(lab))
    bad_pred = lab.copy()
    bad_pred[0, 0, 0] = 5
    write_nifti(pred_dir / "c.nii.gz", bad_pred, AFFINE)
    err = run_bad([str(pred_dir), str(root)], tmp_path / "m.json", capsys)
    assert str(pred_dir / "c.nii.gz") in err and "[5]" in err
    write_nifti(pred_dir / "c.nii.gz", lab, AFFINE)
    sparse = lab.copy()
    sparse[:, :, 3:] = 2  # unannotated voxels: not a ground truth to score against
    write_nifti(root / "labelsTr" / "c.nii.gz", sparse, AFFINE)
    err = run_bad([str(pred_dir), str(root)], tmp_path / "m.json", capsys)
    assert str(root / "labelsTr" / "c.nii.gz") in err and "ignore" in err
