"""Untiled AIS post-processing against the reference vectors (``ais/``) plus synthetic checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from pathosam.instances import ais_from_maps
from pathosam.instances.ais import _smoothed_maps_and_seeds

IMAGES = ["monuseg", "gbm40", "cpm15"]
PARAMS = {
    "default": {},
    "custom": dict(center_distance_threshold=0.4, boundary_distance_threshold=0.6, foreground_threshold=0.5,
                   min_size=20),
}


def load_maps(vectors: Path, name: str) -> np.ndarray:
    maps = np.load(vectors / "ais" / f"noisy_maps_{name}.npz")["maps"]
    assert maps.dtype == np.float16 and maps.shape[0] == 3
    return maps.astype(np.float32)


def partition_report(a: np.ndarray, b: np.ndarray) -> str | None:
    """None if ``a`` and ``b`` are the same partition (ids equal up to a bijection, 0 <-> 0), else a summary."""
    assert a.shape == b.shape
    pairs, counts = np.unique(np.stack([a.ravel(), b.ravel()]).astype(np.int64), axis=1, return_counts=True)
    ids_a, n_a = np.unique(pairs[0], return_counts=True)
    ids_b, n_b = np.unique(pairs[1], return_counts=True)
    bg_ok = not ((pairs[0] == 0) ^ (pairs[1] == 0)).any()
    if bg_ok and (n_a == 1).all() and (n_b == 1).all():
        return None  # every id pairs with exactly one id of the other image: a bijection
    # pixels whose label in b is not the best-overlapping partner of their label in a
    order = np.lexsort((-counts, pairs[0]))
    first = np.unique(pairs[0][order], return_index=True)[1]
    best = dict(zip(pairs[0][order][first].tolist(), pairs[1][order][first].tolist()))
    disagree = int(sum(c for ia, ib, c in zip(pairs[0], pairs[1], counts) if best[int(ia)] != ib))
    return (f"fg/bg disagree on {int(((a == 0) != (b == 0)).sum())} px, "
            f"{disagree} px differ from the best-overlap mapping, {int((n_a > 1).sum())} ids of a and "
            f"{int((n_b > 1).sum())} ids of b map to several ids; objects {int((ids_a > 0).sum())} vs "
            f"{int((ids_b > 0).sum())}")


def test_partition_helper_detects_differences():
    a = np.array([[0, 1, 1], [2, 2, 0]], np.uint32)
    assert partition_report(a, np.array([[0, 5, 5], [3, 3, 0]], np.uint32)) is None
    for b in ([[0, 1, 1], [1, 1, 0]], [[0, 1, 2], [3, 3, 0]], [[1, 1, 1], [2, 2, 0]], [[0, 1, 1], [2, 0, 0]]):
        assert partition_report(a, np.array(b, np.uint32)) is not None


# ----------------------------------------------------------------------------- reference vectors


def test_debug_intermediates_gbm40(vectors):
    dbg = np.load(vectors / "ais" / "debug_gbm40_untiled_default.npz")
    maps = load_maps(vectors, "gbm40")
    fg, cd, bd, fg_mask, seeds = _smoothed_maps_and_seeds(maps, 0.5, 0.5, 0.5, 1.0, 1.6)
    for ours, key in [(fg, "foreground_smoothed"), (cd, "center_distances_smoothed"),
                      (bd, "boundary_distances_smoothed")]:
        assert ours.dtype == np.float32
        np.testing.assert_allclose(ours, dbg[key], rtol=0, atol=1e-6, err_msg=key)
    np.testing.assert_array_equal(fg_mask, dbg["foreground_mask"])
    assert seeds.max() == dbg["markers"].max() == 105
    report = partition_report(seeds, dbg["markers"])
    assert report is None, f"seed markers: {report}"


@pytest.mark.parametrize("params", list(PARAMS))
@pytest.mark.parametrize("name", IMAGES)
def test_untiled_labels_match_reference(vectors, name, params):
    ref = tifffile.imread(vectors / "ais" / "labels" / f"{name}_untiled_{params}.tif")
    ours = ais_from_maps(load_maps(vectors, name), **PARAMS[params])
    assert ours.shape == ref.shape and ours.dtype == np.uint32
    n_ours, n_ref = len(np.unique(ours)) - 1, len(np.unique(ref)) - 1
    assert n_ours == n_ref, f"{name}/{params}: {n_ours} objects, reference {n_ref}"
    report = partition_report(ours, ref)
    assert report is None, f"{name}/{params}: {report}"


def test_float16_input_equals_upcast(vectors):
    maps16 = np.load(vectors / "ais" / "noisy_maps_gbm40.npz")["maps"]
    np.testing.assert_array_equal(ais_from_maps(maps16), ais_from_maps(maps16.astype(np.float32)))


def test_input_not_modified(vectors):
    maps = load_maps(vectors, "cpm15")
    before = maps.copy()
    ais_from_maps(maps, min_size=20)
    np.testing.assert_array_equal(maps, before)


# ----------------------------------------------------------------------------- synthetic


def disc_maps(shape=(64, 96), discs=((20, 24, 12), (40, 70, 5))) -> tuple[np.ndarray, list[np.ndarray]]:
    """Ideal maps for separated discs (row, col, radius): fg 1 inside, distances normalised per disc, 1 outside."""
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    fg = np.zeros(shape, np.float32)
    cd = np.ones(shape, np.float32)
    bd = np.ones(shape, np.float32)
    masks = []
    for r, c, rad in discs:
        d = np.hypot(rr - r, cc - c)
        m = d <= rad
        masks.append(m)
        fg[m] = 1
        cd[m] = d[m] / rad
        bd[m] = d[m] / rad  # inverted distance to the boundary: 0 at the centre, 1 at the edge
    return np.stack([fg, cd, bd]), masks


def test_synthetic_discs_dtype_ids_background():
    maps, masks = disc_maps()
    seg = ais_from_maps(maps)
    assert seg.dtype == np.uint32 and seg.shape == maps.shape[1:]
    assert np.array_equal(np.unique(seg), np.arange(3))  # background + ids 1..N consecutive
    assert (seg[0] == 0).all() and (seg[:, 0] == 0).all()  # image border is background here
    for m in masks:  # each disc is one object covering (almost all of) it
        ids, counts = np.unique(seg[m], return_counts=True)
        assert ids[np.argmax(counts)] != 0 and counts.max() >= 0.8 * m.sum()
        assert len(set(ids.tolist()) - {0}) == 1
    assert (seg[~(masks[0] | masks[1])] == 0).sum() >= 0.95 * (~(masks[0] | masks[1])).sum()


def test_min_size_removes_small_objects_and_relabels():
    maps, masks = disc_maps()
    seg = ais_from_maps(maps)
    small_id = int(np.bincount(seg[masks[1]]).argmax())
    big_id = int(np.bincount(seg[masks[0]]).argmax())
    small_size = int((seg == small_id).sum())
    big_size = int((seg == big_id).sum())
    assert small_id == 2 and big_id == 1 and small_size < big_size

    kept = ais_from_maps(maps, min_size=small_size)  # "fewer than min_size" -> exactly min_size is kept
    np.testing.assert_array_equal(kept, seg)

    filtered = ais_from_maps(maps, min_size=small_size + 1)
    assert filtered.dtype == np.uint32
    np.testing.assert_array_equal(filtered, np.where(seg == big_id, 1, 0).astype(np.uint32))

    # removing everything, and removing the object that comes first in raster order (survivor becomes id 1)
    assert (ais_from_maps(maps, min_size=big_size + 1) == 0).all()
    swapped, masks2 = disc_maps(discs=((20, 24, 5), (40, 70, 12)))
    seg2 = ais_from_maps(swapped, min_size=200)
    assert np.array_equal(np.unique(seg2), [0, 1]) and (seg2[masks2[1]] == 1).mean() > 0.8


def test_no_foreground_or_no_seeds_gives_empty_labels():
    maps, _ = disc_maps()
    empty = ais_from_maps(np.zeros_like(maps))
    assert empty.dtype == np.uint32 and not empty.any()
    no_seeds = ais_from_maps(maps, center_distance_threshold=0.0)
    assert no_seeds.dtype == np.uint32 and not no_seeds.any()


def test_thresholds_and_smoothing_matter():
    maps, _ = disc_maps()
    base = ais_from_maps(maps)
    assert not np.array_equal(ais_from_maps(maps, foreground_threshold=0.9), base)
    assert not np.array_equal(ais_from_maps(maps, foreground_smoothing=0.0), base)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((64, 64), np.float32),
        np.zeros((2, 8, 8), np.float32),
        np.zeros((4, 8, 8), np.float32),
        np.zeros((1, 3, 8, 8), np.float32),
        np.zeros((8, 8, 3), np.float32),
        np.zeros((3, 0, 8), np.float32),
        np.zeros((3, 8, 8), bool),
        np.zeros((3, 8, 8), np.complex64),
    ],
)
def test_bad_shapes_and_dtypes_raise(bad):
    with pytest.raises(ValueError):
        ais_from_maps(bad)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_raises(value):
    maps, _ = disc_maps()
    maps[1, 10, 10] = value
    with pytest.raises(ValueError, match="NaN or infinite"):
        ais_from_maps(maps)


@pytest.mark.parametrize("kwargs", [dict(min_size=-1), dict(foreground_smoothing=-1.0), dict(distance_smoothing=-0.5),
                                    dict(seeds="texture"), dict(seeds="shape", seed_dynamic=0.0),
                                    dict(seeds="shape", seed_center_weight=-1.0)])
def test_bad_parameters_raise(kwargs):
    maps, _ = disc_maps()
    with pytest.raises(ValueError):
        ais_from_maps(maps, **kwargs)


# ------------------------------------------------------------------------------------ shape seeds


def textured_nucleus_maps(seed=0):
    """A large disc (radius 30) whose predicted distances follow a coarse 'chromatin' texture
    (several local minima inside it), next to two touching small discs (radius 9).

    Returns the maps and the three object masks."""
    rng = np.random.default_rng(seed)
    H, W = 96, 128
    rr, cc = np.mgrid[:H, :W]
    fg = np.zeros((H, W), np.float32)
    cd = np.ones((H, W), np.float32)
    masks = []
    for r, c, rad in ((48, 40, 30), (40, 95, 9), (56, 108, 9)):
        d = np.hypot(rr - r, cc - c) / rad
        m = d < 1
        masks.append(m)
        fg[m] = 1
        cd[m] = np.minimum(cd[m], d[m])
    from scipy import ndimage

    texture = ndimage.gaussian_filter(rng.normal(size=(H, W)), 4)
    texture = (texture - texture.min()) / (texture.max() - texture.min())
    big = masks[0]
    cd[big] = 0.25 + 0.5 * texture[big]  # the model's distances follow the texture in the big one
    bd = cd.copy()
    return np.stack([fg, cd, bd]), masks


def _objects_in(seg, mask, share=0.1):
    ids, counts = np.unique(seg[mask], return_counts=True)
    return {int(i) for i, c in zip(ids, counts) if i and c >= share * mask.sum()}


def test_shape_seeds_keep_a_textured_nucleus_whole_and_split_touching_ones():
    maps, (big, a, b) = textured_nucleus_maps()
    ref = ais_from_maps(maps)
    assert len(_objects_in(ref, big)) >= 2  # the reference's seeds follow the texture: split
    seg = ais_from_maps(maps, seeds="shape")
    assert len(_objects_in(seg, big, 0.05)) == 1 and (seg[big] > 0).mean() > 0.95
    ia, ib = _objects_in(seg, a), _objects_in(seg, b)
    assert len(ia) == len(ib) == 1 and ia != ib  # the touching pair stays two nuclei
    assert seg.dtype == np.uint32 and np.array_equal(np.unique(seg), np.arange(seg.max() + 1))
    # the centre distance is what separates touching nuclei of a clump without a waist: with
    # weight 0 (shape alone) a pair of overlapping discs becomes one blob
    rr, cc = np.mgrid[:64, :96]
    d1, d2 = np.hypot(rr - 30, cc - 40) / 12, np.hypot(rr - 30, cc - 48) / 12  # centres 8 px apart
    fg = ((d1 < 1) | (d2 < 1)).astype(np.float32)
    cd = np.where(fg > 0, np.minimum(d1, d2), 1).astype(np.float32)
    pair = np.stack([fg, cd, cd])
    assert len(_objects_in(ais_from_maps(pair, seeds="shape"), fg > 0)) == 2
    assert len(_objects_in(ais_from_maps(pair, seeds="shape", seed_center_weight=0.0), fg > 0)) == 1


def test_shape_seed_parameters_matter_and_thresholds_do_not():
    maps, _ = textured_nucleus_maps(1)
    seg = ais_from_maps(maps, seeds="shape")
    same = ais_from_maps(maps, seeds="shape", center_distance_threshold=0.1, boundary_distance_threshold=0.9)
    np.testing.assert_array_equal(seg, same)  # the distance thresholds are not used
    assert ais_from_maps(maps, seeds="shape", seed_dynamic=50.0).max() < seg.max()  # fewer maxima pass
    empty = ais_from_maps(np.zeros_like(maps), seeds="shape")
    assert empty.dtype == np.uint32 and not empty.any()


@pytest.mark.parametrize("name", IMAGES)
def test_shape_seeds_on_reference_maps_tiled_equals_untiled(vectors, name):
    maps = load_maps(vectors, name)
    untiled = ais_from_maps(maps, seeds="shape", min_size=20)
    assert untiled.max() > 10
    tiled = ais_from_maps(maps, seeds="shape", min_size=20, tile_shape=(128, 128), halo=(64, 64))
    np.testing.assert_array_equal(tiled, untiled)
