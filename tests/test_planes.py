"""Plane views: slice shapes, round trips, index expressions."""

from __future__ import annotations

import numpy as np
import pytest

from sparseseg.data.planes import (
    PLANES,
    from_slices,
    num_slices,
    parse_planes,
    slice_index,
    to_slices,
)

SHAPE = (4, 5, 6)  # X, Y, Z
EXPECTED = {"xy": (6, 4, 5), "xz": (5, 4, 6), "yz": (4, 5, 6)}


def volume() -> np.ndarray:
    return np.arange(np.prod(SHAPE)).reshape(SHAPE)


@pytest.mark.parametrize("plane", PLANES)
def test_slice_shapes_and_round_trip(plane):
    vol = volume()
    slices = to_slices(vol, plane)
    assert slices.shape == EXPECTED[plane]
    assert num_slices(vol.shape, plane) == EXPECTED[plane][0]
    assert np.shares_memory(slices, vol)  # a view, no copy
    np.testing.assert_array_equal(from_slices(slices, plane), vol)
    # Editing slices and mapping back changes exactly that slice of the volume.
    edited = slices.copy()
    edited[2] = -1
    back = from_slices(edited, plane)
    assert (back[slice_index(plane, 2)] == -1).all()
    assert (back == -1).sum() == np.prod(EXPECTED[plane][1:])


@pytest.mark.parametrize("plane", PLANES)
def test_slice_index_matches_views(plane):
    vol = volume()
    for n in range(num_slices(vol.shape, plane)):
        np.testing.assert_array_equal(vol[slice_index(plane, n)], to_slices(vol, plane)[n])


def test_planes_are_normal_to_the_right_axis():
    vol = volume()
    np.testing.assert_array_equal(to_slices(vol, "xy")[3], vol[:, :, 3])
    np.testing.assert_array_equal(to_slices(vol, "xz")[3], vol[:, 3, :])
    np.testing.assert_array_equal(to_slices(vol, "yz")[3], vol[3, :, :])


def test_leading_channel_axes():
    vol = np.stack([volume(), -volume()])  # (C, X, Y, Z)
    for plane in PLANES:
        slices = to_slices(vol, plane)
        assert slices.shape == (2, *EXPECTED[plane])
        np.testing.assert_array_equal(from_slices(slices, plane), vol)
    assert num_slices(vol.shape, "yz") == 4


def test_parse_planes():
    assert parse_planes("yz, xy") == ("xy", "yz")
    assert parse_planes(["XZ"]) == ("xz",)
    assert parse_planes("xy,xz,yz") == PLANES
    for bad in ("", "ab", "xy,zz"):
        with pytest.raises(ValueError):
            parse_planes(bad)
