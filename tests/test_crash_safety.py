"""A SIGKILL at any stage of train, pseudolabel and experiment, then --resume: the same result.

Each test runs the command in a subprocess that kills itself with SIGKILL right after a named file
is committed (``SPARSESEG_TEST_KILL_AT``, see :mod:`sparseseg.fileio`), resumes it in this process
with ``--resume``, and compares the outcome with an uninterrupted run of the same settings: the
weights bit for bit, the pseudo-labels voxel for voxel, the scores number for number.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_fingerprint import sets, tree_bytes
from test_pipeline import sparse_dataset
from tiny_preset import TINIER, TINY

import sparseseg
from sparseseg import fingerprint, report
from sparseseg.bundle import load_bundle
from sparseseg.cli import main
from sparseseg.data.phantom import write_phantom_dataset
from sparseseg.fileio import KILL_AT_ENV

# Checkpoints every 2 steps, so that a kill can fall in the middle of every training.
CKPT = {"train2d.checkpoint_every": 2, "train3d.checkpoint_every": 2}
CPU = ["--device", "cpu"]  # bitwise equality is a CPU property (CUDA kernels may not be)


def killed(args: list, kill_at: str) -> None:
    """Run ``sparseseg ARGS`` in a subprocess that SIGKILLs itself at ``kill_at``."""
    src = str(Path(sparseseg.__file__).resolve().parents[1])
    env = {
        **os.environ,
        KILL_AT_ENV: kill_at,
        "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": str(torch.get_num_threads()),  # the same arithmetic as this process
    }
    cmd = [sys.executable, "-m", "sparseseg", *map(str, args)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, f"not killed at {kill_at}: {proc.stderr[-2000:]}"


def resumed(args: list) -> None:
    assert main([*map(str, args), "--resume"]) == 0


def weights(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a bundle, model or checkpoint file, by flattened key."""
    out: dict[str, torch.Tensor] = {}

    def walk(obj, prefix: str) -> None:
        if isinstance(obj, torch.Tensor):
            out[prefix] = obj
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{prefix}/{k}")

    walk(torch.load(path, map_location="cpu", weights_only=True), "")
    return out


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and wa
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{b} differs from {a} in {different[:5]}"


# train ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference_model(tmp_path_factory):
    """(dataset, args without --out, the folder of an uninterrupted train)."""
    root = tmp_path_factory.mktemp("crash_train")
    data = sparse_dataset(root)
    args = ["train", data, "--preset", "cpu", "--quiet", *CPU, *sets({**TINY, **CKPT})]
    assert main([*map(str, args), "--out", str(root / "ref")]) == 0
    return data, args, root / "ref"


def assert_same_model(ref: Path, out: Path) -> None:
    assert_same_weights(ref / "bundle.pt", out / "bundle.pt")
    assert json.loads((ref / "report.json").read_text()) == json.loads(
        (out / "report.json").read_text()
    )
    a, b = (json.loads((m / "stage3_meta" / "selftrain.json").read_text()) for m in (ref, out))
    assert a["nnfit"] == b["nnfit"] and a["steps"] == b["steps"]
    state = json.loads((out / "pipeline.json").read_text())
    assert all(state["stages"][s]["done"] for s in ("pseudolabels", "meta", "bundle", "report"))


@pytest.mark.parametrize(
    "kill_at",
    [
        pytest.param("model2d.ckpt", marks=pytest.mark.slow),  # after 2 of its 4 steps
        pytest.param("heart_001.nii.gz", marks=pytest.mark.slow),  # pseudo-labels of case 1
        pytest.param("meta.ckpt", marks=pytest.mark.slow),  # the meta-model, at step 2 of 10
        "meta.pt",  # its weights written, its log and stage record not yet
        "heart_003.nii.gz",  # the report: the first test prediction written
    ],
)
def test_train_killed_then_resumed_equals_an_unbroken_run(reference_model, tmp_path, kill_at):
    data, args, ref = reference_model
    out = tmp_path / "model"
    killed([*args, "--out", out], kill_at)
    assert fingerprint.read(out) == fingerprint.read(ref)  # even a killed run's folder has it
    resumed([*args, "--out", out])
    assert_same_model(ref, out)


def test_killed_overwrite_keeps_the_old_model_then_completes(reference_model, tmp_path):
    data, args, ref = reference_model
    out = tmp_path / "model"
    other = sparse_dataset(tmp_path / "other", step=3)
    assert main([*map(str, args[:1]), str(other), *map(str, args[2:]), "--out", str(out)]) == 0
    old = tree_bytes(out)
    killed([*args, "--out", out, "--overwrite"], "meta.ckpt")
    assert tree_bytes(out) == old  # the old model, whole and untouched
    resumed([*args, "--out", out, "--overwrite"])
    assert_same_model(ref, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "other"]


# pseudolabel ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference_pseudolabels(reference_model, tmp_path_factory):
    """(args without --out, the folder of an uninterrupted pseudolabel)."""
    data, _, _ = reference_model
    args = ["pseudolabel", data, "--preset", "cpu", "--quiet", *CPU, *sets({**TINIER, **CKPT})]
    ref = tmp_path_factory.mktemp("crash_pseudolabel") / "ref"
    assert main([*map(str, args), "--out", str(ref)]) == 0
    return args, ref


@pytest.mark.parametrize(
    "kill_at",
    [
        "model3d.ckpt",  # the 3D base model, after 2 of its 3 steps
        "heart_001.nii.gz",  # case 0 done, case 1 half written
        pytest.param("dataset.json#2", marks=pytest.mark.slow),  # writing the PL datasets
    ],
)
def test_pseudolabel_killed_then_resumed_equals_an_unbroken_run(
    reference_pseudolabels, tmp_path, kill_at
):
    args, ref = reference_pseudolabels
    out = tmp_path / "out"
    killed([*args, "--out", out], kill_at)
    resumed([*args, "--out", out])
    for name in ("model2d", "model3d"):
        assert_same_weights(ref / "models" / f"{name}.pt", out / "models" / f"{name}.pt")
    a, b = tree_bytes(ref), tree_bytes(out)
    assert a.keys() == b.keys()
    labels = [k for k in a if "/labelsTr/" in k or k.startswith("mean/")]
    assert len(labels) == 5 * 3
    for key in labels:  # the PL sets and A(Y), voxel for voxel
        assert fingerprint.labels_hash([ref / key]) == fingerprint.labels_hash([out / key])
    for key in [k for k in a if k.endswith("dataset.json")]:
        assert a[key] == b[key]


# experiment -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference_grid(tmp_path_factory):
    """(args without --out, the folder of an uninterrupted experiment with a full run)."""
    root = tmp_path_factory.mktemp("crash_experiment")
    data = write_phantom_dataset(root / "heart", "heart", 2, seed=0, test_cases=1, shape=(24,) * 3)
    args = ["experiment", data, "--preset", "cpu", "--budgets", "4", "--strategies", "eia"]
    args += ["--quiet", *CPU]
    args += sets({**TINIER, **CKPT})
    assert main([*map(str, args), "--out", str(root / "ref")]) == 0
    return args, root / "ref"


def _scores(out: Path) -> list[dict]:
    rows = report.read_rows(out / "results.csv") + report.read_rows(out / "cases.csv")
    return [{k: v for k, v in r.items() if k != "train_seconds"} for r in rows]


@pytest.mark.parametrize(
    "kill_at",
    [
        "model3d.ckpt",  # the full run, after 2 of its 3 steps
        "model3d.pt",  # the full run's model written, nothing else of that run
        pytest.param("heart_002.nii.gz", marks=pytest.mark.slow),  # the full run's prediction
        pytest.param("selection", marks=pytest.mark.slow),  # the sparse run's slices chosen
        pytest.param("meta.ckpt", marks=pytest.mark.slow),  # the sparse run's meta-model
    ],
)
def test_experiment_killed_then_resumed_equals_an_unbroken_run(reference_grid, tmp_path, kill_at):
    args, ref = reference_grid
    out = tmp_path / "res"
    killed([*args, "--out", out], kill_at)
    resumed([*args, "--out", out])
    assert _scores(out) == _scores(ref)
    assert_same_weights(ref / "runs/full-seed0/model3d.pt", out / "runs/full-seed0/model3d.pt")
    bundle = "runs/eia-s4-seed0/model/bundle.pt"
    assert_same_weights(ref / bundle, out / bundle)
    saved = load_bundle(out / "runs/full-seed0/model3d.pt")
    assert np.isfinite(saved.extra["train_seconds"])  # the time committed with the model
