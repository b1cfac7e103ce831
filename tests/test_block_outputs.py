"""Post-processing blocks of whole model tiles (pathosam.inference.BlockOutputs)."""

from __future__ import annotations

import numpy as np
import pytest

from pathosam.inference import BlockOutputs, postprocessing_block
from pathosam.tiling import tile_grid, tiles_within


def test_block_shape_is_whole_tiles_of_at_least_min_block():
    assert postprocessing_block((384, 384)) == (384, 384)
    assert postprocessing_block((128, 128)) == (128, 128)
    assert postprocessing_block((96, 96)) == (192, 192)
    assert postprocessing_block((100, 30)) == (200, 150)


def test_tiles_arrive_in_any_order_and_each_block_is_returned_once_complete():
    shape, tile, halo = (250, 333), (40, 30), (8, 8)
    block = postprocessing_block(tile)
    maps = np.random.default_rng(0).random((3, *shape)).astype(np.float32)
    feats = maps[:2] * 2
    tiles = tile_grid(shape, tile, halo)
    out = BlockOutputs(shape, tile, block, halo)
    assert sorted((t for b in range(len(out.blocks)) for t in out.tiles(b)), key=lambda t: t.index) == tiles
    got = {}
    for i in np.random.default_rng(1).permutation(len(tiles)):
        (r0, c0), (r1, c1) = tiles[i].inner
        done = out.add(tiles[i], maps[:, r0:r1, c0:c1], feats[:, r0:r1, c0:c1])
        if done is not None:
            assert done[0] not in got
            got[done[0]] = done
    assert sorted(got) == list(range(len(out.blocks)))
    for b, bm, bf in got.values():
        (r0, c0), (r1, c1) = out.blocks[b].inner
        np.testing.assert_array_equal(bm, maps[:, r0:r1, c0:c1])
        np.testing.assert_array_equal(bf, feats[:, r0:r1, c0:c1])
    with pytest.raises(ValueError, match="tile grid"):
        tiles_within(((40, 0), (120, 60)), (60, 60), (0, 0), shape)
