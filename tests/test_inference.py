"""``pathosam.inference``, the one tile driver: one conversion rule on every path."""

from __future__ import annotations

import numpy as np
import pytest

from pathosam.automatic import segment_nuclei
from pathosam.inference import decoder_maps
from pathosam.image import to_rgb_uint8
from pathosam.inference import TileInputs, image_tiles, paste_inner
from pathosam.instances import ais_from_maps
from pathosam.tiling import tile_slices

from .test_segment import MapsFromImage, disk_image

TS, HALO = (128, 128), (32, 32)


@pytest.fixture(scope="module")
def image16():
    """A uint16 image whose tiles have different value ranges: one dark pixel in the first tile
    only, so a per-tile min-max scaling would give the same pixel other values than the whole
    image's scaling (the 85-versus-255 disagreement of issue 17)."""
    image, _ = disk_image()
    img = image.astype(np.uint16) * 100 + 2550
    img[5, 5] = 0
    return img


def _stitched(model, image, convert):
    """Inner blocks of every tile's maps, each tile converted by ``convert`` on its own."""
    from pathosam.image import prepare_input

    out = np.zeros((3, *image.shape[:2]), np.float32)
    for t in image_tiles(image.shape[:2], TS, HALO):
        x, ins, orig = prepare_input(convert(image[tile_slices(t.outer)]))
        paste_inner(out, t, model.decode(model.encode([x]), [ins], [orig])[0])
    return out


def test_none_converts_the_whole_image_once_on_every_path(image16):
    model = MapsFromImage()
    rgb = to_rgb_uint8(image16, "none")
    inputs = TileInputs(image16, "none")
    for t in image_tiles(image16.shape[:2], TS, HALO):
        np.testing.assert_array_equal(inputs.rgb(t.outer), rgb[tile_slices(t.outer)])
    maps = decoder_maps(model, image16, TS, HALO)
    np.testing.assert_array_equal(maps, decoder_maps(model, rgb, TS, HALO))
    # the old per-tile conversion of decoder_maps gave other maps for the same pixels
    per_tile = _stitched(model, image16, lambda block: to_rgb_uint8(block, "none"))
    assert np.abs(per_tile - maps).max() > 0.1
    # segment (streamed, block-wise post-processing) sees the same pixels as decoder_maps (evaluation)
    seg = segment_nuclei(image16, model, tile_shape=TS, halo=HALO, progress=False, min_size=5)
    np.testing.assert_array_equal(seg.labels, ais_from_maps(maps, min_size=5))
    np.testing.assert_array_equal(seg.labels, segment_nuclei(rgb, model, tile_shape=TS, halo=HALO, progress=False,
                                                             min_size=5).labels)
    untiled = decoder_maps(model, image16, None)
    np.testing.assert_array_equal(untiled, decoder_maps(model, rgb, None))
    np.testing.assert_array_equal(segment_nuclei(image16, model, tile_shape=None, progress=False).labels,
                                  ais_from_maps(untiled))


def test_minmax_stretches_every_tile_on_its_own(image16):
    model = MapsFromImage()
    maps = decoder_maps(model, image16, TS, HALO, normalization="minmax")
    np.testing.assert_array_equal(maps, _stitched(model, image16, lambda block: to_rgb_uint8(block, "minmax")))
    seg = segment_nuclei(image16, model, tile_shape=TS, halo=HALO, normalization="minmax", progress=False)
    np.testing.assert_array_equal(seg.labels, ais_from_maps(maps))
