"""One output schema: an image run and a slide run of the same pixels write the same per-nucleus
table (columns, dtypes, values) and the same GeoJSON (measurements, classification, outlines)."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import tifffile

import pathosam.io
from pathosam.automatic import save_segmentation, segment_nuclei
from pathosam.instances.tiled import AISParams
from pathosam.io import nuclei_table, nucleus_table, read_label_tiff
from pathosam.io.omezarr import read_label_zarr
from pathosam.io.schema import COLUMNS, arrow_schema, columns
from pathosam.wsi.pipeline import SlideOptions, segment_slide

from .test_segment import MapsFromImage, disk_image

TILING = {"tile_shape": (128, 128), "halo": (32, 32)}


def _write_slide(path, image, mpp):
    metadata = {"axes": "YXS"} if mpp is None else {"axes": "YXS", "PhysicalSizeX": mpp, "PhysicalSizeY": mpp}
    with tifffile.TiffWriter(path, ome=True) as w:
        w.write(image, tile=(128, 128), subifds=1, photometric="rgb", metadata=metadata)
        w.write(image[::2, ::2], tile=(128, 128), subfiletype=1, photometric="rgb")


def _features(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return {ft["properties"]["measurements"]["Label id"]: ft for ft in json.load(f)["features"]}


@pytest.mark.parametrize(("classes", "mpp", "scheme"), [(False, None, None), (True, 0.5, None), (True, None, "consep")])
def test_image_run_and_slide_run_of_the_same_pixels_write_the_same_outputs(tmp_path, classes, mpp, scheme):
    image, _ = disk_image((300, 420), seed=7, n=45)
    ais = AISParams(min_size=5)
    result = segment_nuclei(image, MapsFromImage(scheme), classes=classes, progress=False, **TILING, **ais.__dict__)
    save_segmentation(result, tmp_path / "image", "disks", ("tif", "geojson", "parquet", "csv"), mpp=mpp)
    _write_slide(tmp_path / "disks.ome.tif", image, mpp)
    opts = SlideOptions(target_mpp=None, tissue=False, classes=classes, ais=ais, **TILING)
    segment_slide(tmp_path / "disks.ome.tif", MapsFromImage(scheme), tmp_path / "slide", opts, progress=False)

    labels = read_label_tiff(tmp_path / "image" / "disks.tif")
    np.testing.assert_array_equal(labels, read_label_zarr(tmp_path / "slide" / "disks.ome.zarr"))
    assert labels.max() >= 40

    # the table: same Parquet schema (types), columns, dtypes and values, exactly
    img_pq, slide_pq = tmp_path / "image" / "disks.parquet", tmp_path / "slide" / "disks.parquet"
    expected = [c.name for c in columns(mpp is not None, classes)]
    assert pq.read_schema(img_pq).remove_metadata() == pq.read_schema(slide_pq).remove_metadata()
    assert pq.read_schema(img_pq).remove_metadata() == arrow_schema(columns(mpp is not None, classes))
    img, slide = pd.read_parquet(img_pq), pd.read_parquet(slide_pq)
    assert list(img.columns) == list(slide.columns) == expected
    pd.testing.assert_frame_equal(img, slide, check_exact=True)
    assert img["area"].dtype == np.int64 and img["id"].dtype == np.uint32
    if mpp is not None:
        np.testing.assert_allclose(img["area_um2"], img["area"] * mpp**2)
    if classes:
        assert img["class_id"].dtype == np.uint8 and img["class_probability"].dtype == np.float32
        assert (img["class_name"] != "").sum() >= 40
        names = MapsFromImage(scheme).class_scheme.names[1:]  # PanNuke's, or CoNSeP's with "(CoNSeP)"
        assert set(img["class_name"]) <= {"", *names} and len(set(img["class_name"]) - {""}) >= 2
    csv = pd.read_csv(tmp_path / "image" / "disks.csv", keep_default_na=False)
    assert list(csv.columns) == expected

    # the GeoJSON: same Features (ids, outlines, measurements, classification), exactly
    img_f, slide_f = _features(tmp_path / "image" / "disks.geojson"), _features(tmp_path / "slide" / "disks.geojson.gz")
    assert sorted(img_f) == sorted(slide_f) == list(range(1, int(labels.max()) + 1))
    for lid, f in img_f.items():
        assert f == slide_f[lid]
        m = f["properties"]["measurements"]
        assert isinstance(m["Area px"], int) and isinstance(m["Label id"], int)
        assert ("Area µm^2" in m) == (mpp is not None)
        assert ("classification" in f["properties"]) == (classes and img.set_index("id").loc[lid, "class_name"] != "")


def test_rescaled_slide_keeps_the_schema(tmp_path):
    image, _ = disk_image((256, 320), seed=8, n=25)
    _write_slide(tmp_path / "s.ome.tif", image, 0.5)
    opts = SlideOptions(target_mpp=0.25, tissue=False, classes=True, ais=AISParams(min_size=5), **TILING)
    segment_slide(tmp_path / "s.ome.tif", MapsFromImage(), tmp_path / "out", opts, progress=False)
    table = pd.read_parquet(tmp_path / "out" / "s.parquet")
    assert list(table.columns) == [c.name for c in columns(True, True)]
    assert table.dtypes.astype(str).tolist()[:9] == [c.dtype for c in columns(True, True)][:9]
    # work pixels are 0.25 um: area_um2 = work pixel count * 0.25**2, area = level-0 px, rounded
    np.testing.assert_allclose(table["area"], table["area_um2"] / 0.5**2, atol=0.5)
    features = _features(tmp_path / "out" / "s.geojson.gz")
    f = features[1]["properties"]["measurements"]
    assert f["Area µm^2"] == round(float(table.loc[0, "area_um2"]), 4) and isinstance(f["Area px"], int)


def test_nuclei_table_conversions_and_empty_tables():
    t = nuclei_table(np.array([1]), np.array([8]), np.array([[3.0, 5.0]]), np.array([[2, 4, 5, 7]]),
                     offset=(100, 200), scale=2.0, mpp=0.5)
    row = t.iloc[0]
    assert (row["centroid_x"], row["centroid_y"]) == (200 + 5.5 / 2, 100 + 3.5 / 2)
    assert (row["bbox_x0"], row["bbox_y0"], row["bbox_x1"], row["bbox_y1"]) == (202, 101, 204, 103)
    assert row["area"] == 2 and row["area_um2"] == 0.5
    empty = nucleus_table(np.zeros((5, 5), np.uint32), np.zeros(1, np.uint8), np.zeros(1, np.float32), mpp=1.0)
    assert list(empty.columns) == [c.name for c in columns(True, True)] and len(empty) == 0
    assert [str(d) for d in empty.dtypes[:-2]] == [c.dtype for c in columns(True, True)][:-2]


def test_io_docstring_lists_every_column_with_its_dtype_and_unit():
    doc = pathosam.io.__doc__
    for c in COLUMNS:
        line = next((ln for ln in doc.splitlines() if ln.startswith(f"``{c.name}``")), None)
        assert line is not None, c.name
        assert line.split()[1] == ("string" if c.dtype == "str" else c.dtype), c.name
        if c.unit:
            assert line.split()[2] == c.unit, c.name
