"""The case store: memory-mapped training arrays equal to the in-memory ones, rebuilt on change."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from test_pipeline import sparse_dataset

from sparseseg.data.layout import Dataset, write_case
from sparseseg.data.store import CaseStore, StoredCase, meta_store, training_store
from sparseseg.pipeline import meta_cases
from sparseseg.pseudolabels import load_training_cases, training_ignore_index
from sparseseg.selftrain import MetaSampler
from sparseseg.training.sampling import PatchSampler3D, SliceSampler2D


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Dataset:
    return Dataset.open(sparse_dataset(tmp_path_factory.mktemp("store"), cases=2))


def test_store_reads_back_the_in_memory_arrays(dataset, tmp_path):
    stored = training_store(dataset, tmp_path / "train")
    loaded = load_training_cases(dataset)
    assert len(stored) == len(loaded) == 2
    for s, m in zip(stored, loaded, strict=True):
        assert isinstance(s, StoredCase) and set(s) == {"image", "label"}
        assert isinstance(s["image"], np.memmap)
        for key in ("image", "label"):
            assert s[key].dtype == m[key].dtype and s[key].shape == m[key].shape
            np.testing.assert_array_equal(s[key], m[key])  # bitwise: the same z-scoring


def test_store_is_reused_and_rebuilt_when_the_source_changes(dataset, tmp_path):
    root = tmp_path / "train"
    training_store(dataset, root)
    case = dataset.cases("Tr")[0]
    store = CaseStore(root)
    before = {c: os.stat(store.path(c, "image")).st_mtime_ns for c in dataset.cases("Tr")}
    training_store(dataset, root)  # valid: nothing rewritten
    assert before == {c: os.stat(store.path(c, "image")).st_mtime_ns for c in dataset.cases("Tr")}

    # the same case written again with other voxel values: the store follows
    image, label = dataset.load_pair(case)
    brighter = image.with_array(image.array * 3.0 + 7.0 + np.indices(image.shape)[0])
    write_case(dataset.root, case, brighter, label)
    assert not store.valid(case, {"files": []})
    fresh = training_store(dataset, root)
    expected = load_training_cases(dataset)[0]["image"]
    np.testing.assert_array_equal(fresh[0]["image"], expected)
    assert not np.array_equal(np.load(store.path(case, "image")), image.array)
    other = dataset.cases("Tr")[1]  # untouched case: not rewritten
    assert os.stat(store.path(other, "image")).st_mtime_ns == before[other]


def test_an_incomplete_case_is_rebuilt(dataset, tmp_path):
    root = tmp_path / "train"
    training_store(dataset, root)
    case = dataset.cases("Tr")[0]
    CaseStore(root).path(case, "label").unlink()  # e.g. a kill between two files
    stored = training_store(dataset, root)
    np.testing.assert_array_equal(stored[0]["label"], load_training_cases(dataset)[0]["label"])


def _same_batches(a, b, steps=(0, 1, 5)) -> None:
    for step in steps:
        x, y = a(step), b(step)
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]), key


def test_samplers_give_the_same_crops_over_the_store(dataset, tmp_path):
    stored = training_store(dataset, tmp_path / "train")
    loaded = load_training_cases(dataset)
    ignore = training_ignore_index(dataset)
    kw = {"ignore_index": ignore, "seed": 3}
    _same_batches(
        PatchSampler3D(stored, (8, 8, 8), 2, **kw), PatchSampler3D(loaded, (8, 8, 8), 2, **kw)
    )
    _same_batches(
        SliceSampler2D(stored, (16, 16), 3, **kw), SliceSampler2D(loaded, (16, 16), 3, **kw)
    )


def test_meta_store_equals_the_in_memory_meta_cases(dataset, tmp_path):
    from tiny_preset import TINIER

    from sparseseg.config import get_preset
    from sparseseg.pseudolabels import run_step2

    preset = get_preset("cpu", TINIER)
    stage2 = tmp_path / "stage2"
    run_step2(dataset, stage2, preset, progress=False, cache_dir=tmp_path / "cache")
    sets = ("xy", "3d")
    stored = meta_store(dataset, stage2, sets, tmp_path / "cache")
    loaded = meta_cases(dataset, stage2, sets)
    for s, m in zip(stored, loaded, strict=True):
        for key in ("image", "targets"):
            assert s[key].dtype == m[key].dtype
            np.testing.assert_array_equal(s[key], m[key])
    ignore = dataset.num_classes
    _same_batches(
        MetaSampler(stored, (8, 8, 8), 2, ignore_index=ignore, seed=1),
        MetaSampler(loaded, (8, 8, 8), 2, ignore_index=ignore, seed=1),
    )


def test_train_reads_the_store_and_leaves_no_cache(dataset, tmp_path, monkeypatch):
    from tiny_preset import TINIER

    from sparseseg.data import store
    from sparseseg.pipeline import train

    roots = []

    def recording(ds, root, split="Tr", target_spacing=None):
        roots.append(Path(root))
        return training_store(ds, root, split, target_spacing)

    monkeypatch.setattr(store, "training_store", recording)
    state = train(dataset, tmp_path / "model", "cpu", TINIER, progress=False, report=False)
    assert all(state["stages"][s]["done"] for s in ("pseudolabels", "meta", "bundle"))
    assert (tmp_path / "model" / "bundle.pt").exists()
    assert roots and all(r == tmp_path / "model" / "cache" / "train" for r in roots)
    assert not (tmp_path / "model" / "cache").exists()
