"""Embedding computation details: batching, normalisation, and the zarr cache."""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import read_png


@pytest.fixture(scope="module")
def image(vectors):
    return read_png(vectors / "inputs/gbm40_512.png")[:300, :420]


def test_batching_does_not_change_tile_embeddings(tiny_model, image):
    one = tiny_model.embed(image, tile_shape=(192, 192), halo=(32, 32), batch_size=1, progress=False)
    three = tiny_model.embed(image, tile_shape=(192, 192), halo=(32, 32), batch_size=3, progress=False)
    assert len(one) == 6 and one.tiled
    assert np.abs(one.features - three.features).max() <= 1e-5


def test_normalization_modes_differ_for_uint8(tiny_model, image):
    a = tiny_model.embed(image, progress=False)
    b = tiny_model.embed(image, normalization="minmax", progress=False)
    assert a.normalization == "none" and b.normalization == "minmax"
    assert np.abs(a.features - b.features).max() > 1e-3


def test_zarr_cache_round_trip_and_refusal(tiny_model, image, tmp_path):
    path = tmp_path / "emb.zarr"
    first = tiny_model.embed(image, tile_shape=(192, 192), halo=(32, 32), cache=path, progress=False)
    assert path.exists() and not (tmp_path / "emb.zarr.partial").exists()
    again = tiny_model.embed(image, tile_shape=(192, 192), halo=(32, 32), cache=path, progress=False)
    np.testing.assert_array_equal(np.asarray(again.features), first.features)
    assert again.input_sizes == first.input_sizes and again.tiles == first.tiles
    # refusals: other image, other tiling, other normalisation
    other = image.copy()
    other[0, 0, 0] ^= 1
    with pytest.raises(ValueError, match="different image"):
        tiny_model.embed(other, tile_shape=(192, 192), halo=(32, 32), cache=path, progress=False)
    with pytest.raises(ValueError, match="different tile_shape"):
        tiny_model.embed(image, tile_shape=(256, 256), halo=(32, 32), cache=path, progress=False)
    with pytest.raises(ValueError, match="different normalization"):
        tiny_model.embed(image, tile_shape=(192, 192), halo=(32, 32), normalization="minmax", cache=path,
                         progress=False)


def test_cache_of_another_model_is_refused(tiny_files, image, tmp_path):
    import pathosam

    a = pathosam.load_model(tiny_files["tiny_sam.pt"], device="cpu")
    b = pathosam.load_model(tiny_files["tiny_training_checkpoint.pt"], device="cpu")
    path = tmp_path / "emb.zarr"
    a.embed(image, cache=path, progress=False)
    with pytest.raises(ValueError, match="different model"):
        b.embed(image, cache=path, progress=False)


def test_not_a_cache_is_explained(tiny_model, image, tmp_path):
    bogus = tmp_path / "bogus.zarr"
    bogus.mkdir()
    with pytest.raises(ValueError, match="not a pathosam embedding cache"):
        tiny_model.embed(image, cache=bogus, progress=False)


def test_bad_arguments(tiny_model, image):
    with pytest.raises(ValueError, match="batch_size"):
        tiny_model.embed(image, batch_size=0)
    with pytest.raises(ValueError, match="halo given without tile_shape"):
        tiny_model.embed(image, halo=(8, 8))
