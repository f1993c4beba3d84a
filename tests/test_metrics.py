"""Metrics against hand-computed cases, brute force, MONAI and scikit-image."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from sparseseg import metrics as M


def cube(shape, lo, size):
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(a, a + size) for a in lo)] = True
    return mask


def blobs(shape, seed, smooth=2.5):
    """A label map 0/1/2 of smooth random blobs."""
    field = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), smooth)
    labels = np.zeros(shape, dtype=np.int16)
    labels[field > 0.02] = 1
    labels[field > 0.06] = 2
    return labels


def brute_directed(a, b, spacing):
    """For each True voxel of a (C order), the distance (mm) to the nearest True voxel of b."""
    sp = np.asarray(spacing)
    return cdist(np.argwhere(a) * sp, np.argwhere(b) * sp).min(axis=1)


def brute_surface(mask):
    """Voxels of the mask with a face neighbour outside it (outside the array counts)."""
    padded = np.pad(mask, 1)
    inner = np.ones_like(mask)
    for axis in range(mask.ndim):
        for step in (-1, 1):
            inner &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
    return mask & ~inner


# Dice ------------------------------------------------------------------------------------------
def test_dice_of_known_overlaps():
    a = cube((10, 10, 10), (2, 2, 2), 4)
    b = cube((10, 10, 10), (3, 2, 2), 4)  # overlap 3x4x4 = 48 of 64 each
    assert M.dice(a, b) == pytest.approx(2 * 48 / 128)
    assert M.dice(a, a) == 1.0
    assert M.dice(a, ~a) == 0.0
    empty = np.zeros_like(a)
    assert M.dice(empty, empty) == 1.0
    assert M.dice(a, empty) == 0.0


# Surfaces and distances -----------------------------------------------------------------------
def test_surface_of_a_cube_is_its_shell():
    c = cube((8, 8, 8), (2, 2, 2), 4)
    surf = M.surface(c)
    assert surf.sum() == 64 - 8
    assert not surf[3:5, 3:5, 3:5].any()
    # A mask touching the array border has its border voxels on the surface.
    full = np.ones((3, 4, 5), dtype=bool)
    assert M.surface(full).sum() == 3 * 4 * 5 - 1 * 2 * 3
    np.testing.assert_array_equal(M.surface(full), brute_surface(full))


@pytest.mark.parametrize(
    "spacing,shift_axis",
    [((2.0, 1.0, 0.5), 0), ((0.5, 1.0, 2.0), 0), ((1.0, 3.0, 0.7), 1), ((1.0, 1.0, 1.0), 2)],
)
def test_offset_cubes_by_hand(spacing, shift_axis):
    """Two 4^3 cubes one voxel apart along one axis.

    Each surface has 56 voxels. From A to B: the 16 voxels of A's trailing face are one step along
    the shift axis from B's face (distance s_shift); the 4 inner voxels of A's leading face lie
    inside B, one step from B's surface along any axis (distance min(s)); the other 36 are on
    B's surface (0). B to A is the mirror image. Pooled: 112 values.
    """
    shape = (10, 10, 10)
    lo_b = [2, 2, 2]
    lo_b[shift_axis] += 1
    a, b = cube(shape, (2, 2, 2), 4), cube(shape, lo_b, 4)
    s_shift, s_min = spacing[shift_axis], min(spacing)
    adb, hd = M.surface_metrics(a, b, spacing)
    assert adb == pytest.approx((32 * s_shift + 8 * s_min) / 112)
    assert hd == pytest.approx(s_shift)
    d_ab, d_ba = M.surface_distances(a, b, spacing)
    assert len(d_ab) == len(d_ba) == 56
    assert sorted(np.round(d_ab, 9)) == sorted(np.round([s_shift] * 16 + [s_min] * 4 + [0] * 36, 9))


def test_far_single_voxels_by_hand():
    """One voxel each, (3, 4, 0) voxels apart at spacing (1, 2, 3): sqrt(9 + 64) mm both ways."""
    a = np.zeros((8, 9, 3), dtype=bool)
    b = np.zeros_like(a)
    a[1, 1, 1] = True
    b[4, 5, 1] = True
    adb, hd = M.surface_metrics(a, b, (1.0, 2.0, 3.0))
    assert adb == pytest.approx(math.sqrt(73))
    assert hd == pytest.approx(math.sqrt(73))


def test_directed_distances_match_brute_force_on_every_path():
    rng = np.random.default_rng(3)
    spacing = (0.9, 1.7, 3.1)
    for seed in range(3):
        lab_a, lab_b = blobs((20, 22, 14), seed), blobs((20, 22, 14), seed + 10)
        sa, sb = M.surface(lab_a > 0), M.surface(lab_b > 0)
        ref = brute_directed(sa, sb, spacing)
        np.testing.assert_allclose(M.directed_distances(sa, sb, spacing), ref, atol=1e-9)
        np.testing.assert_allclose(M.directed_distances(sa, sb, spacing, "edt"), ref, atol=1e-9)
    # A dense target far away: the lookup budget runs out and the k-d tree finishes.
    a = np.zeros((24, 24, 24), dtype=bool)
    a[23, 23, 23] = a[20, 2, 22] = True
    b = np.zeros_like(a)
    b[:15, :15, :15] = rng.random((15, 15, 15)) < 0.5
    np.testing.assert_allclose(
        M.directed_distances(a, b, (1, 1, 1)), brute_directed(a, b, (1, 1, 1)), atol=1e-9
    )
    # A sparse target far away: the k-d tree finishes.
    b = np.zeros_like(a)
    b[0, 0, 0] = b[5, 3, 1] = True
    np.testing.assert_allclose(
        M.directed_distances(a, b, (0.5, 1, 2)), brute_directed(a, b, (0.5, 1, 2)), atol=1e-9
    )


def test_surface_metrics_match_brute_force():
    spacing = (1.3, 0.8, 2.5)
    pred, gt = blobs((18, 20, 12), 1) == 1, blobs((18, 20, 12), 2) == 1
    sp, sg = brute_surface(pred), brute_surface(gt)
    pooled = np.concatenate([brute_directed(sp, sg, spacing), brute_directed(sg, sp, spacing)])
    adb, hd = M.surface_metrics(pred, gt, spacing)
    assert adb == pytest.approx(pooled.mean())
    assert hd == pytest.approx(pooled.max())


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_agreement_with_monai_on_random_blobs():
    torch = pytest.importorskip("torch")
    from monai.metrics import (
        compute_average_surface_distance,
        compute_dice,
        compute_hausdorff_distance,
    )

    def onehot(labels):
        t = torch.as_tensor(labels.astype(np.int64))
        return torch.nn.functional.one_hot(t, 3).permute(3, 0, 1, 2)[None].float()

    for seed, spacing in [(0, (1.0, 1.0, 1.0)), (1, (0.7, 1.3, 2.5))]:
        gt, pred = blobs((40, 36, 24), seed), blobs((40, 36, 24), seed + 5)
        ours = M.case_metrics(pred, gt, spacing, {"one": 1, "two": 2})["classes"]
        p, g = onehot(pred), onehot(gt)
        asd = compute_average_surface_distance(p, g, symmetric=True, spacing=spacing)[0]
        hd = compute_hausdorff_distance(p, g, spacing=spacing)[0]
        dsc = compute_dice(p, g, include_background=False)[0]
        for i, name in enumerate(("one", "two")):
            assert ours[name]["dice"] == pytest.approx(float(dsc[i]), abs=1e-6)
            assert ours[name]["adb"] == pytest.approx(float(asd[i]), rel=1e-5)
            assert ours[name]["hausdorff"] == pytest.approx(float(hd[i]), rel=1e-5)


# Empty classes and identity --------------------------------------------------------------------
def test_empty_class_rules():
    empty = np.zeros((6, 6, 6), dtype=np.int16)
    some = empty.copy()
    some[2:4, 2:4, 2:4] = 1
    both = M.class_metrics(empty, empty, (1, 1, 1), 1)
    assert both == {"dice": 1.0, "adb": 0.0, "hausdorff": 0.0}
    for pred, gt in [(some, empty), (empty, some)]:
        one = M.class_metrics(pred, gt, (1, 1, 1), 1)
        assert one["dice"] == 0.0 and math.isnan(one["adb"]) and math.isnan(one["hausdorff"])
    case = M.case_metrics(empty, some, (1, 1, 1), {"c": 1})
    assert math.isnan(case["hvsmr_score"])


def test_labels_against_themselves():
    gt = blobs((30, 30, 10), 4)
    case = M.case_metrics(gt, gt, (0.5, 0.5, 2.0), {"a": 1, "b": 2}, rand_f_interior=1)
    for m in case["classes"].values():
        assert m == {"dice": 1.0, "adb": 0.0, "hausdorff": 0.0}
    assert case["hvsmr_score"] == pytest.approx(1.0)
    assert case["rand_f"] == case["rand_split"] == case["rand_merge"] == 1.0


def test_hvsmr_score_formula():
    per_class = {
        "myo": {"dice": 0.8, "adb": 1.0, "hausdorff": 6.0},
        "bp": {"dice": 0.9, "adb": 0.5, "hausdorff": 3.0},
    }
    expected = (0.4 - 0.25 - 0.2) + (0.45 - 0.125 - 0.1)
    assert M.hvsmr_score(per_class) == pytest.approx(expected)


# Rand F ----------------------------------------------------------------------------------------
def two_cells(nz=1):
    """Labels (X, Y, Z): membrane 0 around and between two 3x4 cells of interior 1."""
    lab = np.zeros((9, 6, nz), dtype=np.int16)
    lab[1:4, 1:5] = 1
    lab[5:8, 1:5] = 1
    return lab


def test_rand_f_merge_by_hand():
    """Prediction merges two 12-pixel cells: pairs (counted as sum n^2 - n) p = 2*(144-12) = 264,
    true = 264, test = 24^2 - 24 = 552, so F = 2 * 264 / (264 + 552)."""
    gt = two_cells()
    pred = gt.copy()
    pred[4, 1:5] = 1  # remove the membrane between them
    scores = M.rand_scores(pred, gt, interior=1)
    assert scores["rand_f"] == pytest.approx(2 * 264 / (264 + 552))
    assert scores["rand_split"] == pytest.approx(1.0)
    assert scores["rand_merge"] == pytest.approx(264 / 552)


def test_rand_f_split_matches_skimage_directly():
    from skimage.measure import label
    from skimage.metrics import adapted_rand_error

    gt = two_cells(nz=2)
    pred = gt.copy()
    pred[1:4, 2, 0] = 0  # a predicted membrane splits the first cell in slice 0
    pred[6, 1:5, 1] = 0  # and the second in slice 1
    true_seg = np.zeros(gt.shape, dtype=np.int64)
    test_seg = np.zeros(gt.shape, dtype=np.int64)
    offset_t = offset_p = 0
    for z in range(gt.shape[2]):
        t, nt = label(gt[:, :, z] == 1, connectivity=1, return_num=True)
        p, n_p = label(pred[:, :, z] == 1, connectivity=1, return_num=True)
        true_seg[:, :, z] = np.where(t > 0, t + offset_t, 0)
        test_seg[:, :, z] = np.where(p > 0, p + offset_p, 0)
        offset_t, offset_p = offset_t + nt, offset_p + n_p
    are, prec, rec = adapted_rand_error(true_seg, test_seg)
    scores = M.rand_scores(pred, gt, interior=1)
    assert scores["rand_f"] == pytest.approx(1 - are)
    assert scores["rand_split"] == pytest.approx(prec)
    assert scores["rand_merge"] == pytest.approx(rec)
    assert scores["rand_split"] < 1.0
    # The predicted membrane pixels inside true cells share label 0 (one segment): a merge.
    assert scores["rand_merge"] < 1.0


def test_slice_components_are_per_slice_and_4_connected():
    mask = np.zeros((4, 4, 2), dtype=bool)
    mask[0, 0, 0] = mask[1, 1, 0] = True  # diagonal neighbours: two segments
    mask[0, 0, 1] = True  # same xy position in the next slice: a third segment
    seg = M.slice_components(mask)
    assert len(np.unique(seg[mask])) == 3
    assert (seg[~mask] == 0).all()


def test_rand_f_without_interior():
    gt = np.zeros((4, 4, 2), dtype=np.int16)
    assert M.rand_f_score(gt, gt, 1) == 1.0
    pred = gt.copy()
    pred[0, 0, 0] = 1
    assert math.isnan(M.rand_f_score(pred, gt, 1))


# Summaries -------------------------------------------------------------------------------------
def test_summarize_means_stds_and_nan_counts():
    cases = [
        {"classes": {"a": {"dice": 0.5, "adb": 1.0, "hausdorff": 2.0}}, "hvsmr_score": 1.0},
        {"classes": {"a": {"dice": 1.0, "adb": 3.0, "hausdorff": 4.0}}, "hvsmr_score": 2.0},
        {
            "classes": {"a": {"dice": 0.0, "adb": math.nan, "hausdorff": math.nan}},
            "hvsmr_score": math.nan,
        },
    ]
    s = M.summarize(cases)
    assert s["num_cases"] == 3
    dice = s["classes"]["a"]["dice"]
    assert dice["mean"] == pytest.approx(0.5) and dice["n"] == 3 and dice["n_nan"] == 0
    assert dice["std"] == pytest.approx(np.std([0.5, 1.0, 0.0]))
    adb = s["classes"]["a"]["adb"]
    assert adb == {"mean": 2.0, "std": 1.0, "n": 2, "n_nan": 1}
    assert s["hvsmr_score"]["mean"] == pytest.approx(1.5) and s["hvsmr_score"]["n_nan"] == 1
    assert "rand_f" not in s
    safe = M.json_safe(s)
    assert safe["classes"]["a"]["adb"]["n"] == 2
    assert M.json_safe({"x": math.nan, "y": [np.float32(1.5), math.inf]}) == {
        "x": None,
        "y": [1.5, None],
    }
