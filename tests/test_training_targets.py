"""AIS training targets against the reference vectors (``ais/targets_*.npz``) plus hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tifffile

from pathosam.training import AIS_TARGET_CHANNELS, ais_target_parts, ais_targets, relabel_for_targets

IMAGES = ["monuseg", "gbm40", "cpm15"]
N_INSTANCES = {"monuseg": 357, "gbm40": 105, "cpm15": 344}
EPS = 1e-7


@pytest.mark.parametrize("name", IMAGES)
def test_targets_match_reference(vectors, name):
    gt = tifffile.imread(vectors / "ais" / f"gt_{name}.tif")
    ref = np.load(vectors / "ais" / f"targets_{name}.npz")
    instances, maps = ais_target_parts(gt)
    assert instances.dtype == np.uint32 and maps.dtype == np.float32
    np.testing.assert_array_equal(instances, ref["instances"])
    assert int(instances.max()) == N_INSTANCES[name]
    np.testing.assert_array_equal(maps[0], ref["foreground"])
    assert np.abs(maps[1] - ref["center_distances"]).max() <= 1e-6
    assert np.abs(maps[2] - ref["boundary_distances"]).max() <= 1e-6

    y = ais_targets(gt)
    assert y.shape == (4,) + gt.shape and y.dtype == np.float32
    np.testing.assert_array_equal(y[0], ref["instances"].astype(np.float32))
    np.testing.assert_array_equal(y[1:], maps)


def test_channel_names():
    assert AIS_TARGET_CHANNELS == ("instances", "foreground", "center_distances", "boundary_distances")


def test_square_by_hand():
    # A 3x3 square in a 5x5 image: ring pixels are inner boundary, the centre pixel is 1 px from it.
    labels = np.zeros((5, 5), np.int32)
    labels[1:4, 1:4] = 7
    inst, maps = ais_target_parts(labels, min_size=1)
    assert inst.max() == 1 and (inst[1:4, 1:4] == 1).all() and inst.sum() == 9
    np.testing.assert_array_equal(maps[0], (labels > 0).astype(np.float32))

    # centre distance: d / (max d + 1e-7); centroid (2, 2); edges d = 1, corners d = sqrt(2)
    dmax = math.sqrt(2) + EPS
    expected_c = np.ones((5, 5))
    expected_c[1:4, 1:4] = [[math.sqrt(2) / dmax, 1 / dmax, math.sqrt(2) / dmax],
                            [1 / dmax, 0.0, 1 / dmax],
                            [math.sqrt(2) / dmax, 1 / dmax, math.sqrt(2) / dmax]]
    np.testing.assert_allclose(maps[1], expected_c, atol=1e-7)

    # boundary distance b: 0 on the ring, 1 at the centre; target = (b_max - b) / (b_max + 1e-7)
    expected_b = np.ones((5, 5))
    expected_b[1:4, 1:4] = 1 / (1 + EPS)
    expected_b[2, 2] = 0.0
    np.testing.assert_allclose(maps[2], expected_b, atol=1e-7)


def test_min_size_default_removes_small_objects():
    labels = np.zeros((12, 12), np.int32)
    labels[1:4, 1:4] = 1   # 9 px  -> removed (min_size 10)
    labels[6:11, 6:8] = 2  # 10 px -> kept, becomes id 1
    inst, maps = ais_target_parts(labels)
    assert set(np.unique(inst)) == {0, 1}
    assert (inst[6:11, 6:8] == 1).all() and (inst[1:4, 1:4] == 0).all()
    assert (maps[1:, 1:4, 1:4] == 1.0).all()  # removed object = background fill


def test_connected_components_and_touching_ids():
    labels = np.zeros((10, 20), np.int32)
    labels[1:5, 1:5] = 3    # one id in two pieces -> two objects
    labels[1:5, 12:16] = 3
    labels[5:9, 1:5] = 9    # touches the first piece, different id -> stays separate
    inst = relabel_for_targets(labels, min_size=1)
    # numbered in raster order of first appearance
    assert inst[1, 1] == 1 and inst[1, 12] == 2 and inst[5, 1] == 3
    assert inst.max() == 3


def test_object_of_only_boundary_pixels_gets_zero_boundary_target():
    labels = np.zeros((6, 14), np.int32)
    labels[2:4, 1:13] = 1  # 2 x 12: every pixel is an inner-boundary pixel
    _, maps = ais_target_parts(labels)
    assert (maps[2][2:4, 1:13] == 0.0).all()
    assert maps[1][2:4, 1:13].max() == pytest.approx(1.0, abs=1e-6)


def test_centroid_outside_object_uses_most_interior_pixel():
    # A "C" shape whose centroid lies in the hole: the centre moves to the first pixel of maximal
    # boundary distance, where the centre distance is 0.
    labels = np.zeros((15, 15), np.int32)
    labels[1:14, 1:14] = 1
    labels[4:11, 4:14] = 0
    inst, maps = ais_target_parts(labels)
    centroid = np.argwhere(inst == 1).mean(axis=0).round().astype(int)
    assert inst[tuple(centroid)] == 0
    zero = np.argwhere((maps[1] == 0) & (inst == 1))
    assert len(zero) == 1
    assert maps[2][tuple(zero[0])] == 0.0  # the most interior pixel


def test_empty_labels():
    inst, maps = ais_target_parts(np.zeros((8, 9), np.uint16))
    assert inst.max() == 0
    assert (maps[0] == 0).all() and (maps[1:] == 1.0).all()


def test_float_integer_labels_accepted_and_bad_input_rejected():
    labels = np.zeros((12, 12), np.float32)
    labels[2:8, 2:8] = 5.0
    assert ais_targets(labels)[0].max() == 1
    with pytest.raises(ValueError):
        ais_targets(labels + 0.5)
    with pytest.raises(ValueError):
        ais_targets(np.zeros((2, 3, 4), np.int32))
    assert ais_targets(labels[None].astype(np.int32)).shape == (4, 12, 12)
