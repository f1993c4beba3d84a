"""Selection holds one training volume at a time: lazy volumes, the auto-encoder's data on disk."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import Loads

from sparseseg.data.layout import Dataset
from sparseseg.data.phantom import write_phantom_dataset
from sparseseg.selection import select_slices, select_volumes
from sparseseg.selection.autoencoder import SliceAutoEncoder, train_autoencoder
from sparseseg.selection.next_round import select_round_volumes
from sparseseg.selection.rowfile import RowFile
from sparseseg.selection.volumes import LazyVolume


def _lazy(arrays, loads: Loads) -> list[LazyVolume]:
    return [LazyVolume(lambda a=a: loads.track(a.copy()), a.shape) for a in arrays]


def _volumes():
    rng = np.random.default_rng(0)
    return [
        np.cumsum(rng.normal(size=(14, 12, 10)), axis=2).astype(np.float32),
        np.cumsum(rng.normal(size=(2, 10, 16, 9)), axis=1).astype(np.float32),
        rng.random((11, 13, 12)).astype(np.float32),
    ]


@pytest.mark.parametrize("extractor", ["vgg", "intensity"])
def test_lazy_volumes_select_the_same_one_at_a_time(tmp_path, extractor):
    arrays, loads = _volumes(), Loads()
    kw = dict(strategy="ra", extractor=extractor, steps=3, image_size=32, seed=2)
    expected = select_volumes(arrays, ["a", "b", "c"], 4, **kw)
    lazy = _lazy(arrays, loads)
    got = select_volumes(lazy, ["a", "b", "c"], 4, **kw)
    assert got.to_json() == expected.to_json()
    for case in ("a", "b", "c"):
        for p in ("xy", "xz", "yz"):
            np.testing.assert_array_equal(got.features[case][p], expected.features[case][p])
    # Read once to check each volume, once per channel (4 in all) for the features.
    assert loads.most == 1 and loads.count == 3 + 4
    cached = select_volumes(lazy, ["a", "b", "c"], 4, feature_cache=tmp_path / "fc", **kw)
    again = select_volumes(lazy, ["a", "b", "c"], 4, feature_cache=tmp_path / "fc", **kw)
    assert cached.to_json()["cases"] == again.to_json()["cases"] == expected.to_json()["cases"]
    assert loads.most == 1


def test_select_slices_reads_one_image_at_a_time(tmp_path, image_loads):
    root = write_phantom_dataset(tmp_path / "ph", "heart", 3, seed=1, shape=(20, 24, 12))
    ds = Dataset.open(root)
    arrays = [ds.load_image(c).array.copy() for c in ds.cases("Tr")]
    image_loads.count = image_loads.most = 0
    for extractor in ("vgg", "intensity"):
        kw = dict(strategy="ra", extractor=extractor, steps=3, seed=1)
        got = select_slices(root, 5, **kw)
        want = select_volumes(arrays, ds.cases("Tr"), 5, **kw)
        for case in ds.cases("Tr"):
            assert got.cases[case].planes == want.cases[case].planes
    # One image alive at a time; each read to check it and for the features.
    assert image_loads.most == 1 and image_loads.count == 2 * 2 * 3


def test_round_on_lazy_volumes_matches_arrays():
    rng = np.random.default_rng(1)
    arrays = [a for a in _volumes() if a.ndim == 3]
    labels, maps = [], []
    for a in arrays:
        lab = np.full(a.shape, 3, np.int16)
        lab[::4] = lab[:, ::4] = 1
        labels.append(lab)
        maps.append(rng.random(a.shape).astype(np.float32))
    kw = dict(ignore_value=3, total=9, extractor="vgg", steps=3, image_size=32, seed=1)
    want = select_round_volumes(arrays, labels, ["a", "b"], maps, **kw)
    loads = Loads()
    got = select_round_volumes(_lazy(arrays, loads), labels, ["a", "b"], maps, **kw)
    assert got.to_json() == want.to_json()
    assert loads.most == 1 and loads.count == 2 * 2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_row_file_reads_like_the_tensor(tmp_path, dtype):
    x = torch.randn(37, 130, 2, 2).to(dtype)
    rows = RowFile(tmp_path / "x.npy", x.shape, dtype)
    rows.write(0, x[:20])
    rows.write(20, x[20:])
    idx = torch.tensor([5, 0, 36, 5, 21])
    for got, want in ((rows[idx], x[idx]), (rows[3:30], x[3:30]), (rows[:, 64:128], x[:, 64:128])):
        assert got.dtype == dtype and torch.equal(got, want)
    assert len(rows) == 37
    with pytest.raises(ValueError, match="do not fit"):
        rows.write(30, x[:10])


@pytest.mark.parametrize("image_size", [32, 64, 128])
def test_normaliser_by_channel_blocks_is_the_whole_at_once(tmp_path, image_size):
    torch.manual_seed(0)
    model = SliceAutoEncoder(image_size=image_size)
    g = image_size // 32
    trunk = (torch.randn(301, 512, g, g) * 3 + 1).relu().to(torch.bfloat16)
    model.fit_normaliser(trunk)
    whole = trunk.float()
    assert torch.equal(model.t_mean.flatten(), whole.mean(dim=(0, 2, 3)))
    assert torch.equal(model.t_std.flatten(), whole.std(dim=(0, 2, 3)).clamp_min(1e-6))
    # From a file: the same statistics and the same training as from the tensor.
    rows = RowFile(tmp_path / "t.npy", trunk.shape, torch.bfloat16)
    rows.write(0, trunk)
    targets = torch.rand(301, 1, 32, 32)
    target_rows = RowFile(tmp_path / "r.npy", targets.shape)
    target_rows.write(0, targets)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    a = train_autoencoder(model, trunk, targets, steps=3, batch_size=8)
    model.load_state_dict(state)
    model.t_mean.zero_()
    model.fit_normaliser(rows)
    assert torch.equal(model.t_mean, state["t_mean"]) and torch.equal(model.t_std, state["t_std"])
    b = train_autoencoder(model, rows, target_rows, steps=3, batch_size=8)
    assert a == b
