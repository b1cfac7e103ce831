"""The input contract: every accepted image becomes RGB uint8; bad input gets a clear error."""

from __future__ import annotations

import numpy as np
import pytest

from pathosam.image import preprocess_shape, resize_longest_side, to_rgb_uint8, transform_coords
from pathosam.tiling import tile_grid

RNG = np.random.default_rng(0)


def test_rgb_uint8_passes_unchanged():
    img = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_rgb_uint8(img), img)


def test_gray_and_alpha():
    gray = RNG.integers(0, 256, (10, 12), dtype=np.uint8)
    out = to_rgb_uint8(gray)
    assert out.shape == (10, 12, 3) and all((out[..., c] == gray).all() for c in range(3))
    rgba = RNG.integers(0, 256, (10, 12, 4), dtype=np.uint8)
    np.testing.assert_array_equal(to_rgb_uint8(rgba), rgba[..., :3])


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.float64, np.int32])
def test_other_dtypes_are_scaled_to_full_range(dtype):
    img = (RNG.random((16, 16, 3)) * 1000).astype(dtype)
    out = to_rgb_uint8(img)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255


def test_minmax_is_per_channel():
    img = np.zeros((4, 4, 3), np.uint8)
    img[..., 0] = np.arange(16).reshape(4, 4) + 100
    img[..., 1] = 7  # constant channel -> 0
    img[..., 2] = np.arange(16).reshape(4, 4) * 10
    out = to_rgb_uint8(img, "minmax")
    assert out[..., 0].min() == 0 and out[..., 0].max() == 255
    assert (out[..., 1] == 0).all()
    assert out[..., 2].max() == 255


@pytest.mark.parametrize(
    "bad,match",
    [
        (np.zeros((3, 4, 5, 6), np.uint8), "shape"),
        (np.zeros((10, 10, 7), np.uint8), "shape"),
        (np.zeros((0, 10, 3), np.uint8), "empty"),
        (np.full((5, 5, 3), np.nan, np.float32), "NaN"),
        (np.zeros((5, 5), bool), "pixel type"),
        (np.array([["a"]]), "pixel type"),
    ],
)
def test_bad_images_are_explained(bad, match):
    with pytest.raises(ValueError, match=match):
        to_rgb_uint8(bad, name="my.tif")


def test_unknown_normalization():
    with pytest.raises(ValueError, match="normalization"):
        to_rgb_uint8(np.zeros((4, 4, 3), np.uint8), "zscore")


@pytest.mark.parametrize("shape,expected", [((512, 512), (1024, 1024)), ((448, 512), (896, 1024)),
                                            ((296, 448), (677, 1024)), ((1000, 10), (1024, 10))])
def test_preprocess_shape_matches_sam_rounding(shape, expected):
    assert preprocess_shape(*shape) == expected
    img = np.zeros((*shape, 3), np.uint8)
    assert resize_longest_side(img).shape[:2] == expected


def test_coordinates_scale_with_the_resize():
    np.testing.assert_allclose(transform_coords([[223, 252]], (512, 512)), [[446, 504]])
    np.testing.assert_allclose(transform_coords([[10, 20]], (448, 512)), [[20, 40]])


def test_tile_grid_covers_the_image_once():
    tiles = tile_grid((1000, 700), (384, 384), (64, 64))
    cover = np.zeros((1000, 700), int)
    for t in tiles:
        (r0, c0), (r1, c1) = t.inner
        cover[r0:r1, c0:c1] += 1
        (o0, p0), (o1, p1) = t.outer
        assert o0 <= r0 and p0 <= c0 and o1 >= r1 and p1 >= c1
        assert o1 - o0 <= 512 and p1 - p0 <= 512
    assert (cover == 1).all()
    with pytest.raises(ValueError):
        tile_grid((10, 10), (0, 5), (1, 1))
