"""Test-time augmentation of the decoder maps (``tta``): the mean over the tile and its flips."""

from __future__ import annotations

import numpy as np
import pytest

from pathosam.automatic import segment_nuclei
from pathosam.inference import decoder_maps
from pathosam.training.models import new_model

from .test_segment import MapsFromImage, disk_image

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def random_model():
    return new_model(64, 2, img_size=256, decoder_features=8, seed=1)


@pytest.mark.parametrize("shape", [(100, 100), (90, 120)])
def test_tta_maps_are_flip_equivariant(random_model, shape):
    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    maps = decoder_maps(random_model, image, tta=True)
    for axis in (0, 1):
        flipped = decoder_maps(random_model, np.ascontiguousarray(np.flip(image, axis)), tta=True)
        np.testing.assert_allclose(flipped, np.flip(maps, axis + 1), atol=1e-5)
    plain = decoder_maps(random_model, image)
    plain_flipped = decoder_maps(random_model, np.ascontiguousarray(np.flip(image, 1)))
    assert np.abs(plain_flipped - np.flip(plain, 2)).max() > 1e-3  # a random model alone is not
    assert maps.shape == plain.shape and maps.dtype == np.float32


def test_tta_tiled_maps_are_each_tiles_tta_maps_stitched(random_model):
    from pathosam.tiling import tile_grid, tile_slices

    image = np.random.default_rng(1).integers(0, 256, (200, 170, 3), dtype=np.uint8)
    ts, halo = (64, 64), (16, 16)
    tta = decoder_maps(random_model, image, ts, halo, tta=True)
    assert np.abs(tta - decoder_maps(random_model, image, ts, halo)).max() > 1e-3
    for t in tile_grid(image.shape[:2], ts, halo):
        own = decoder_maps(random_model, image[tile_slices(t.outer)], None, tta=True)
        np.testing.assert_allclose(tta[(slice(None), *tile_slices(t.inner))],
                                   own[(slice(None), *tile_slices(t.inner_local))], atol=1e-5)


def test_segment_with_tta_keeps_the_maps_of_an_equivariant_model():
    """The test double's maps follow the pixels, so TTA must give the same nuclei: un-flipping
    each tile's maps at the wrong place would mirror them."""
    model = MapsFromImage()
    image, _ = disk_image()
    kw = dict(tile_shape=(128, 128), halo=(32, 32), classes=True, progress=False, min_size=5)
    plain = segment_nuclei(image, model, **kw)
    tta = segment_nuclei(image, model, tta=True, **kw)
    np.testing.assert_array_equal(tta.labels, plain.labels)
    np.testing.assert_array_equal(tta.classes, plain.classes)
    assert tta.parameters["tta"] is True and "tta" not in plain.parameters
    untiled = segment_nuclei(image, model, tile_shape=None, tta=True, progress=False, min_size=5)
    np.testing.assert_array_equal(untiled.labels, segment_nuclei(image, model, tile_shape=None, progress=False,
                                                                 min_size=5).labels)
    with pytest.raises(ValueError, match="mode='ais'"):
        segment_nuclei(image, model, mode="amg", tta=True, progress=False)
