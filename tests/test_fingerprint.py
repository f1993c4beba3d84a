"""Output folders know their data: fingerprints, refusals of other data, --resume, --overwrite."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from test_pipeline import sparse_dataset
from tiny_preset import TINIER

from sparseseg import fileio, fingerprint
from sparseseg.cli import main
from sparseseg.data.io import read_nifti, write_nifti
from sparseseg.data.layout import Dataset
from sparseseg.data.phantom import write_phantom_dataset


def tree_bytes(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``folder``: equal iff the bytes are."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def sets(overrides: dict) -> list[str]:
    return [f"--set={k}={v}" for k, v in overrides.items()]


def run_cli(capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main([*map(str, args)])
    return code, capsys.readouterr().err.strip()


# The fingerprint itself -------------------------------------------------------------------------
def test_fingerprint_follows_labels_headers_and_settings(tmp_path):
    data = write_phantom_dataset(tmp_path / "d", "heart", 2, seed=0, shape=(12, 12, 8))
    ds = Dataset.open(data)
    base = fingerprint.make(fingerprint.dataset_fingerprint(ds), {"preset": {"a": (1, 2)}})
    assert set(base) == {
        "dataset",
        "dataset_json",
        "labelsTr",
        "imagesTr",
        "labelsTs",
        "imagesTs",
        "settings",
    }
    assert base["settings"] == {"preset": {"a": [1, 2]}}  # JSON-plain, as stored

    # The same labels rewritten with another integer type: the same content, the same hash.
    label = read_nifti(ds.label_path("heart_000"))
    write_nifti(ds.label_path("heart_000"), label.with_array(label.array.astype(np.int16)))
    again = fingerprint.dataset_fingerprint(ds)
    assert again["labelsTr"] == base["labelsTr"]

    # One voxel of one label changes: only labelsTr differs.
    changed = label.array.copy()
    changed[0, 0, 0] = 1 - changed[0, 0, 0]
    write_nifti(ds.label_path("heart_000"), label.with_array(changed))
    now = fingerprint.make(fingerprint.dataset_fingerprint(ds), {"preset": {"a": [1, 2]}})
    assert fingerprint.differences(base, now) == ["labelsTr"]

    # An image's spacing changes (same voxels): imagesTr differs.
    image = read_nifti(ds.image_path("heart_001"))
    write_nifti(ds.image_path("heart_001"), image.array, np.diag([2.0, 1, 1, 1]) @ image.affine)
    after = fingerprint.dataset_fingerprint(ds)
    assert after["imagesTr"] != now["imagesTr"] and after["labelsTr"] == now["labelsTr"]

    # Settings: the differing leaves, by dotted key; the message names the kind and the keys.
    other = {**now, "settings": {"preset": {"a": [1, 3], "b": 0}}}
    keys = fingerprint.differences(now, other)
    assert keys == ["settings.preset.a", "settings.preset.b"]
    assert fingerprint.describe(["labelsTr"]) == "other labels (labelsTr differs)"
    assert fingerprint.describe(keys).startswith("other settings (settings.preset.a, ")


@pytest.mark.parametrize("exchange", [True, False])
def test_replace_dir_keeps_a_whole_folder_at_every_moment(tmp_path, monkeypatch, exchange):
    probe_a, probe_b = tmp_path / "p", tmp_path / "q"
    probe_a.mkdir(), probe_b.mkdir()
    supported = fileio._exchange(probe_a, probe_b)  # RENAME_EXCHANGE on this file system?
    probe_a.rmdir(), probe_b.rmdir()
    old, new = tmp_path / "out", tmp_path / ".out.new"
    old.mkdir()
    (old / "a.txt").write_text("old")
    new.mkdir()
    (new / "b.txt").write_text("new")
    whole: list[bool] = []  # before each rename: does ``out`` name a whole folder?
    real_replace = os.replace

    def watching(src, dst):
        whole.append((old / "a.txt").exists() or (old / "b.txt").exists())
        if not whole[-1]:  # only in the fallback, between its two renames: the old set aside
            assert list(tmp_path.glob(".out.old-*/out/a.txt"))
        return real_replace(src, dst)

    monkeypatch.setattr(fileio.os, "replace", watching)
    if not exchange:
        monkeypatch.setattr(fileio, "_exchange", lambda a, b: False)
    fileio.replace_dir(new, old)
    assert [p.name for p in old.iterdir()] == ["b.txt"] and (old / "b.txt").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # nothing left beside it
    # One atomic exchange where the file system has it (then the old is moved out of the way
    # to be deleted: one rename), else two renames with the old set aside in between.
    assert whole == ([True] if exchange and supported else [True, False])


# train --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_selections(tmp_path_factory):
    """Two sparse datasets of the same images and name: labels on every 4th / every 3rd slice."""
    root = tmp_path_factory.mktemp("selections")
    return sparse_dataset(root / "a"), sparse_dataset(root / "b", step=3)


def test_train_refuses_a_model_of_another_selection(two_selections, tmp_path, capsys):
    data_a, data_b = two_selections
    model = tmp_path / "model"
    train = ["train", "--preset", "cpu", "--out", model, "--quiet", *sets(TINIER)]
    assert run_cli(capsys, *train, data_a)[0] == 0
    before = tree_bytes(model)

    code, err = run_cli(capsys, *train, data_b)
    assert code == 2 and len(err.splitlines()) == 1
    assert "other labels (labelsTr differs)" in err and str(model) in err and "--overwrite" in err
    code, err = run_cli(capsys, *train, data_b, "--resume")  # resuming is no way around it
    assert code == 2 and "labelsTr differs" in err
    code, err = run_cli(capsys, *train[:-1], data_a)  # other settings (TINY's first field)
    assert code == 2 and "other settings (settings.preset" in err
    assert tree_bytes(model) == before  # untouched, byte for byte

    # The same data and settings: every stage is reused, nothing rewritten.
    assert run_cli(capsys, *train, data_a, "--resume")[0] == 0
    assert tree_bytes(model) == before

    # --overwrite replaces it with a model of the other selection.
    assert run_cli(capsys, *train, data_b, "--overwrite")[0] == 0
    stored = fingerprint.read(model)
    assert stored["labelsTr"] == fingerprint.dataset_fingerprint(Dataset.open(data_b))["labelsTr"]
    assert tree_bytes(model)["bundle.pt"] != before["bundle.pt"]
    assert json.loads((model / "bundle.json").read_text())["extra"]["fingerprint"] == stored
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no staging folder left


def test_train_refuses_a_folder_that_is_no_output(two_selections, tmp_path, capsys):
    data_a, _ = two_selections
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    code, err = run_cli(
        capsys, "train", data_a, "--out", other, "--preset", "cpu", "--quiet", *sets(TINIER)
    )
    assert code == 2 and "records no fingerprint" in err
    assert [p.name for p in other.iterdir()] == ["keep.txt"]


# pseudolabel ------------------------------------------------------------------------------------
def test_pseudolabel_refuses_other_data_reuses_same_and_overwrites(
    two_selections, tmp_path, capsys
):
    data_a, data_b = two_selections
    out = tmp_path / "pl"
    cmd = ["pseudolabel", "--preset", "cpu", "--out", out, "--quiet", *sets(TINIER)]
    assert run_cli(capsys, *cmd, data_a)[0] == 0
    assert fingerprint.read(out)["settings"]["preset"]["train3d"]["iterations"] == 3
    before = tree_bytes(out)

    code, err = run_cli(capsys, *cmd, data_b)
    assert code == 2 and len(err.splitlines()) == 1 and "labelsTr differs" in err
    assert tree_bytes(out) == before

    assert run_cli(capsys, *cmd, data_a)[0] == 0  # the same: the models are reused
    after = tree_bytes(out)
    assert {k: v for k, v in after.items() if k != "step2.json"} == {
        k: v for k, v in before.items() if k != "step2.json"
    }

    assert run_cli(capsys, *cmd, data_b, "--overwrite")[0] == 0
    labels_b = fingerprint.dataset_fingerprint(Dataset.open(data_b), ("Tr",))["labelsTr"]
    assert fingerprint.read(out)["labelsTr"] == labels_b
    pl = "pl_3d/labelsTr/heart_000.nii.gz"
    assert tree_bytes(out)[pl] != before[pl]


# experiment ---------------------------------------------------------------------------------------
def test_experiment_refuses_another_dataset_and_checks_each_run(tmp_path, capsys):
    data_a = write_phantom_dataset(
        tmp_path / "a" / "heart", "heart", 2, seed=0, test_cases=1, shape=(24, 24, 16)
    )
    data_b = write_phantom_dataset(
        tmp_path / "b" / "heart", "heart", 2, seed=1, test_cases=1, shape=(24, 24, 16)
    )
    out = tmp_path / "res"
    cmd = ["experiment", "--out", out, "--budgets", "4", "--strategies", "eia", "--no-full"]
    cmd += ["--preset", "cpu", "--quiet", *sets(TINIER)]
    assert run_cli(capsys, *cmd, data_a)[0] == 0
    run = out / "runs" / "eia-s4-seed0"
    assert fingerprint.read(run)["settings"]["strategy"] == "eia"
    assert fingerprint.read(run / "model")["dataset"] == "heart_eia_s4"  # the selection
    before = tree_bytes(out)

    code, err = run_cli(capsys, *cmd, data_b)
    assert code == 2 and len(err.splitlines()) == 1
    assert "experiment folder was made from another dataset and other labels (" in err
    assert tree_bytes(out) == before

    # A cached run whose fingerprint differs from what this grid would make is refused too.
    stored = fingerprint.read(run)
    fingerprint.write(run, {**stored, "settings": {**stored["settings"], "extractor": "intensity"}})
    code, err = run_cli(capsys, *cmd, data_a)
    assert code == 2 and "experiment run folder was made from other settings" in err
    fingerprint.write(run, stored)

    # The same data: the run is reused (its files untouched), the tables rewritten.
    assert run_cli(capsys, *cmd, data_a, "--resume")[0] == 0
    prefix = "runs/eia-s4-seed0/"
    assert tree_bytes(run) == {
        k[len(prefix) :]: v for k, v in before.items() if k.startswith(prefix)
    }

    assert run_cli(capsys, *cmd, data_b, "--overwrite")[0] == 0
    labels_b = fingerprint.dataset_fingerprint(Dataset.open(data_b))["labelsTr"]
    assert fingerprint.read(out)["labelsTr"] == fingerprint.read(run)["labelsTr"] == labels_b
    result = prefix + "result.json"
    assert tree_bytes(out)[result] != before[result]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "res"]
