"""``sparseseg select`` end to end on small datasets: outputs, budgets, reproducibility, errors."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from sparseseg.cli import main
from sparseseg.data.layout import Dataset, write_case, write_dataset_json
from sparseseg.data.phantom import write_phantom_dataset
from sparseseg.data.volume import Volume
from sparseseg.selection import (
    annotation_mask,
    budget_count,
    read_selection,
    select_slices,
    select_volumes,
)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sel") / "ph"
    write_phantom_dataset(root, "heart", cases=2, seed=1, test_cases=1, shape=(20, 24, 12))
    return root


def _run(*argv) -> int:
    return main(["select", *map(str, argv)])


def test_ra_outputs_and_simulated_labels(phantom, tmp_path):
    out = tmp_path / "sel"
    assert _run(phantom, "--budget", 4, "--out", out, "--extractor", "intensity",
                "--simulate-from-labels") == 0  # fmt: skip
    record = json.loads((out / "selection.json").read_text())
    ds = Dataset.open(phantom)
    assert record["strategy"] == "ra" and record["budget"] == 4
    assert record["extractor"]["name"] == "intensity"
    assert set(record["cases"]) == set(ds.cases("Tr"))
    assert (out / "tsne.png").stat().st_size > 0
    sparse = Dataset.open(out / "dataset")
    assert sparse.ignore_value == 3 and sparse.class_labels == ds.class_labels
    for case in ds.cases("Tr"):
        entry = record["cases"][case]
        image = ds.load_image(case)
        chosen = {p: v["indices"] for p, v in entry["planes"].items()}
        for v in entry["planes"].values():
            assert v["count"] == len(v["indices"]) == budget_count(v["num_slices"], 4)
            assert len(v["gains"]) == v["count"] and v["gains"] == sorted(v["gains"])[::-1]
        # The mask overlays the image: same shape and affine, 1 exactly on the chosen slices.
        mask = nib.load(out / "masks" / f"{case}.nii.gz")
        assert mask.shape == image.shape and np.allclose(mask.affine, image.affine)
        assert mask.get_data_dtype() == np.uint8
        assert np.array_equal(np.asarray(mask.dataobj) == 1, annotation_mask(image.shape, chosen))
        assert (out / "sheets" / f"{case}.png").stat().st_size > 0
        # Simulated labels: true on the chosen slices, ignore elsewhere; the image copied as is.
        truth = ds.load_label(case).array
        labels = sparse.load_label(case).array
        on = annotation_mask(image.shape, chosen)
        assert np.array_equal(labels[on], truth[on]) and np.all(labels[~on] == 3)
        assert np.allclose(sparse.load_label(case).affine, image.affine)
        assert sparse.image_path(case).read_bytes() == ds.image_path(case).read_bytes()
    for case in ds.cases("Ts"):
        assert sparse.image_path(case, "Ts").read_bytes() == ds.image_path(case, "Ts").read_bytes()
        assert sparse.label_path(case, "Ts").read_bytes() == ds.label_path(case, "Ts").read_bytes()
    assert sparse.meta["numTraining"] == 2
    cost = record["cost"]
    assert 0 < cost["covered_fraction"] <= cost["annotated_fraction"] <= 1
    assert read_selection(out).chosen(ds.cases("Tr")[0]) == {
        p: v["indices"] for p, v in record["cases"][ds.cases("Tr")[0]]["planes"].items()
    }


@pytest.mark.parametrize("strategy", ["eia", "random"])
def test_baselines_honour_budget_and_reproduce(phantom, tmp_path, strategy):
    a = select_slices(phantom, 3, strategy, planes="xy,yz", seed=5)
    b = select_slices(phantom, 3, strategy, planes="xy,yz", seed=5)
    assert a.to_json() == b.to_json()
    assert a.extractor is None and a.planes == ("xy", "yz")
    for case in a.cases.values():
        assert set(case.planes) == {"xy", "yz"}
        for choice in case.planes.values():
            assert len(choice.indices) == budget_count(choice.num_slices, 3)
            assert len(set(choice.indices)) == len(choice.indices)
    if strategy == "random":
        c = select_slices(phantom, 3, strategy, planes="xy,yz", seed=6)
        assert c.to_json()["cases"] != a.to_json()["cases"]
    out = tmp_path / "sel"
    assert _run(phantom, "--budget", 3, "--strategy", strategy, "--out", out, "--planes",
                "xy,yz", "--seed", 5, "--no-figures") == 0  # fmt: skip
    assert json.loads((out / "selection.json").read_text())["cases"] == a.to_json()["cases"]
    assert not (out / "tsne.png").exists()


def test_ra_is_reproducible(phantom):
    a = select_slices(phantom, 5, "ra", extractor="intensity", seed=0)
    b = select_slices(phantom, 5, "ra", extractor="intensity", seed=0)
    assert a.to_json() == b.to_json()


def _constant_dataset(root: Path) -> Path:
    rng = np.random.default_rng(0)
    good = Volume(rng.normal(size=(8, 9, 10)).astype(np.float32))
    write_case(root, "good", good, Volume(np.zeros((8, 9, 10), np.uint8)))
    write_case(root, "flat", Volume(np.full((8, 9, 10), 7.0, np.float32)))
    write_dataset_json(root, {"background": 0, "fg": 1}, num_training=2)
    return root


def test_errors_exit_2(phantom, tmp_path, capsys):
    out = tmp_path / "sel"
    assert _run(phantom, "--budget", 0.5, "--out", out) == 2
    assert "k >= 1" in capsys.readouterr().err
    assert _run(phantom, "--budget", 4, "--out", out, "--weights", tmp_path / "no.pth") == 2
    assert "weights file not found" in capsys.readouterr().err
    assert _run(phantom, "--budget", 4, "--out", out, "--strategy", "eia", "--weights", "x") == 2
    assert "weights file not found" in capsys.readouterr().err
    flat = _constant_dataset(tmp_path / "flat")
    assert _run(flat, "--budget", 4, "--out", out, "--strategy", "eia") == 2
    err = capsys.readouterr().err
    assert "constant" in err and "flat_0000.nii.gz" in err
    assert _run(tmp_path / "nowhere", "--budget", 4, "--out", out) == 2
    assert _run(phantom, "--budget", 4, "--out", out, "--strategy", "eia") == 0
    assert _run(phantom, "--budget", 4, "--out", out, "--strategy", "eia") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert _run(phantom, "--budget", 4, "--out", phantom, "--strategy", "eia", "--overwrite") == 2
    assert (phantom / "dataset.json").exists()
    assert not any(tmp_path.glob(".sel*"))  # no temporary folders left behind


def test_simulate_needs_labels(tmp_path, capsys):
    root = tmp_path / "nolabels"
    rng = np.random.default_rng(0)
    write_case(root, "a", Volume(rng.normal(size=(8, 9, 10)).astype(np.float32)))
    write_dataset_json(root, {"background": 0, "fg": 1}, num_training=1)
    argv = (root, "--budget", 4, "--out", tmp_path / "s", "--strategy", "eia")
    assert _run(*argv, "--simulate-from-labels") == 2
    assert "dense labels" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_select_volumes_api_single_plane():
    rng = np.random.default_rng(0)
    vol = np.cumsum(rng.normal(size=(12, 10, 30)), axis=2)
    sel = select_volumes([vol], ["v"], budget=10, strategy="ra", planes="xy", extractor="intensity")
    choice = sel.cases["v"].planes["xy"]
    assert choice.num_slices == 30 and len(choice.indices) == 3
    assert sel.cost["annotated_fraction"] == pytest.approx(0.1)


def test_progress_in_a_log_is_a_few_lines(phantom, tmp_path):
    """``sparseseg select`` (VGG features, 600 auto-encoder steps) with stderr redirected to a
    file, as in a batch job: the bars leave a few whole lines, no carriage-return redraws."""
    import os
    import subprocess
    import sys

    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    argv = ["select", phantom, "--budget", 3, "--planes", "xy", "--steps", 600]
    argv += ["--image-size", 32, "--no-figures", "--out", tmp_path / "sel"]
    log = tmp_path / "select.log"
    with open(log, "w") as err:
        cmd = [sys.executable, "-m", "sparseseg", *map(str, argv)]
        done = subprocess.run(cmd, env=env, stderr=err, stdout=subprocess.PIPE, timeout=300)
    logged = log.read_text()
    assert done.returncode == 0, logged
    assert "\r" not in logged
    bars = [line for line in logged.splitlines() if line.startswith(("VGG-19", "auto-encoder"))]
    assert any(line.startswith("auto-encoder") and "600/600" in line for line in bars)
    assert len(bars) <= 6  # a first and a last line per bar (more only past a minute)


def test_quiet_select_shows_no_progress(phantom, tmp_path, capsys):
    argv = [phantom, "--budget", 3, "--planes", "xy", "--steps", 20, "--image-size", 32]
    assert _run(*argv, "--no-figures", "--out", tmp_path / "sel", "--quiet") == 0
    err = capsys.readouterr().err
    assert not [line for line in err.splitlines() if line.startswith(("VGG-19", "auto-encoder"))]
