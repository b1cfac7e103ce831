"""`pathosam embed`: embeddings from the command line into a reusable zarr cache."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pathosam.cli import main
from pathosam.image import read_image

from .conftest import read_png


@pytest.fixture(scope="module")
def png(vectors, tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "tile.png"
    Image.fromarray(read_png(vectors / "inputs/gbm40_512.png")[:200, :300]).save(path)
    return path


def test_embed_writes_a_cache_the_library_reuses(png, tiny_files, tiny_model, tmp_path, capsys):
    out = tmp_path / "emb.zarr"
    args = ["embed", str(png), "-o", str(out), "-c", str(tiny_files["tiny_sam.pt"]), "--tile-shape", "128",
            "--halo", "32", "-d", "cpu", "-q"]
    assert main(args) == 0
    assert "embeddings of 6 tiles (200x300 px)" in capsys.readouterr().out
    import pathosam

    model = pathosam.load_model(tiny_files["tiny_sam.pt"], device="cpu")
    cached = model.embed(read_png(png), tile_shape=(128, 128), halo=(32, 32), cache=out, progress=False)
    fresh = model.embed(read_png(png), tile_shape=(128, 128), halo=(32, 32), progress=False)
    assert np.abs(np.asarray(cached.features) - fresh.features).max() <= 1e-5
    # a second run with other tiling is refused with a clear message, exit status 1
    args[args.index("128")] = "256"
    assert main(args) == 1
    assert "different tile_shape" in capsys.readouterr().err


def test_embed_errors(tmp_path, tiny_files, capsys):
    assert main(["embed", str(tmp_path / "missing.png"), "-o", str(tmp_path / "e.zarr")]) == 1
    assert "image not found" in capsys.readouterr().err
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    assert main(["embed", str(junk), "-o", str(tmp_path / "e.zarr"), "-c", str(tiny_files["tiny_sam.pt"])]) == 1
    assert "cannot read this file as an image" in capsys.readouterr().err
    assert main(["embed", str(junk), "-o", str(tmp_path / "e.zarr"), "--halo", "8"]) == 2
    assert main(["embed", str(junk), "-o", "x", "--tile-shape", "abc"]) == 2


def test_read_image_moves_tiff_channels_last(tmp_path):
    import tifffile

    arr = np.random.default_rng(0).integers(0, 255, (3, 20, 30), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "chw.tif", arr, photometric="minisblack")
    assert read_image(tmp_path / "chw.tif").shape == (20, 30, 3)
