"""Our model reproduces the reference (micro-sam 1.8.14) outputs within the stated tolerances.

The reference vectors were computed with micro-sam's per-channel min-max input stretch, so
these tests embed with ``normalization="minmax"``. Tolerances: vectors/README.md.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import tifffile

import pathosam
from pathosam.image import prepare_input, to_rgb_uint8
from pathosam.tiling import tile_slices

from .conftest import decode_maps, read_png

INPUTS = ["monuseg_512", "gbm40_512", "monuseg_448x512"]
MAP_TOL = 1e-4


@pytest.fixture(scope="module")
def embeddings(vectors, tiny_model):
    return {k: tiny_model.embed(read_png(vectors / f"inputs/{k}.png"), normalization="minmax") for k in INPUTS}


def _stored_embedding(vectors, k) -> pathosam.ImageEmbeddings:
    ref = np.load(vectors / f"model/embeddings_{k}.npz")
    size = tuple(int(x) for x in ref["original_size"])
    return pathosam.ImageEmbeddings(ref["features"], [tuple(int(x) for x in ref["input_size"])], [size], size)


def test_preprocessing_chain_is_exact(vectors, tiny_model):
    d = np.load(vectors / "model/preprocess_monuseg_448x512.npz")
    image = read_png(vectors / "inputs/monuseg_448x512.png")
    rgb = to_rgb_uint8(image, "minmax")
    np.testing.assert_array_equal(rgb, d["to_image"])
    tensor, input_size, original_size = prepare_input(rgb)
    np.testing.assert_array_equal(tensor.permute(1, 2, 0).numpy().astype(np.uint8), d["resized"])
    assert input_size == tuple(d["input_size"]) and original_size == tuple(d["original_size"])
    x = tiny_model.sam.preprocess(tensor[None]).numpy()
    assert np.abs(x - d["input_tensor"]).max() <= 1e-5


@pytest.mark.parametrize("k", INPUTS)
def test_image_embeddings(vectors, embeddings, k):
    ref = np.load(vectors / f"model/embeddings_{k}.npz")
    emb = embeddings[k]
    assert emb.input_sizes[0] == tuple(ref["input_size"]) and emb.original_sizes[0] == tuple(ref["original_size"])
    assert np.abs(emb.features - ref["features"]).max() <= 1e-4


@pytest.mark.parametrize("k", INPUTS)
def test_instance_maps_reference_mode(vectors, tiny_model, embeddings, k):
    maps = np.load(vectors / f"model/maps_{k}.npz")
    ours = tiny_model.instance_maps(embeddings[k])
    assert ours.shape == maps["transposed_train"].shape and ours.dtype == np.float32
    assert np.abs(ours - decode_maps(maps["transposed_train"])).max() <= MAP_TOL


def test_instance_maps_running_statistics(vectors, tiny_model, embeddings):
    maps = np.load(vectors / "model/maps_gbm40_512.npz")
    ours = tiny_model.instance_maps(embeddings["gbm40_512"], bn_mode="running")
    assert np.abs(ours - decode_maps(maps["transposed_eval"])).max() <= MAP_TOL


def test_interpolation_decoder(vectors, tiny_files, embeddings):
    model = pathosam.load_model(tiny_files["tiny_sam.pt"], decoder=tiny_files["tiny_decoder_interp_fp16.pt"], device="cpu")
    maps = np.load(vectors / "model/maps_monuseg_448x512.npz")
    ours = model.instance_maps(embeddings["monuseg_448x512"])
    assert np.abs(ours - decode_maps(maps["interp_train"])).max() <= MAP_TOL


def test_semantic_head(vectors, tiny_model, embeddings):
    maps = np.load(vectors / "model/maps_gbm40_512.npz")
    ours = tiny_model.semantic_maps(embeddings["gbm40_512"])
    assert ours.shape == (6, 512, 512)
    assert np.abs(ours - decode_maps(maps["semantic_train"])).max() <= MAP_TOL
    assert (ours.argmax(0) == maps["semantic_argmax"]).mean() >= 0.999


def _mask_iou(a, b):
    union = (a | b).sum()
    return 1.0 if union == 0 else (a & b).sum() / union


@pytest.mark.parametrize("k", INPUTS)
def test_prompted_masks(vectors, tiny_model, k):
    emb = _stored_embedding(vectors, k)
    stored = np.load(vectors / f"model/prompts_{k}.npz")
    cases = json.loads((vectors / "model/model_vectors.json").read_text())["prompts"][k]["cases"]
    checked = 0
    for case, info in cases.items():
        if case.startswith("msam"):
            continue  # micro-sam wrappers: the interactive issue
        kw = {}
        if "point_coords" in info:
            kw.update(points=info["point_coords"], point_labels=info["point_labels"])
        if "box" in info:
            kw["box"] = info["box"]
        if "mask_input_from" in info:
            kw["mask_input"] = stored[info["mask_input_from"] + ".low_res_logits"]
        masks, ious, logits = tiny_model.predict(emb, multimask=info["multimask_output"], **kw)
        assert masks.shape == stored[case + ".masks"].shape, case
        assert np.abs(logits - stored[case + ".low_res_logits"]).max() <= 1e-3, case
        assert np.abs(ious - stored[case + ".iou_predictions"]).max() <= 1e-4, case
        for ours, ref in zip(masks, stored[case + ".masks"]):
            assert _mask_iou(ours, ref) >= 0.999, case
        if "best_index" in info:
            assert int(np.argmax(ious)) == info["best_index"], case
        checked += 1
    assert checked == 8


@pytest.fixture(scope="module")
def tiled(vectors, data_dir, tiny_model):
    info = json.loads((vectors / "model/model_vectors.json").read_text())["tiled"]
    image = tifffile.imread(data_dir / "monuseg/images/TCGA-B0-5698-01Z-00-DX1.tif")
    emb = tiny_model.embed(image, tile_shape=(384, 384), halo=(64, 64), normalization="minmax", batch_size=3)
    return info, emb, np.load(vectors / "model/tiled_monuseg_1000.npz")


def test_tile_grid_matches_reference(tiled):
    info, emb, _ = tiled
    assert len(emb.tiles) == len(info["tiles"]) == 9
    for tile, ref in zip(emb.tiles, info["tiles"]):
        assert [list(b) for b in tile.inner] == ref["inner_block"]
        assert [list(b) for b in tile.outer] == ref["outer_block"]
        assert [list(b) for b in tile.inner_local] == ref["inner_block_local"]
        assert list(emb.input_sizes[tile.index]) == ref["input_size"]
        assert list(emb.original_sizes[tile.index]) == ref["original_size"]


def test_tile_embeddings(tiled, vectors):
    _, emb, ref = tiled
    assert np.abs(emb.features[:, ::8] - ref["tile_embeddings_every8th_channel"]).max() <= 1e-4
    assert np.abs(emb.features[8:9] - ref["tile_embedding_8"]).max() <= 1e-4
    # tiles 1 and 4 are the untiled crops of the model inputs
    for i, k in [(1, "monuseg_448x512"), (4, "monuseg_512")]:
        stored = np.load(vectors / f"model/embeddings_{k}.npz")["features"]
        assert np.abs(emb.features[i : i + 1] - stored).max() <= 1e-4


def _subset(emb, idx):
    return dataclasses.replace(
        emb,
        features=emb.features[idx],
        input_sizes=[emb.input_sizes[i] for i in idx],
        original_sizes=[emb.original_sizes[i] for i in idx],
        tiles=[emb.tiles[i] for i in idx],
    )


def test_stitched_tile_maps_and_batching(tiled, tiny_model):
    """Inner blocks of a border tile and the centre tile equal the reference's stitched maps;
    computing the two tiles in one batch gives the same maps as one by one (per-tile BN)."""
    _, emb, ref = tiled
    sub = _subset(emb, [4, 8])
    batched = tiny_model.instance_maps(sub, batch_size=2)
    single = tiny_model.instance_maps(sub, batch_size=1)
    expected = decode_maps(ref["maps_bs1"])
    for t in sub.tiles:
        sl = (slice(None), *tile_slices(t.inner))
        assert np.abs(batched[sl] - expected[sl]).max() <= MAP_TOL
    assert np.abs(batched - single).max() <= 1e-5
