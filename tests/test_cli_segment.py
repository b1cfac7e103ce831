"""`pathosam segment`: end to end with the tiny reference model, outputs and bad input."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pandas as pd
import pytest
import shapely.geometry
import tifffile
from PIL import Image

from pathosam.cli import main
from pathosam.io import read_label_tiff

from .conftest import read_png


@pytest.fixture(scope="module")
def rgb(vectors):
    return read_png(vectors / "inputs/gbm40_512.png")


def model_args(tiny_files, classes=False):
    args = ["-c", str(tiny_files["tiny_sam.pt"]), "--decoder", str(tiny_files["tiny_sam_decoder.pt"]), "-d", "cpu"]
    if classes:
        args += ["--classes", "--semantic-decoder", str(tiny_files["tiny_decoder_semantic_fp16.pt"])]
    return args


def check_outputs(out, name, image_shape, classes=False):
    labels = read_label_tiff(out / f"{name}.tif")
    assert labels.dtype == np.uint32 and labels.shape == image_shape
    n = int(labels.max())
    assert n > 0 and np.array_equal(np.unique(labels[labels > 0]), np.arange(1, n + 1))
    text = (out / f"{name}.geojson").read_text()
    assert "NaN" not in text and "Infinity" not in text
    features = json.loads(text)["features"]
    assert len(features) == n
    table = pd.read_parquet(out / f"{name}.parquet")
    csv = pd.read_csv(out / f"{name}.csv", keep_default_na=False)
    assert len(table) == len(csv) == n and list(table["id"]) == list(range(1, n + 1))
    np.testing.assert_allclose(csv["centroid_x"], table["centroid_x"], rtol=1e-9)
    rows, cols = np.nonzero(labels)
    ids = labels[rows, cols].astype(np.int64)
    area = np.bincount(ids, minlength=n + 1)[1:]
    np.testing.assert_array_equal(table["area"], area)
    # centroids agree with the label image (pixel centres at +0.5, x = col, y = row)
    np.testing.assert_allclose(table["centroid_x"], np.bincount(ids, cols + 0.5)[1:] / area, atol=1e-6)
    np.testing.assert_allclose(table["centroid_y"], np.bincount(ids, rows + 0.5)[1:] / area, atol=1e-6)
    for f, (_, row) in zip(features, table.iterrows()):
        assert f["properties"]["objectType"] == "detection"
        geom = shapely.geometry.shape(f["geometry"])
        assert geom.is_valid and geom.area == row["area"]  # exact pixel outlines, full-res pixels
        assert abs(geom.centroid.x - row["centroid_x"]) < 1e-6 and abs(geom.centroid.y - row["centroid_y"]) < 1e-6
        for ring in (f["geometry"]["coordinates"] if f["geometry"]["type"] == "Polygon"
                     else [r for p in f["geometry"]["coordinates"] for r in p]):
            assert ring[0] == ring[-1] and len(ring) >= 4
        if classes:
            assert f["properties"]["classification"]["name"] == row["class_name"]
    if classes:
        assert set(table["class_id"]) <= {1, 2, 3, 4, 5}
        assert ((table["class_probability"] > 0) & (table["class_probability"] <= 1)).all()
    return labels, table


def test_segment_tiled_with_classes(rgb, tiny_files, tmp_path, capsys):
    image = rgb[:, :300]  # 512 x 300 -> tiled with 256 + 64 halo: 2 tiles
    path = tmp_path / "in" / "tile one.png"
    path.parent.mkdir()
    Image.fromarray(image).save(path)
    out = tmp_path / "out"
    args = ["segment", str(path), "-o", str(out), *model_args(tiny_files, classes=True), "--tile-shape", "256",
            "--halo", "64", "--foreground-threshold", "0.3", "--formats", "tif,geojson,geojson.gz,csv,parquet", "-q"]
    assert main(args) == 0
    stdout = capsys.readouterr().out
    assert "tile one.png:" in stdout and "tiled 256x256+64" in stdout and "segmented 1 of 1 images" in stdout
    labels, table = check_outputs(out, "tile one", image.shape[:2], classes=True)
    assert json.loads(gzip.open(out / "tile one.geojson.gz").read())["features"][0]["geometry"]
    assert not list(out.glob("*partial*"))


def test_segment_seed_rules(rgb, tiny_files, tmp_path, capsys):
    path = tmp_path / "t.png"
    Image.fromarray(rgb[:384, :384]).save(path)
    # the tiny reference model's (random-weight) maps: no pixel passes both distance thresholds, so
    # the reference seeds find nothing, while the shape seeds find the blobs of its foreground
    for seeds in ("distance", "shape"):  # one 1024-input model pass each (--no-tiling)
        assert main(["segment", str(path), "-o", str(tmp_path / seeds), *model_args(tiny_files), "--no-tiling",
                     "--seeds", seeds, "-q"]) == 0
    assert read_label_tiff(tmp_path / "distance" / "t.tif").max() == 0
    labels, _ = check_outputs(tmp_path / "shape", "t", (384, 384))
    assert labels.max() > 20
    capsys.readouterr()
    assert main(["segment", str(path), "-o", str(tmp_path / "x"), *model_args(tiny_files), "--seeds", "blob"]) == 2
    assert "--seeds" in capsys.readouterr().err
    # bad values are refused before the model is loaded
    assert main(["segment", str(path), "-o", str(tmp_path / "x"), "-c", str(tmp_path / "no_such_model.pt"),
                 "--seeds", "shape", "--seed-dynamic", "0", "-q"]) == 2
    assert "seed_dynamic" in capsys.readouterr().err


def test_segment_batch_with_bad_files(rgb, tiny_files, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    small = rgb[:160, :200]
    Image.fromarray(small).save(src / "a_rgb.png")
    rgba = np.dstack([small, np.full(small.shape[:2], 255, np.uint8)])
    Image.fromarray(rgba).save(src / "b_rgba.png")
    gray16 = (small.mean(axis=2) * 257).astype(np.uint16)
    tifffile.imwrite(src / "c_gray16.tif", gray16)
    (src / "d_broken.png").write_bytes(b"this is not an image")
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(src / "e_tiny.png")
    (src / "f_empty.tif").write_bytes(b"")
    tifffile.imwrite(src / "g_stack.tif", np.zeros((7, 20, 20), np.uint8))
    out = tmp_path / "out"
    code = main(["segment", str(src), "-o", str(out), *model_args(tiny_files), "--foreground-threshold", "0.3", "-q"])
    captured = capsys.readouterr()
    assert code == 1
    err = captured.err
    assert "d_broken.png: cannot read this file as an image" in err
    assert "e_tiny.png" in err and "too small" in err
    assert "f_empty.tif" in err
    assert "g_stack.tif" in err and "shape" in err
    assert "segmented 3 of 7 images" in captured.out
    for name, shape in [("a_rgb", small.shape[:2]), ("b_rgba", small.shape[:2]), ("c_gray16", small.shape[:2])]:
        check_outputs(out, name, shape)
    # RGBA with opaque alpha is the RGB image
    np.testing.assert_array_equal(read_label_tiff(out / "a_rgb.tif"), read_label_tiff(out / "b_rgba.tif"))
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{n}.{ext}" for n in ("a_rgb", "b_rgba", "c_gray16") for ext in ("tif", "geojson", "csv", "parquet"))


def test_segment_usage_errors(tiny_files, tmp_path, capsys):
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(img)
    assert main(["segment", str(img), "-o", str(tmp_path), "-c", str(tiny_files["tiny_sam.pt"]), "--classes"]) == 2
    assert "semantic decoder" in capsys.readouterr().err
    (tmp_path / "sub").mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "sub" / "x.png")
    assert main(["segment", str(img), str(tmp_path / "sub" / "x.png"), "-o", str(tmp_path / "o"),
                 *model_args(tiny_files)]) == 2
    assert "would both write x.*" in capsys.readouterr().err
    assert main(["segment", str(tmp_path / "missing.png"), "-o", str(tmp_path / "o"), *model_args(tiny_files), "-q"]) == 1
    assert "image not found" in capsys.readouterr().err
    # the label TIFF never overwrites its input
    tif = tmp_path / "y.tif"
    tifffile.imwrite(tif, np.zeros((20, 20, 3), np.uint8))
    assert main(["segment", str(tif), "-o", str(tmp_path), *model_args(tiny_files), "-q"]) == 1
    assert "overwrite the input" in capsys.readouterr().err
    assert main(["segment", str(img), "-o", str(tmp_path / "o"), *model_args(tiny_files), "--mode", "amg",
                 "--tta"]) == 2
    assert "--tta" in capsys.readouterr().err


def test_segment_amg_mode(rgb, tiny_files, tmp_path, capsys):
    path = tmp_path / "amg.png"
    Image.fromarray(rgb[:200, :240]).save(path)
    out = tmp_path / "out"
    assert main(["segment", str(path), "-o", str(out), "--mode", "amg", *model_args(tiny_files, classes=True),
                 "--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0", "-q"]) == 0
    assert "segmented 1 of 1 images" in capsys.readouterr().out
    check_outputs(out, "amg", (200, 240), classes=True)
    # AIS thresholds are refused in AMG mode (and the reverse) by the library
    import pathosam

    model = pathosam.load_model(tiny_files["tiny_sam.pt"], device="cpu")
    with pytest.raises(TypeError, match="unknown amg parameter"):
        pathosam.segment(rgb[:64, :64], model, mode="amg", min_size=3)
    with pytest.raises(ValueError, match="no instance"):
        pathosam.segment(rgb[:64, :64], model, mode="ais")
