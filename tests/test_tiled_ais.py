"""Tiled (block-wise, streaming) AIS: identical to the untiled result, no seams at tile borders."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from pathosam.instances import ais_from_maps
from pathosam.instances.tiled import AISParams, TiledAIS, process_block, tiled_ais_from_maps
from pathosam.tiling import tile_slices

from .test_ais import IMAGES, PARAMS, load_maps, partition_report


def disk_maps(shape, centres, radii) -> tuple[np.ndarray, np.ndarray]:
    """Ideal decoder maps of disks: foreground, normalised centre and boundary distances
    (0 at the centre, 1 at the rim and in the background); also the disks' label image."""
    H, W = shape
    rr, cc = np.mgrid[:H, :W]
    maps = np.ones((3, H, W), np.float32)
    maps[0] = 0
    truth = np.zeros(shape, np.uint32)
    for k, ((r, c), rad) in enumerate(zip(centres, radii), 1):
        d = np.hypot(rr - r, cc - c) / rad
        inside = d < 1
        truth[inside] = k
        maps[0][inside] = 1
        maps[1][inside] = np.minimum(maps[1][inside], d[inside])
        maps[2][inside] = np.minimum(maps[2][inside], d[inside])
    return maps, truth


@pytest.mark.parametrize("params", list(PARAMS))
@pytest.mark.parametrize("name", IMAGES)
def test_tiled_equals_untiled_on_reference_maps(vectors, name, params):
    maps = load_maps(vectors, name)
    untiled = ais_from_maps(maps, **PARAMS[params])
    tiled = ais_from_maps(maps, tile_shape=(384, 384), halo=(64, 64), **PARAMS[params])
    # stronger than mSA >= 0.99: the very same label image (same ids, ordered as the seeds)
    np.testing.assert_array_equal(tiled, untiled)
    # the reference's own tiled run differs from its untiled one on some of these (ais.json)
    ref_tiled = tifffile.imread(vectors / "ais" / "labels" / f"{name}_tiled_{params}.tif")
    assert ref_tiled.shape == tiled.shape


@pytest.mark.parametrize("tile_shape,halo", [((384, 384), (64, 64)), ((128, 128), (64, 64)), ((100, 77), (64, 64))])
@pytest.mark.parametrize("name", ["monuseg", "gbm40"])
def test_tiled_equals_untiled_on_ideal_maps(vectors, name, tile_shape, halo):
    t = np.load(vectors / "ais" / f"targets_{name}.npz")
    maps = np.stack([t["foreground"], t["center_distances"], t["boundary_distances"]]).astype(np.float32)
    np.testing.assert_array_equal(ais_from_maps(maps, tile_shape=tile_shape, halo=halo), ais_from_maps(maps))


def test_nuclei_on_tile_borders_and_corners_are_neither_split_lost_nor_duplicated():
    tile = 64  # borders at rows/cols 64, 128, 192
    disks = [  # (row, col, radius)
        (20, 64, 6), (20, 128, 7), (20, 192, 8), (64, 236, 9), (128, 236, 9), (192, 236, 9),  # on borders
        (95, 64, 10), (160, 128, 7), (100, 192, 11),
        (64, 64, 13), (128, 128, 13), (192, 192, 12), (64, 128, 6), (128, 64, 8), (192, 128, 10),  # on corners
        (128, 192, 5), (64, 192, 7), (192, 64, 9),
        (236, 118, 10), (236, 139, 11),  # two touching nuclei either side of a border (no exact ties)
    ]
    centres = [(r, c) for r, c, _ in disks]
    radii = [rad for _, _, rad in disks]
    for i, (r, c, a) in enumerate(disks):
        for r2, c2, b in disks[i + 1 :]:
            assert np.hypot(r - r2, c - c2) >= a + b, "test disks must not overlap"
    maps, truth = disk_maps((256, 256), centres, radii)
    assert truth.max() == len(centres) and len(np.unique(truth)) - 1 == len(centres)  # disjoint disks
    untiled = ais_from_maps(maps)
    assert untiled.max() == len(centres)
    for halo in [(32, 32), (64, 64)]:
        tiled = ais_from_maps(maps, tile_shape=(tile, tile), halo=halo)
        np.testing.assert_array_equal(tiled, untiled)
        # each disk is exactly one label and each label lies in one disk
        for k in range(1, len(centres) + 1):
            ids = np.unique(tiled[truth == k])
            assert len(ids[ids > 0]) == 1, f"disk {k} at {centres[k - 1]} split into {ids}"
        for i in range(1, tiled.max() + 1):
            disks_hit = np.unique(truth[tiled == i])
            assert len(disks_hit[disks_hit > 0]) == 1, f"label {i} spans several disks"


def test_exact_ties_between_touching_nuclei_cost_at_most_their_midline():
    # two equal disks touching across a border: pixels on the midline are exact watershed ties,
    # which skimage breaks by flooding order (as the reference's own runs with other threads do)
    maps, truth = disk_maps((128, 192), [(64, 96 - 10), (64, 96 + 10)], [10, 10])
    untiled = ais_from_maps(maps)
    tiled = ais_from_maps(maps, tile_shape=(64, 96), halo=(32, 32))
    assert tiled.max() == untiled.max() == 2
    differ = np.argwhere(tiled != untiled)
    assert np.all(differ[:, 1] == 96), "only midline pixels may differ"

def test_streaming_in_any_order_equals_full_maps(vectors):
    maps = load_maps(vectors, "monuseg")
    expected = ais_from_maps(maps, min_size=20)
    for order_seed in (None, 0, 1):
        job = TiledAIS(maps.shape[1:], (128, 128), (64, 64), AISParams(min_size=20))
        order = range(job.n_blocks) if order_seed is None else np.random.default_rng(order_seed).permutation(job.n_blocks)
        max_held = 0
        processed = []
        for i in order:
            (r0, c0), (r1, c1) = job.grid.tiles[int(i)].inner
            processed += job.add(int(i), maps[:, r0:r1, c0:c1])
            max_held = max(max_held, len(job._maps))
        assert sorted(processed) == list(range(job.n_blocks))
        assert job.finish() == expected.max()
        np.testing.assert_array_equal(job.out, expected)
        assert not job._maps  # every tile's maps released
        if order_seed is None:
            # raster order holds about two rows of tile maps, not the image
            assert max_held <= 2 * job.grid.n_cols + 2


def test_output_array_can_be_a_memmap(tmp_path, vectors):
    maps = load_maps(vectors, "gbm40")
    out = np.lib.format.open_memmap(tmp_path / "labels.npy", mode="w+", dtype=np.uint32, shape=maps.shape[1:])
    tiled_ais_from_maps(maps, (200, 200), (64, 64), out=out)
    out.flush()
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), ais_from_maps(maps))


def test_empty_and_bad_input():
    maps = np.zeros((3, 50, 70), np.float32)
    assert ais_from_maps(maps, tile_shape=(32, 32), halo=(16, 16)).max() == 0
    with pytest.raises(ValueError, match="halo"):
        ais_from_maps(maps, tile_shape=(32, 32), halo=(40, 40))
    with pytest.raises(ValueError, match="halo given without tile_shape"):
        ais_from_maps(maps, halo=(16, 16))
    with pytest.raises(ValueError, match="shape"):
        ais_from_maps(maps[:2], tile_shape=(32, 32))
    job = TiledAIS((50, 70), (32, 32), (16, 16))
    with pytest.raises(ValueError, match="expected"):
        job.add(0, np.zeros((3, 10, 10), np.float32))
    with pytest.raises(RuntimeError, match="not been post-processed"):
        job.finish()


def test_block_results_are_order_independent_and_give_the_nucleus_table(vectors):
    """Blocks computed independently (other processes, a previous run) and merged in any order
    give the same labels; the merged per-nucleus data equal the label image's properties."""
    maps = load_maps(vectors, "cpm15")
    params = AISParams(min_size=20)
    expected = ais_from_maps(maps, min_size=20)
    job = TiledAIS(maps.shape[1:], (128, 160), (64, 64), params)
    feats = np.stack([np.ones(maps.shape[1:]), maps[0]])  # per-pixel features summed per nucleus
    results = []
    for tile in reversed(list(job.blocks())):
        ext = job.grid.extended(tile.index)
        (r0, c0), (r1, c1) = tile.inner
        results.append(process_block(job.grid.shape, tile, job.grid.halo,
                                     maps[(slice(None), slice(ext[0][0], ext[1][0]), slice(ext[0][1], ext[1][1]))],
                                     params, feats[:, r0:r1, c0:c1]))
    for r in results[::2] + results[1::2]:
        job.put(r)
    n = job.finish()
    np.testing.assert_array_equal(job.out, expected)
    nuc = job.nuclei
    assert len(nuc) == n == expected.max()
    from skimage.measure import regionprops

    props = regionprops(expected)
    np.testing.assert_array_equal(nuc.area, [p.area for p in props])
    np.testing.assert_allclose(nuc.centroid, [p.centroid for p in props], atol=1e-9)
    np.testing.assert_array_equal(nuc.bbox, [p.bbox for p in props])
    np.testing.assert_allclose(nuc.features[:, 0], nuc.area)
    np.testing.assert_allclose(nuc.features[:, 1], [maps[0][expected == p.label].sum() for p in props], rtol=1e-6)
    # anchors are the seeds' first pixels, increasing with the id
    assert np.all(np.diff(nuc.anchor) > 0)


def test_iter_merged_yields_chunks_only_when_their_labels_are_final():
    """Row-by-row merge: each chunk's nuclei are complete in the target when it is yielded, ids
    are consecutive from 1, and the result equals the all-at-once merge."""
    from pathosam.instances.tiled import iter_merged, merge_blocks

    rng = np.random.default_rng(7)
    shape, tile, halo = (300, 260), (64, 64), (32, 32)
    centres = np.stack([rng.integers(0, shape[0], 90), rng.integers(0, shape[1], 90)], axis=1)
    maps, _ = disk_maps(shape, centres, rng.integers(3, 12, 90))
    job = TiledAIS(shape, tile, halo, AISParams(min_size=20))
    for t in job.blocks():
        (r0, c0), (r1, c1) = t.inner
        job.add(t.index, maps[:, r0:r1, c0:c1])
    results = [job.results[i] for i in range(job.n_blocks)]
    nuclei_all, luts = merge_blocks(results, 20)
    expected = np.zeros(shape, np.uint32)
    for t in job.blocks():
        sl = tile_slices(t.inner)
        expected[sl] = luts[t.index][job.out[sl]]
    target = np.zeros(shape, np.uint32)
    n_cols = job.grid.n_cols
    next_id = 1
    for first, chunk in iter_merged(shape, tile, lambda i: results[i * n_cols : (i + 1) * n_cols], job.out,
                                    target, 20):
        assert first == next_id
        for k in range(len(chunk)):
            r0, c0, r1, c1 = chunk.bbox[k]
            assert (target[r0:r1, c0:c1] == first + k).sum() == chunk.area[k]
        next_id += len(chunk)
    assert next_id - 1 == len(nuclei_all) > 40
    np.testing.assert_array_equal(target, expected)
