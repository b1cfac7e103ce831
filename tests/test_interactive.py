"""Prompted segmentation (pathosam.interactive) against the reference vectors and by construction.

Untiled: every stored ``SamPredictor`` and micro-sam ``segment_from_*`` case of
``vectors/model/prompts_<k>.npz`` through :func:`segment_prompt` (tolerances of
vectors/README.md: logits 1e-3, IoU predictions 1e-4, masks IoU >= 0.999, best index exact).
Tiled: the vectors hold no tiled prompt outputs, but tiles 1 and 4 of the tiled MoNuSeg case are
bitwise the untiled ``monuseg_448x512`` / ``monuseg_512`` crops, so the same cases shifted into
full-image coordinates must give the stored outputs pasted at the tile's outer offset.
"""

from __future__ import annotations

import json
import threading
import time
import warnings

import numpy as np
import pytest

import pathosam
from pathosam.embedding_cache import EmbeddingCache
from pathosam.interactive import (
    box_from_mask,
    logits_from_mask,
    segment_prompt,
    select_tile,
)
from pathosam.interactive_session import InteractiveSession
from pathosam.tiling import tile_grid, tile_slices

from .conftest import read_png

INPUTS = ["monuseg_512", "gbm40_512", "monuseg_448x512"]
L_IN = np.float32(np.log(0.999 / (1 - 0.999)))
L_OUT = np.float32(np.log(0.001 / 0.999))


def _mask_iou(a, b):
    union = (a | b).sum()
    return 1.0 if union == 0 else (a & b).sum() / union


def _stored_embedding(vectors, k) -> pathosam.ImageEmbeddings:
    ref = np.load(vectors / f"model/embeddings_{k}.npz")
    size = tuple(int(x) for x in ref["original_size"])
    return pathosam.ImageEmbeddings(ref["features"], [tuple(int(x) for x in ref["input_size"])], [size], size)


@pytest.fixture(scope="module")
def cases(vectors):
    return json.loads((vectors / "model/model_vectors.json").read_text())["prompts"]


def _kwargs(info, stored, shift=(0.0, 0.0)):
    """Prompt kwargs of a stored case in our API (x, y); ``shift`` = (dx, dy) added."""
    dx, dy = shift
    kw = {}
    if "point_coords" in info:
        kw.update(points=np.asarray(info["point_coords"], float) + [dx, dy], point_labels=info["point_labels"])
    if "points_yx" in info:
        kw.update(points=np.asarray(info["points_yx"], float)[:, ::-1] + [dx, dy],
                  point_labels=info.get("labels", [1, 0][: len(info["points_yx"])]))
    if "box" in info:
        kw["box"] = np.asarray(info["box"], float) + [dx, dy, dx, dy]
    if "box_yxyx" in info:
        y0, x0, y1, x1 = info["box_yxyx"]
        kw["box"] = np.array([x0 + dx, y0 + dy, x1 + dx, y1 + dy], float)
    if "mask_input_from" in info:
        kw["mask_input"] = stored[info["mask_input_from"] + ".low_res_logits"]
    return kw


def _check(res, stored, case, ref_case=None, index=None, block=None):
    """Compare a result (optionally cropped to ``block``) with the stored outputs of ``ref_case``."""
    ref_case = ref_case or case
    masks = res.masks if block is None else res.masks[(slice(None), *tile_slices(block))]
    ref_masks = stored[case + ".masks"]
    assert masks.shape == ref_masks.shape, case
    for ours, ref in zip(masks, ref_masks):
        assert _mask_iou(ours, ref) >= 0.999, case
    if ref_case + ".low_res_logits" in stored:
        logits, ious = stored[ref_case + ".low_res_logits"], stored[ref_case + ".iou_predictions"]
        if index is not None:
            logits, ious = logits[index : index + 1], ious[index : index + 1]
        assert np.abs(res.logits - logits).max() <= 1e-3, case
        assert np.abs(res.ious - ious).max() <= 1e-4, case


def _run_cases(model, emb, stored, cases_k, shift=(0, 0), tile=None, block=None):
    checked = 0
    for case, info in cases_k.items():
        if case.startswith("msam_segment_from_mask"):
            continue
        kw = _kwargs(info, stored, shift)
        ref_case, index = case, None
        if case.startswith("msam"):
            multimask = None  # micro-sam's rule
            if "best_index" in info:  # single positive point: best of 3
                index = info["best_index"]
                ref_case = "point_alt_multimask" if case.endswith("_alt") else "point_pos_multimask"
            else:
                ref_case = info["equals"]
        else:
            multimask = info["multimask_output"]
        if tile is not None and "mask_input" in kw:
            kw["tile"] = tile
        res = segment_prompt(model, emb, multimask=multimask, **kw)
        assert res.tile == tile, case
        _check(res, stored, case, ref_case, index, block)
        if index is not None:
            assert res.best_index == index and res.masks.shape[0] == 1, case
        if block is not None:  # nothing outside the tile's outer block
            outside = res.masks.copy()
            outside[(slice(None), *tile_slices(block))] = False
            assert not outside.any(), case
        checked += 1
    return checked


@pytest.mark.parametrize("k", INPUTS)
def test_prompt_cases_untiled(vectors, tiny_model, cases, k):
    stored = np.load(vectors / f"model/prompts_{k}.npz")
    emb = _stored_embedding(vectors, k)
    assert _run_cases(tiny_model, emb, stored, cases[k]["cases"]) == 13


@pytest.mark.parametrize("k", INPUTS)
def test_mask_prompt_untiled(vectors, tiny_model, k):
    stored = np.load(vectors / f"model/prompts_{k}.npz")
    emb = _stored_embedding(vectors, k)
    mask = stored["msam_segment_from_mask.input_mask"]
    np.testing.assert_array_equal(box_from_mask(mask), stored["msam_segment_from_mask.derived_box_xyxy"])
    np.testing.assert_array_equal(logits_from_mask(mask), stored["msam_segment_from_mask.derived_mask_input"])
    res = segment_prompt(tiny_model, emb, mask=mask)
    _check(res, stored, "msam_segment_from_mask")


# ---------------------------------------------------------------------------- tiled
@pytest.fixture(scope="module")
def tiled_emb(vectors):
    """The reference's tiled MoNuSeg embeddings: full features for tiles 1, 4 (= the untiled
    crops) and 8; the other tiles hold their stored every-8th channel repeated (not used for
    value checks)."""
    info = json.loads((vectors / "model/model_vectors.json").read_text())["tiled"]
    ref = np.load(vectors / "model/tiled_monuseg_1000.npz")
    feats = np.repeat(ref["tile_embeddings_every8th_channel"], 8, axis=1)
    feats[1] = np.load(vectors / "model/embeddings_monuseg_448x512.npz")["features"][0]
    feats[4] = np.load(vectors / "model/embeddings_monuseg_512.npz")["features"][0]
    feats[8] = ref["tile_embedding_8"][0]
    tiles = tile_grid((1000, 1000), (384, 384), (64, 64))
    for t, r in zip(tiles, info["tiles"]):
        assert [list(b) for b in t.outer] == r["outer_block"]
    return pathosam.ImageEmbeddings(
        feats, [tuple(t["input_size"]) for t in info["tiles"]], [tuple(t["original_size"]) for t in info["tiles"]],
        (1000, 1000), (384, 384), (64, 64), tiles,
    )


@pytest.mark.parametrize(("k", "tile"), [("monuseg_512", 4), ("monuseg_448x512", 1)])
def test_prompt_cases_tiled(vectors, tiny_model, cases, tiled_emb, k, tile):
    stored = np.load(vectors / f"model/prompts_{k}.npz")
    block = tiled_emb.tiles[tile].outer
    (r0, c0), _ = block
    assert _run_cases(tiny_model, tiled_emb, stored, cases[k]["cases"], (c0, r0), tile, block) == 13
    # mask prompt: full-size mask -> cropped to the tile, box and logits derived there
    full = np.zeros((1000, 1000), bool)
    full[tile_slices(block)] = stored["msam_segment_from_mask.input_mask"]
    res = segment_prompt(tiny_model, tiled_emb, mask=full)
    assert res.tile == tile and res.block == block
    _check(res, stored, "msam_segment_from_mask", block=block)


def test_tiled_prompt_equals_tile_prediction(tiny_model, tiled_emb):
    """Bottom-right border tile (296 x 296 outer block): segment_prompt = predict on the tile
    in its own coordinates, pasted at the outer offset."""
    t = tiled_emb.tiles[8]
    (r0, c0), (r1, c1) = t.outer
    pts, lab = np.array([[900.5, 850.0], [880.0, 870.25]]), [1, 0]
    box = np.array([860.0, 820.0, 940.0, 890.0])
    res = segment_prompt(tiny_model, tiled_emb, pts, lab, box=box)
    masks, ious, logits = tiny_model.predict(tiled_emb, pts - [c0, r0], lab, box - [c0, r0, c0, r0], index=8)
    assert res.tile == 8 and res.masks.shape == (1, 1000, 1000)
    np.testing.assert_array_equal(res.masks[:, r0:r1, c0:c1], masks)
    assert res.masks.sum() == masks.sum()
    np.testing.assert_array_equal(res.logits, logits)
    np.testing.assert_array_equal(res.ious, ious)
    # feeding the logits back needs the tile
    with pytest.raises(ValueError, match="tile"):
        segment_prompt(tiny_model, tiled_emb, mask_input=res.mask_input)
    again = segment_prompt(tiny_model, tiled_emb, mask_input=res.mask_input, tile=res.tile)
    ref = tiny_model.predict(tiled_emb, mask_input=logits, index=8)
    np.testing.assert_array_equal(again.logits, ref[2])


class _Recorder:
    """Stands in for the model: records what ``predict`` receives, returns empty outputs."""

    def __init__(self):
        self.calls = []

    def predict(self, emb, points=None, point_labels=None, box=None, mask_input=None, multimask=False, index=0):
        self.calls.append(dict(points=points, labels=point_labels, box=box, mask_input=mask_input,
                               multimask=multimask, index=index))
        h, w = emb.original_sizes[index]
        c = 3 if multimask else 1
        return np.ones((c, h, w), bool), np.arange(c, dtype=np.float32), np.zeros((c, 256, 256), np.float32)


@pytest.fixture(scope="module")
def grid_emb():
    tiles = tile_grid((1000, 1000), (384, 384), (64, 64))
    sizes = [t.outer_shape for t in tiles]
    return pathosam.ImageEmbeddings(np.zeros((9, 1, 1, 1), np.float32), sizes, sizes, (1000, 1000), (384, 384),
                                    (64, 64), tiles)


def test_tile_selection_at_inner_borders(grid_emb):
    # the mean point is rounded half to even, then the tile owning that pixel is chosen
    assert select_tile(grid_emb, [(10, 383.4)]) == 0
    assert select_tile(grid_emb, [(10, 383.5)]) == 3  # 383.5 -> 384: second tile row
    assert select_tile(grid_emb, [(10, 382.5)]) == 0  # 382.5 -> 382
    assert select_tile(grid_emb, [(10, 383), (10, 384)]) == 3
    assert select_tile(grid_emb, [(767.6, 767.5)]) == 8  # 767.5 -> 768 (half to even)
    assert select_tile(grid_emb, [(766.5, 767.6)]) == 7  # 766.5 -> 766
    assert select_tile(grid_emb, [(999, 999), (1200, 1300)]) == 8  # anchor clipped into the image
    assert select_tile(grid_emb, box=[0, 380, 10, 387]) == 3  # centre row 383.5 -> 384
    assert select_tile(grid_emb, box=[0, 380, 10, 386]) == 0  # centre row 383
    m = np.zeros((1000, 1000), bool)
    m[380:388, 766:770] = True  # centroid (383.5, 767.5) -> (384, 768)
    assert select_tile(grid_emb, mask=m) == 5
    # the mask wins over a box, the box over points
    assert select_tile(grid_emb, points=[(10, 10)], box=[500, 500, 510, 510], mask=m) == 5
    assert select_tile(grid_emb, points=[(10, 10)], box=[500, 500, 510, 510]) == 4
    assert select_tile(grid_emb.__class__(np.zeros(1), [(1, 1)], [(1, 1)], (1, 1)), [(0, 0)]) is None


def test_tiled_prompt_shifting_dropping_clipping(grid_emb):
    rec = _Recorder()
    # tile 4: inner rows/cols 384:768, outer 320:832
    with pytest.warns(UserWarning, match="1 of 3 points"):
        res = segment_prompt(rec, grid_emb, [(400, 500), (600, 700), (900, 300)], [1, 0, 1])
    call = rec.calls[-1]
    assert call["index"] == 4 and res.tile == 4 and res.block == ((320, 320), (832, 832))
    np.testing.assert_array_equal(call["points"], [[80, 180], [280, 380]])
    np.testing.assert_array_equal(call["labels"], [1, 0])
    assert res.masks.shape == (1, 1000, 1000) and res.masks.sum() == 512 * 512
    assert res.masks[0, 320:832, 320:832].all()
    # box partly outside the outer block is clipped to it
    segment_prompt(rec, grid_emb, box=[300, 350, 860, 800])
    np.testing.assert_array_equal(rec.calls[-1]["box"], [0, 30, 512, 480])
    # a point outside the box's tile is dropped; the box decides
    with pytest.warns(UserWarning):
        segment_prompt(rec, grid_emb, [(100, 100)], [0], box=[400, 400, 500, 500])
    assert rec.calls[-1]["points"] is None and rec.calls[-1]["index"] == 4
    # all points dropped and nothing else left
    with pytest.raises(ValueError, match="no prompt left"), pytest.warns(UserWarning):
        segment_prompt(rec, grid_emb, [(100, 100)], [1], tile=8)


def test_mask_prompt_conversion_by_hand():
    # non-square mask (256 x 512 -> 128 x 256), aligned 10 x 20 block: after the 2x antialiased
    # downscale the border rows/cols get 1/8 or 7/8, so the block becomes rows 5:10, cols 20:30
    m = np.zeros((256, 512), bool)
    m[10:20, 40:60] = True
    expected = np.full((1, 256, 256), L_OUT, np.float32)
    expected[0, 5:10, 20:30] = L_IN
    np.testing.assert_array_equal(logits_from_mask(m), expected)
    assert L_IN == np.float32(6.906755) and L_OUT == -L_IN
    # 256 x 256 passes unchanged; labels other than 0 count as object
    m2 = np.zeros((256, 256), np.uint8)
    m2[3:5, 7:9] = 7
    out = logits_from_mask(m2)
    assert (out[0, 3:5, 7:9] == L_IN).all() and (out == L_IN).sum() == 4
    # a single pixel vanishes under a 4x downscale (weight < 0.5)
    m3 = np.zeros((1024, 1024), bool)
    m3[500, 500] = True
    assert (logits_from_mask(m3) == L_OUT).all()
    # boxes: exclusive max, extension in pixels or as a fraction, clipped
    np.testing.assert_array_equal(box_from_mask(m), [40, 10, 60, 20])
    np.testing.assert_array_equal(box_from_mask(m, 2), [38, 8, 62, 22])
    np.testing.assert_array_equal(box_from_mask(m, 0.1), [38, 9, 62, 21])
    np.testing.assert_array_equal(box_from_mask(m, 15), [25, 0, 75, 35])
    with pytest.raises(ValueError, match="empty"):
        box_from_mask(np.zeros((4, 4)))


def test_mask_prompt_options(vectors, tiny_model):
    stored = np.load(vectors / "model/prompts_gbm40_512.npz")
    emb = _stored_embedding(vectors, "gbm40_512")
    mask = stored["msam_segment_from_mask.input_mask"]
    box = stored["msam_segment_from_mask.derived_box_xyxy"]
    logits = stored["msam_segment_from_mask.derived_mask_input"]
    for kw, ref in [
        (dict(use_box=False), dict(mask_input=logits)),
        (dict(use_mask=False), dict(box=box)),
        (dict(box_extension=3), dict(box=box + [-3, -3, 3, 3], mask_input=logits)),
        (dict(box=[200, 230, 240, 270]), dict(box=[200, 230, 240, 270], mask_input=logits)),
    ]:
        res = segment_prompt(tiny_model, emb, mask=mask, **kw)
        np.testing.assert_array_equal(res.logits, tiny_model.predict(emb, **ref)[2])
    with pytest.raises(ValueError, match="either"):
        segment_prompt(tiny_model, emb, mask=mask, mask_input=logits)
    with pytest.raises(ValueError, match="no prompt left"):
        segment_prompt(tiny_model, emb, mask=mask, use_box=False, use_mask=False)
    with pytest.raises(ValueError, match="shape"):
        segment_prompt(tiny_model, emb, mask=mask[:10])
    with pytest.raises(ValueError, match="at least one prompt"):
        segment_prompt(tiny_model, emb)


def test_single_point_multimask_rule(vectors, tiny_model):
    rec = _Recorder()
    emb = _stored_embedding(vectors, "gbm40_512")
    segment_prompt(rec, emb, [(10, 10)])  # labels default to positive
    assert rec.calls[-1]["multimask"] is True
    res = segment_prompt(rec, emb, [(10, 10)], [1])
    assert res.masks.shape[0] == 1 and res.best_index == 2 and res.ious[0] == 2
    res = segment_prompt(rec, emb, [(10, 10)], [1], multimask=True)
    assert res.masks.shape[0] == 3 and res.best_index is None and res.best == 2 and res.iou == 2
    for kw in [dict(points=[(10, 10)], point_labels=[0]), dict(points=[(1, 1), (2, 2)], point_labels=[1, 1]),
               dict(points=[(10, 10)], point_labels=[1], box=[0, 0, 20, 20]),
               dict(points=[(10, 10)], point_labels=[1], mask_input=np.zeros((1, 256, 256))),
               dict(points=[(10, 10)], point_labels=[1], multimask=False)]:
        res = segment_prompt(rec, emb, **kw)
        assert rec.calls[-1]["multimask"] is False and res.masks.shape[0] == 1 and res.best_index is None, kw
    with pytest.raises(ValueError, match="point_labels"):
        segment_prompt(rec, emb, [(10, 10)], [2])


# ---------------------------------------------------------------------------- session
@pytest.fixture()
def counted(tiny_model, monkeypatch):
    """tiny_model with its encoder calls counted."""
    calls = []
    encode = tiny_model._encode

    def counting(batch):
        calls.append(len(batch))
        return encode(batch)

    monkeypatch.setattr(tiny_model, "_encode", counting)
    return tiny_model, calls


def test_session_embeds_once_and_undoes(vectors, counted):
    model, calls = counted
    image = read_png(vectors / "inputs/gbm40_512.png")
    s = InteractiveSession(model, image, normalization="minmax")
    assert calls == [1]
    emb = s.embeddings
    first = s.add_point(223, 252)
    assert first.best_index is not None  # single positive point: best of 3
    second = s.add_point(238, 215, positive=False)
    third = s.add_points([(230, 260)], [1])
    assert calls == [1]  # prompts never re-run the encoder
    np.testing.assert_array_equal(s.points, [[223, 252], [238, 215], [230, 260]])
    np.testing.assert_array_equal(s.labels, [1, 0, 1])
    ref = segment_prompt(model, emb, [(223, 252), (238, 215)], [1, 0])
    np.testing.assert_array_equal(second.masks, ref.masks)
    assert third.masks.shape == (1, 512, 512)
    assert s.undo() is second and len(s.points) == 2
    assert s.undo() is first and len(s.points) == 1
    np.testing.assert_array_equal(s.mask, first.mask)
    b = s.set_box([200, 230, 245, 275])
    ref = segment_prompt(model, emb, [(223, 252)], [1], box=[200, 230, 245, 275])
    np.testing.assert_array_equal(b.masks, ref.masks)
    s.reset()
    assert s.result is None and s.mask is None and len(s.points) == 0 and s.box is None
    assert s.undo() is None
    assert calls == [1]


def test_session_feeds_logits(vectors, tiny_model, tiled_emb):
    emb = _stored_embedding(vectors, "gbm40_512")
    s = InteractiveSession(tiny_model, embeddings=emb, feed_logits=True)
    first = s.add_point(223, 252)
    second = s.add_point(238, 215, positive=False)
    ref = segment_prompt(tiny_model, emb, [(223, 252), (238, 215)], [1, 0], mask_input=first.mask_input)
    np.testing.assert_array_equal(second.logits, ref.logits)
    # a mask prompt then a point: the previous logits replace the mask's own
    s.reset()
    mask = np.load(vectors / "model/prompts_gbm40_512.npz")["msam_segment_from_mask.input_mask"]
    m = s.set_mask(mask)
    np.testing.assert_array_equal(m.logits, segment_prompt(tiny_model, emb, mask=mask).logits)
    p = s.add_point(223, 252)
    ref = segment_prompt(tiny_model, emb, [(223, 252)], [1], mask=mask, use_mask=False, mask_input=m.mask_input)
    np.testing.assert_array_equal(p.logits, ref.logits)
    # tiled: logits are fed only while the prompts stay in the same tile
    t = InteractiveSession(tiny_model, embeddings=tiled_emb, feed_logits=True)
    a = t.add_point(600, 600)
    b = t.add_point(610, 590, positive=False)
    assert a.tile == b.tile == 4
    ref = segment_prompt(tiny_model, tiled_emb, [(600, 600), (610, 590)], [1, 0], mask_input=a.mask_input, tile=4)
    np.testing.assert_array_equal(b.logits, ref.logits)
    with pytest.warns(UserWarning, match="2 of 5 points"):  # the mean moves to tile 8: no feedback
        c = t.add_points([(950, 950), (960, 960), (970, 970)], [1, 1, 1])
    assert c.tile == 8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = segment_prompt(tiny_model, tiled_emb, t.points, t.labels)
    np.testing.assert_array_equal(c.logits, ref.logits)


# ---------------------------------------------------------------------------- cache
class _FakeModel:
    model_id = "fake"

    def __init__(self, delay=0.0):
        self.calls = 0
        self.delay = delay

    def embed(self, image, tile_shape=None, halo=None, normalization="none", progress=False):
        self.calls += 1
        time.sleep(self.delay)
        return pathosam.ImageEmbeddings(np.zeros((1, 1)), [(1, 1)], [(1, 1)], image.shape[:2], tile_shape, halo)


def test_cache_lru_eviction_and_keys():
    model = _FakeModel()
    cache = EmbeddingCache(model, max_entries=2)
    rng = np.random.default_rng(0)
    a, b, c = (rng.integers(0, 255, (32, 40, 3), dtype=np.uint8) for _ in range(3))
    ea = cache.get(a)
    assert cache.get(a.copy()) is ea and model.calls == 1  # content, not identity
    cache.get(b)
    cache.get(a)  # refresh a: b is now least recently used
    cache.get(c)  # evicts b
    assert model.calls == 3 and len(cache) == 2
    assert cache.key(a) in cache and cache.key(c) in cache and cache.key(b) not in cache
    assert cache.keys() == [cache.key(a), cache.key(c)]
    cache.get(b)
    assert model.calls == 4 and cache.key(a) not in cache
    assert (cache.hits, cache.misses) == (2, 4)
    # tiling, normalisation, dtype and one changed pixel are part of the key
    keys = {cache.key(c), cache.key(c, (16, 16)), cache.key(c, (16, 16), (4, 4)), cache.key(c, normalization="minmax"),
            cache.key(c.astype(np.uint16))}
    c2 = c.copy()
    c2[5, 5, 1] ^= 1
    keys.add(cache.key(c2))
    assert len(keys) == 6
    assert cache.key(c, (16, 16)) == cache.key(c, (16, 16), (0, 0))
    assert cache.key(image_hash="abc") == cache.key(image_hash="abc") != cache.key(c)
    other = EmbeddingCache(_FakeModel(), 2)
    other.model.model_id = "other"
    assert other.key(c) != cache.key(c)
    with pytest.raises(ValueError):
        EmbeddingCache(model, max_entries=0)
    cache.clear()
    assert len(cache) == 0


def test_cache_concurrent_requests_embed_once():
    model = _FakeModel(delay=0.2)
    cache = EmbeddingCache(model, max_entries=2)
    image = np.ones((8, 8), np.uint8)
    out = []
    threads = [threading.Thread(target=lambda: out.append(cache.get(image))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert model.calls == 1 and len(out) == 4 and all(o is out[0] for o in out)


def test_session_uses_cache(vectors, counted):
    model, calls = counted
    image = read_png(vectors / "inputs/gbm40_512.png")[:200, :300]
    cache = EmbeddingCache(model, max_entries=2)
    s1 = InteractiveSession(model, image, cache=cache)
    s2 = InteractiveSession(model, image.copy(), cache=cache)
    assert calls == [1] and s1.embeddings is s2.embeddings
    InteractiveSession(model, image, cache=cache, tile_shape=(200, 160), halo=(0, 16))
    assert len(calls) == 1 + 2 and len(cache) == 2
