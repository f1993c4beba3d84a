"""Annotation rounds: greedy from an initial set, uncertainty-weighted next slices, allocation of
a total budget, and ``sparseseg select --round`` end to end on a tiny trained model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tiny_preset import TINIER

from sparseseg.cli import main
from sparseseg.data.layout import Dataset
from sparseseg.data.phantom import write_phantom_dataset
from sparseseg.selection import annotation_mask, budget_count
from sparseseg.selection.facility import cosine_similarity, coverage, greedy, lazy_greedy
from sparseseg.selection.next_round import select_round_volumes
from sparseseg.selection.rounds import allocate, annotated_slices, round_greedy
from sparseseg.uncertainty import disagreement, normalised_entropy, vote_counts


def _sim(seed: int, n: int = 30) -> np.ndarray:
    rng = np.random.default_rng(seed)
    steps = rng.normal(size=(n, 8)).cumsum(axis=0)  # slice-like: neighbours are similar
    return cosine_similarity(steps - steps.mean(axis=0))


@pytest.mark.parametrize("seed", range(4))
def test_conditioned_greedy_is_plain_greedy_when_s0_is_empty(seed):
    sim = _sim(seed)
    plain, lazy = greedy(sim, 8), lazy_greedy(sim, 8)
    for empty in (None, [], np.array([], dtype=int)):
        for r in (greedy(sim, 8, initial=empty), lazy_greedy(sim, 8, initial=empty)):
            assert np.array_equal(r.order, plain.order) and np.array_equal(r.gains, plain.gains)
            assert r.value == plain.value == lazy.value


@pytest.mark.parametrize("seed", range(4))
def test_conditioned_greedy_starts_from_s0(seed):
    sim = _sim(seed)
    s0 = [3, 17, 25]
    plain, lazy = greedy(sim, 10, initial=s0), lazy_greedy(sim, 10, initial=s0)
    assert np.array_equal(plain.order, lazy.order) and np.array_equal(plain.gains, lazy.gains)
    assert not set(plain.order.tolist()) & set(s0)
    assert plain.value == pytest.approx(coverage(sim, [*s0, *plain.order]))
    # The first gain is F(S0 + {i}) - F(S0), the best over the candidates.
    base = coverage(sim, s0)
    best = max(coverage(sim, [*s0, i]) - base for i in range(len(sim)) if i not in s0)
    assert plain.gains[0] == pytest.approx(best)
    assert np.all(np.diff(plain.gains) <= 1e-12)  # submodular: gains never grow
    with pytest.raises(ValueError):
        greedy(sim, len(sim) - 2, initial=s0)  # only n - 3 candidates are left
    with pytest.raises(ValueError):
        lazy_greedy(sim, 2, initial=[1, 1])


def test_round_greedy_weights():
    sim = _sim(7, n=20)
    s0 = [0, 10]
    u = np.linspace(0.0, 1.0, 20)
    # w = 0: representative selection conditioned on S0.
    r0 = round_greedy(sim, s0, u, 6, weight=0.0)
    assert np.array_equal(r0.order, lazy_greedy(sim, 6, initial=s0).order)
    # w = 1: the most uncertain unannotated slices, in order.
    r1 = round_greedy(sim, s0, u, 6, weight=1.0)
    assert r1.order.tolist() == [19, 18, 17, 16, 15, 14]
    assert np.allclose(r1.scores, u[r1.order] / u.max())
    # In between: each score is (1 - w) gain / g1 + w u / u_max, the first gain normalised to 1.
    rw = round_greedy(sim, s0, u, 6, weight=0.3)
    assert np.allclose(rw.scores, 0.7 * rw.gains / r0.gains[0] + 0.3 * rw.uncertainty / u.max())
    assert np.allclose(rw.uncertainty, u[rw.order])
    assert not set(rw.order.tolist()) & set(s0)
    assert rw.initial_value == pytest.approx(coverage(sim, s0))
    # Uncertainty moves choices: a flat uncertainty gives the conditioned greedy's order.
    assert np.array_equal(round_greedy(sim, s0, np.ones(20), 6, 0.5).order, r0.order)


def test_annotated_slices_need_every_voxel_labelled():
    label = np.full((4, 5, 6), 9)
    label[:, :, 2] = 1  # xy slice 2 fully labelled
    label[1, :, :] = 0  # yz slice 1 fully labelled
    label[:, 3, :4] = 1  # xz slice 3 only partly
    assert annotated_slices(label, 9, "xy").tolist() == [2]
    assert annotated_slices(label, 9, "yz").tolist() == [1]
    assert annotated_slices(label, 9, "xz").tolist() == []
    assert annotated_slices(label, None, "xz").tolist() == [0, 1, 2, 3, 4]


def test_allocate_follows_uncertainty_and_capacity():
    cap = np.array([[10, 10, 10], [10, 10, 10], [10, 10, 10]])
    out = allocate(30, [0.1, 0.2, 0.6], cap)
    assert out.sum() == 30 and (out >= 1).all() and (out <= cap).all()
    per_volume = out.sum(axis=1)
    assert per_volume[2] > per_volume[1] > per_volume[0]
    # shares 30 * w / sum(w) = 3.33, 6.67, 20: at least one per plane, then by deficit
    assert per_volume.tolist() == [3, 7, 20]
    assert np.array_equal(out, allocate(30, [0.1, 0.2, 0.6], cap))  # deterministic
    # Capacity caps a volume; the rest goes elsewhere.
    capped = allocate(30, [0.0, 0.0, 1.0], np.array([[10, 10, 10], [10, 10, 10], [2, 2, 2]]))
    assert capped[2].tolist() == [2, 2, 2] and capped.sum() == 30
    # Fewer slices than (volume, plane) pairs: one each to the most uncertain volume first.
    few = allocate(4, [0.1, 0.9, 0.5], cap)
    assert few.tolist() == [[0, 0, 0], [1, 1, 1], [1, 0, 0]]
    # Planes with no free slice get none; slices per plane follow the plane's size.
    sized = allocate(8, [1.0], np.array([[0, 12, 4]]), sizes=np.array([[6, 12, 4]]))
    assert sized.tolist() == [[0, 6, 2]]
    with pytest.raises(ValueError):
        allocate(28, [1, 1, 1], np.full((3, 3), 3))


def _arrays(seed: int = 0):
    """Two phantom-like volumes with sparse labels (every 4th slice of each plane)."""
    rng = np.random.default_rng(seed)
    volumes, labels, maps = [], [], []
    for v in range(2):
        shape = (16, 14, 12)
        g = np.indices(shape).sum(axis=0).astype(np.float32)
        vol = np.sin(g / (3 + v)) + 0.1 * rng.normal(size=shape).astype(np.float32)
        lab = np.full(shape, 3, np.int16)
        lab[::4] = lab[:, ::4] = lab[:, :, ::4] = 1
        volumes.append(vol)
        labels.append(lab)
        maps.append(rng.random(shape).astype(np.float32) * (0.2 if v == 0 else 0.8))
    return volumes, labels, maps


def test_round_selection_is_deterministic_and_never_repicks():
    volumes, labels, maps = _arrays()
    kw = dict(ignore_value=3, planes="xy,xz,yz", extractor="intensity", seed=3)
    a = select_round_volumes(volumes, labels, ["a", "b"], maps, budget=4, **kw)
    b = select_round_volumes(volumes, labels, ["a", "b"], maps, budget=4, **kw)
    assert a.to_json() == b.to_json()
    assert a.round == 2 and a.round_info["weight"] == 0.5
    for v, name in enumerate(["a", "b"]):
        for p, choice in a.cases[name].planes.items():
            s0 = annotated_slices(labels[v], 3, p).tolist()
            assert choice.annotated == s0 and s0  # every 4th slice is annotated
            assert not set(choice.indices) & set(s0)
            assert len(choice.indices) == budget_count(choice.num_slices, 4)
            assert len(choice.scores) == len(choice.uncertainty) == len(choice.indices)
    # A total budget gives the more uncertain volume more slices.
    t = select_round_volumes(volumes, labels, ["a", "b"], maps, total=20, **kw)
    counts = [t.cases[n].cost["slices"] for n in ("a", "b")]
    assert sum(counts) == 20 and counts[1] > counts[0]
    assert t.round_info["total"] == 20
    # Everything annotated: a clear error.
    from sparseseg.errors import InputError

    full = [np.ones_like(lab) for lab in labels]
    with pytest.raises(InputError, match="nothing left"):
        select_round_volumes(volumes, full, ["a", "b"], maps, budget=4, **kw)


def test_uncertainty_maps_by_hand():
    a = np.zeros((2, 2, 1), np.uint8)
    b = np.array([[[0], [1]], [[1], [1]]], np.uint8)
    votes = vote_counts([a, a, b, b], 2)
    assert votes[:, 0, 0, 0].tolist() == [4, 0] and votes[:, 0, 1, 0].tolist() == [2, 2]
    d = disagreement(votes, 4)
    assert d[0, 0, 0] == 0 and d[0, 1, 0] == 0.5
    e = normalised_entropy(votes.astype(np.float32) / 4)
    assert e[0, 0, 0] == 0 and e[0, 1, 0] == pytest.approx(1.0)


# End to end ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def round_one(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(dense dataset, sparse round-1 dataset, tiny model trained on it)."""
    from sparseseg.pipeline import train

    root = tmp_path_factory.mktemp("rounds")
    dense = write_phantom_dataset(root / "ph", "heart", 2, seed=2, test_cases=1, shape=(20, 20, 12))
    sel1 = root / "sel1"
    assert main(["select", str(dense), "--budget", "5", "--extractor", "intensity",
                 "--out", str(sel1), "--simulate-from-labels", "--no-figures"]) == 0  # fmt: skip
    train(root / "sel1" / "dataset", root / "model", "cpu", TINIER, progress=False, report=False)
    return dense, root / "sel1" / "dataset", root / "model"


def _round(sparse, model, out, *extra) -> int:
    return main(["select", str(sparse), "--round", str(model), "--extractor", "intensity",
                 "--out", str(out), "--no-figures", *map(str, extra)])  # fmt: skip


def test_next_round_end_to_end(round_one, tmp_path):
    dense, sparse, model = round_one
    out = tmp_path / "sel2"
    assert _round(sparse, model, out, "--budget", 6, "--simulate-from-labels",
                  "--dense-labels", dense) == 0  # fmt: skip
    record = json.loads((out / "selection.json").read_text())
    assert record["round"] == 2 and record["round_info"]["uncertainty"] == "disagreement"
    ds, sp, new = Dataset.open(dense), Dataset.open(sparse), Dataset.open(out / "dataset")
    assert new.meta["sparse_annotation"]["round"] == 2
    for case in ds.cases("Tr"):
        planes = record["cases"][case]["planes"]
        before = sp.load_label(case).array
        for p, v in planes.items():
            assert v["annotated"] == annotated_slices(before, sp.ignore_value, p).tolist()
            assert not set(v["indices"]) & set(v["annotated"])
            assert (
                len(v["scores"])
                == len(v["indices"])
                == min(budget_count(v["num_slices"], 6), v["num_slices"] - len(v["annotated"]))
            )
        # The simulated labels: the previous labels plus the true labels on the new slices.
        truth, after = ds.load_label(case).array, new.load_label(case).array
        union = annotation_mask(truth.shape, {p: v["indices"] for p, v in planes.items()})
        union |= before != sp.ignore_value
        assert np.array_equal(after, np.where(union, truth, new.ignore_value))
        # The masks show the new slices only.
        mask = np.asarray(__import__("nibabel").load(out / "masks" / f"{case}.nii.gz").dataobj)
        new_only = annotation_mask(truth.shape, {p: v["indices"] for p, v in planes.items()})
        assert np.array_equal(mask == 1, new_only)
    # Deterministic for a seed.
    again = tmp_path / "again"
    assert _round(sparse, model, again, "--budget", 6) == 0
    assert json.loads((again / "selection.json").read_text())["cases"] == record["cases"]
    # The next round continues from the new dataset and counts on.
    assert _round(out / "dataset", model, tmp_path / "sel3", "--total-slices", 5) == 0
    third = json.loads((tmp_path / "sel3" / "selection.json").read_text())
    assert third["round"] == 3 and third["cost"]["slices"] == 5


def test_next_round_reads_one_image_at_a_time(round_one, image_loads):
    from sparseseg.predict import Predictor
    from sparseseg.selection.next_round import model_uncertainty, select_next_round

    _, sparse, model = round_one
    kw = dict(budget=6, extractor="intensity", device="cpu")
    got = select_next_round(sparse, model, **kw)
    assert image_loads.most == 1 and image_loads.count == 2 * 2  # uncertainty, then features
    ds = Dataset.open(sparse)
    names = ds.cases("Tr")
    images = [ds.load_image(c).array for c in names]
    labels = [ds.load_label(c).array for c in names]
    predictor = Predictor(model, device="cpu")
    maps = [model_uncertainty(predictor, a) for a in images]
    want = select_round_volumes(images, labels, names, maps, ds.ignore_value, **kw)
    assert got.to_json()["cases"] == want.to_json()["cases"]


def test_round_errors_exit_2(round_one, tmp_path, capsys):
    dense, sparse, model = round_one
    capsys.readouterr()
    assert _round(sparse, model, tmp_path / "a", "--budget", 6, "--simulate-from-labels") == 2
    assert "--dense-labels" in capsys.readouterr().err
    assert _round(sparse, model, tmp_path / "b") == 2  # neither --budget nor --total-slices
    assert _round(sparse, model, tmp_path / "c", "--total-slices", 10**6) == 2
    assert _round(sparse, model, tmp_path / "d", "--budget", 4, "--uncertainty-weight", 2) == 2
    assert main(["select", str(dense), "--budget", "4", "--total-slices", "3",
                 "--out", str(tmp_path / "e")]) == 2  # fmt: skip
    assert "later rounds only" in capsys.readouterr().err
    # Dense labels that contradict the annotated voxels are refused.
    import shutil

    from sparseseg.data.io import write_nifti

    other = shutil.copytree(dense, tmp_path / "other")
    ds, sp = Dataset.open(other), Dataset.open(sparse)
    case = ds.cases("Tr")[0]
    label = ds.load_label(case)
    done = np.argwhere(sp.load_label(case).array != sp.ignore_value)[0]
    changed = label.array.copy()
    changed[tuple(done)] = (changed[tuple(done)] + 1) % ds.num_classes
    write_nifti(ds.label_path(case), label.with_array(changed.astype(np.uint8)))
    capsys.readouterr()
    assert _round(sparse, model, tmp_path / "f", "--budget", 6, "--simulate-from-labels",
                  "--dense-labels", other) == 2  # fmt: skip
    assert "differ from its current labels" in capsys.readouterr().err
    assert not (tmp_path / "f").exists()
    # Sparse labels are not dense labels.
    assert _round(sparse, model, tmp_path / "g", "--budget", 6, "--simulate-from-labels",
                  "--dense-labels", sparse) == 2  # fmt: skip
    assert "not dense" in capsys.readouterr().err


def test_advise_after_a_round(round_one, tmp_path):
    dense, sparse, model = round_one
    out = tmp_path / "adv"
    assert main(["advise", str(sparse), "--round", str(model), "--extractor", "intensity",
                 "--out", str(out)]) == 0  # fmt: skip
    advice = json.loads((out / "advice.json").read_text())
    assert advice["round"] and advice["model"] == str(model)
    rows = advice["budgets"]
    # s1 takes every unannotated slice: full coverage, no uncertainty left; sparser budgets
    # leave more of it.
    assert rows[0]["coverage"] == pytest.approx(1.0) and rows[0]["uncertainty_left"] == 0
    left = [r["uncertainty_left"] for r in rows]
    assert all(a <= b + 1e-12 for a, b in zip(left, left[1:], strict=False))
    assert 0 < advice["coverage_now"] < 1
    assert "uncertainty left" in (out / "advice.md").read_text()
