"""Output writers: exact outlines, nucleus table, QuPath GeoJSON, label TIFF, atomic writes."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pandas as pd
import pytest
import shapely
from scipy import ndimage
from shapely.geometry import shape
from skimage.measure import regionprops

from pathosam.io import (
    atomic_write,
    label_polygons,
    nucleus_table,
    partial_path,
    read_label_tiff,
    write_geojson,
    write_label_tiff,
    write_table,
)
from pathosam.semantic import CLASS_NAMES

# ---------------------------------------------------------------- label images for the tests


def _a(rows: list[str]) -> np.ndarray:
    """Label image from strings: '.' = 0, digits = ids."""
    return np.array([[0 if ch == "." else int(ch) for ch in row] for row in rows], np.uint32)


HAND_MADE = {
    "single_pixel": _a(["1"]),
    "single_pixel_inner": _a(["...", ".1.", "..."]),
    "diagonal_pair": _a(["1.", ".1"]),
    "anti_diagonal_pair": _a([".1", "1."]),
    "diagonal_line": _a(["1...", ".1..", "..1.", "...1"]),
    "checkerboard": _a(["1.1.1", ".1.1.", "1.1.1", ".1.1."]),
    "hline": _a(["....", "1111", "...."]),
    "vline": _a([".1.", ".1.", ".1.", ".1."]),
    "ring_with_hole": _a(["111", "1.1", "111"]),
    "hole_with_island": _a(["11111", "1...1", "1.1.1", "1...1", "11111"]),
    "hole_with_other_object": _a(["11111", "1...1", "1.2.1", "1...1", "11111"]),
    # a background pocket that touches the outside only at a corner (pinched hole)
    "pinched_hole": _a(["111.", "1.1.", "11..", "...."]),
    # two pockets touching each other diagonally inside a block
    "touching_holes": _a(["1111", "1.11", "11.1", "1111"]),
    # pockets chained diagonally from corner to corner: the object falls into two parts
    "diagonal_split": _a(["1111.", "111.1", "11.11", "1.111", ".1111"]),
    "two_ids_diagonal": _a(["12", "21"]),
    "border_full": np.ones((3, 4), np.uint32),
    "disconnected": _a(["1..1", "....", "1..1"]),
    "nested_rings": _a(["1111111", "1.....1", "1.111.1", "1.1.1.1", "1.111.1", "1.....1", "1111111"]),
}


def _random_images(seed: int = 0, count: int = 250) -> list[np.ndarray]:
    """Random label images: noise (many diagonal contacts), blobs with holes, dense mosaics."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        h, w = rng.integers(1, 18, 2)
        kind = i % 3
        if kind == 0:  # salt and pepper of a few ids
            fg = rng.random((h, w)) < rng.uniform(0.2, 0.8)
            lab = fg * rng.integers(1, rng.integers(2, 5), (h, w))
        elif kind == 1:  # smoothed blobs, with holes punched in
            smooth = ndimage.gaussian_filter(rng.random((h, w)), 1.0)
            lab = ndimage.label(smooth > np.median(smooth))[0]
            lab[rng.random((h, w)) < 0.1] = 0
        else:  # dense mosaic: every pixel belongs to some object
            lab = rng.integers(1, 4, (h, w))
        out.append(lab.astype(np.uint32))
    return out


def _check_outlines(lab: np.ndarray, offset=(0, 0)) -> int:
    """All outline guarantees for one label image; returns the number of objects."""
    row0, col0 = offset
    ids = [i for i in np.unique(lab) if i]
    rr, cc = np.mgrid[: lab.shape[0], : lab.shape[1]]
    seen = []
    for lid, geom in label_polygons(lab, offset=offset):
        seen.append(lid)
        mask = lab == lid
        assert geom.is_valid, f"id {lid}: {shapely.is_valid_reason(geom)}\n{lab}"
        assert geom.geom_type in ("Polygon", "MultiPolygon")
        assert geom.area == mask.sum()
        inside = shapely.contains_xy(geom, cc + 0.5 + col0, rr + 0.5 + row0)
        np.testing.assert_array_equal(inside, mask, err_msg=f"id {lid} rasterises wrongly\n{lab}")
        n_parts = ndimage.label(mask)[1]  # 4-connected parts
        polys = list(geom.geoms) if geom.geom_type == "MultiPolygon" else [geom]
        assert len(polys) == n_parts
        for poly in polys:
            assert poly.exterior.is_ccw  # positive shoelace area in x/y (GeoJSON right-hand rule)
            assert all(not ring.is_ccw for ring in poly.interiors)
            for ring in (poly.exterior, *poly.interiors):
                xy = np.asarray(ring.coords)
                assert (xy[0] == xy[-1]).all() and len(xy) >= 5
                assert (xy == np.round(xy)).all()  # pixel corners
                d = np.diff(xy, axis=0)
                assert ((d[:, 0] == 0) ^ (d[:, 1] == 0)).all()  # axis-parallel sides
                turn = np.vstack([d[-1:], d])
                cross = turn[:-1, 0] * turn[1:, 1] - turn[:-1, 1] * turn[1:, 0]
                assert (cross != 0).all()  # no collinear vertex, incl. the start vertex
    assert seen == ids
    return len(seen)


# ---------------------------------------------------------------------------- outlines


@pytest.mark.parametrize("name", sorted(HAND_MADE))
def test_outlines_hand_made_cases(name):
    _check_outlines(HAND_MADE[name])


def test_outlines_random_images():
    n = sum(_check_outlines(lab) for lab in _random_images())
    assert n > 500


def test_outlines_specific_topology():
    polys = dict(label_polygons(HAND_MADE["diagonal_pair"]))
    assert polys[1].geom_type == "MultiPolygon" and len(polys[1].geoms) == 2  # diagonal = apart
    ring = dict(label_polygons(HAND_MADE["ring_with_hole"]))[1]
    assert ring.geom_type == "Polygon" and len(ring.interiors) == 1 and ring.area == 8
    island = dict(label_polygons(HAND_MADE["hole_with_island"]))[1]
    assert island.geom_type == "MultiPolygon" and sorted(p.area for p in island.geoms) == [1, 16]
    pinched = dict(label_polygons(HAND_MADE["pinched_hole"]))[1]
    assert pinched.geom_type == "Polygon" and len(pinched.interiors) == 1  # hole touching the shell
    square = dict(label_polygons(HAND_MADE["border_full"]))[1]
    assert square.equals(shapely.box(0, 0, 4, 3)) and len(square.exterior.coords) == 5


def test_outlines_offset_and_dtypes():
    lab = HAND_MADE["hole_with_other_object"].astype(np.int16)
    _check_outlines(lab, offset=(100, 2000))
    geom = dict(label_polygons(lab, offset=(100, 2000)))[2]
    assert geom.bounds == (2002.0, 102.0, 2003.0, 103.0)  # x = col + col0, y = row + row0
    with pytest.raises(ValueError, match="2-D"):
        next(label_polygons(np.zeros((2, 2, 2), np.uint32)))


def test_outlines_large_smooth_objects():
    rng = np.random.default_rng(3)
    smooth = ndimage.gaussian_filter(rng.random((200, 180)), 4)
    lab = ndimage.label(smooth > smooth.mean())[0].astype(np.uint32)
    lab[lab == 3] = 0  # an absent id: skipped, not an empty geometry
    _check_outlines(lab)


# ------------------------------------------------------------------------------ table


def _cases_for_table() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    smooth = ndimage.gaussian_filter(rng.random((120, 97)), 2)
    lab = ndimage.label(smooth > smooth.mean())[0].astype(np.uint32)
    return [lab, HAND_MADE["disconnected"], HAND_MADE["hole_with_other_object"], HAND_MADE["border_full"]]


@pytest.mark.parametrize("case", range(4))
def test_table_matches_scipy_and_regionprops(case):
    lab = _cases_for_table()[case]
    df = nucleus_table(lab)
    ids = np.unique(lab[lab > 0])
    np.testing.assert_array_equal(df["id"], ids)
    com = np.array(ndimage.center_of_mass(np.ones_like(lab), lab, ids)).reshape(-1, 2)
    np.testing.assert_allclose(df["centroid_y"], com[:, 0] + 0.5, rtol=0, atol=1e-9)
    np.testing.assert_allclose(df["centroid_x"], com[:, 1] + 0.5, rtol=0, atol=1e-9)
    props = regionprops(lab)
    np.testing.assert_array_equal(df["area"], [p.area for p in props])
    np.testing.assert_array_equal(df[["bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"]], [p.bbox for p in props])
    assert df["id"].dtype == np.uint32 and df["area"].dtype == np.int64
    assert df["centroid_x"].dtype == np.float64 and df["bbox_x1"].dtype == np.int64


def test_table_single_pixel_convention_offset_and_missing_ids():
    lab = np.zeros((5, 6), np.uint32)
    lab[2, 3] = 1
    lab[4, 0] = 3  # id 2 is absent
    df = nucleus_table(lab, offset=(10, 20))
    assert df["id"].tolist() == [1, 3]
    assert not df.isna().any().any()
    first = df.iloc[0]
    assert (first["centroid_x"], first["centroid_y"]) == (23.5, 12.5)
    assert (first["bbox_x0"], first["bbox_y0"], first["bbox_x1"], first["bbox_y1"]) == (23, 12, 24, 13)
    assert len(nucleus_table(np.zeros((4, 4), np.uint32))) == 0


def test_table_classes_and_file_round_trips(tmp_path):
    lab = _cases_for_table()[0]
    n = int(lab.max())
    classes = (np.arange(n + 1) % 6).astype(np.uint8)
    probs = np.linspace(0, 1, n + 1).astype(np.float32)
    df = nucleus_table(lab, classes, probs)
    assert df["class_id"].dtype == np.uint8 and df["class_probability"].dtype == np.float32
    expected = ["" if c == 0 else CLASS_NAMES[c] for c in classes[df["id"]]]
    assert df["class_name"].tolist() == expected
    np.testing.assert_array_equal(df["class_probability"], probs[df["id"]])
    custom = nucleus_table(lab, classes, class_names={1: "tumour"})
    assert set(custom["class_name"]) == {"", "tumour", "class 2", "class 3", "class 4", "class 5"}
    with pytest.raises(ValueError, match="length"):
        nucleus_table(lab, classes[:-1])

    written = write_table(df, tmp_path / "t" / "cells.csv", tmp_path / "t" / "cells.parquet")
    assert [p.name for p in written] == ["cells.csv", "cells.parquet"]
    back = pd.read_parquet(tmp_path / "t" / "cells.parquet")
    pd.testing.assert_frame_equal(back, df, check_dtype=False)
    assert back["id"].dtype == np.uint32 and back["class_probability"].dtype == np.float32
    assert back["class_name"].tolist() == expected  # "" stays "", never NaN/None
    csv = pd.read_csv(tmp_path / "t" / "cells.csv", keep_default_na=False)
    assert list(csv.columns) == list(df.columns) and csv["class_name"].tolist() == expected
    np.testing.assert_allclose(csv["centroid_x"], df["centroid_x"])
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["cells.csv", "cells.parquet"]
    with pytest.raises(ValueError):
        write_table(df)


# ---------------------------------------------------------------------------- GeoJSON


def _geojson_labels() -> np.ndarray:
    rng = np.random.default_rng(11)
    smooth = ndimage.gaussian_filter(rng.random((90, 110)), 2)
    lab = ndimage.label(smooth > np.percentile(smooth, 60))[0].astype(np.uint32)
    lab[0:3, 0:3] = lab.max() + 1  # touches the border
    lab[50, 50], lab[51, 51] = lab.max() + 1, lab.max() + 1  # diagonal-only pixels -> MultiPolygon
    return lab


def _load(path):
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    text = raw.decode("utf-8")
    assert "NaN" not in text and "Infinity" not in text and "null" not in text
    return json.loads(text)


def test_geojson_features_are_valid_and_complete(tmp_path):
    lab = _geojson_labels()
    n = int(lab.max())
    classes = (np.arange(n + 1) % 6).astype(np.uint8)
    probs = np.linspace(0, 1, n + 1).astype(np.float32)
    probs[2] = np.nan  # must be left out, not written as NaN
    table = nucleus_table(lab, classes, probs)
    path = write_geojson(tmp_path / "out" / "nuclei.geojson", lab, table, progress=False)
    doc = _load(path)
    assert doc["type"] == "FeatureCollection"
    feats = doc["features"]
    assert len(feats) == n
    rows = table.set_index("id")
    for lid, f in zip(range(1, n + 1), feats):
        assert f["type"] == "Feature"
        geom = shape(f["geometry"])
        assert geom.is_valid and geom.area == (lab == lid).sum()
        polys = f["geometry"]["coordinates"]
        polys = [polys] if f["geometry"]["type"] == "Polygon" else polys
        for rings in polys:
            for ring in rings:
                assert ring[0] == ring[-1] and len(ring) >= 4
                assert all(isinstance(v, int) for xy in ring for v in xy)  # compact integers
        props = f["properties"]
        assert props["objectType"] == "detection"
        assert "type" not in props
        m = props["measurements"]
        assert m["Area px"] == rows.loc[lid, "area"] and isinstance(m["Area px"], int)
        assert m["Centroid X px"] == pytest.approx(rows.loc[lid, "centroid_x"], abs=1e-4)
        assert m["Centroid Y px"] == pytest.approx(rows.loc[lid, "centroid_y"], abs=1e-4)
        assert all(isinstance(v, (int, float)) for v in m.values())
        if lid == 2:
            assert "Class probability" not in m
        else:
            assert m["Class probability"] == pytest.approx(float(probs[lid]), abs=1e-6)
        if classes[lid] == 0:
            assert "classification" not in props
        else:
            cls = props["classification"]
            assert cls["name"] == CLASS_NAMES[int(classes[lid])]
            assert len(cls["color"]) == 3 and all(0 <= c <= 255 for c in cls["color"])
    colours = {tuple(f["properties"]["classification"]["color"]) for f in feats if "classification" in f["properties"]}
    assert len(colours) == 5  # one distinct colour per PanNuke class
    assert {f["geometry"]["type"] for f in feats} == {"Polygon", "MultiPolygon"}
    ids = [f["id"] for f in feats]
    assert len(set(ids)) == n
    assert list(tmp_path.joinpath("out").iterdir()) == [path]


def test_geojson_deterministic_gzip_and_options(tmp_path):
    lab = _geojson_labels()
    a = write_geojson(tmp_path / "a.geojson", lab, progress=False)
    b = write_geojson(tmp_path / "b.geojson", lab, progress=False)
    assert a.read_bytes() == b.read_bytes()
    gz1 = write_geojson(tmp_path / "c.geojson.gz", lab, progress=False)
    gz2 = write_geojson(tmp_path / "d.geojson.gz", lab, progress=False)
    assert gz1.read_bytes() == gz2.read_bytes()  # no time stamp in the gzip header
    assert gzip.decompress(gz1.read_bytes()) == a.read_bytes()
    forced = write_geojson(tmp_path / "e.json", lab, gzip=True, progress=False)
    assert gzip.decompress(forced.read_bytes()) == a.read_bytes()
    doc = _load(a)
    assert "classification" not in doc["features"][0]["properties"]  # no table: no classes

    bare = _load(write_geojson(tmp_path / "f.geojson", lab, measurements=False, object_type="annotation",
                               id_namespace=None, offset=(1000, 500), progress=False))
    f0 = bare["features"][0]
    assert "id" not in f0 and "measurements" not in f0["properties"]
    assert f0["properties"]["objectType"] == "annotation"
    shifted = shape(f0["geometry"])
    original = shape(doc["features"][0]["geometry"])
    assert shifted.equals(shapely.affinity.translate(original, 500, 1000))
    other = _load(write_geojson(tmp_path / "g.geojson", lab, id_namespace="slide-2", progress=False))
    assert other["features"][0]["id"] != doc["features"][0]["id"]

    empty = _load(write_geojson(tmp_path / "h.geojson", np.zeros((5, 5), np.uint32), progress=False))
    assert empty == {"type": "FeatureCollection", "features": []}
    with pytest.raises(ValueError, match="object_type"):
        write_geojson(tmp_path / "i.geojson", lab, object_type="nucleus", progress=False)
    assert not (tmp_path / "i.geojson").exists()


# -------------------------------------------------------------------------- label TIFF


def test_label_tiff_round_trip_small(tmp_path):
    import tifffile

    lab = HAND_MADE["nested_rings"].astype(np.uint16) * 7
    path = write_label_tiff(tmp_path / "sub" / "labels.tif", lab)
    back = read_label_tiff(path)
    assert back.dtype == np.uint32
    np.testing.assert_array_equal(back, lab)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert not page.is_tiled and page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert page.dtype == np.uint32
    big_ids = np.array([[0, 2**32 - 1]], np.int64)
    np.testing.assert_array_equal(read_label_tiff(write_label_tiff(tmp_path / "x.tif", big_ids)), big_ids)


def test_label_tiff_large_is_tiled(tmp_path):
    import tifffile

    rng = np.random.default_rng(5)
    lab = np.zeros((3000, 2500), np.uint32)
    lab[::7, ::5] = rng.integers(1, 100_000, lab[::7, ::5].shape)
    lab[-1, -1] = 123_456
    path = write_label_tiff(tmp_path / "big.tif", lab)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (256, 256)
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
    np.testing.assert_array_equal(read_label_tiff(path), lab)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((2, 3, 4), np.uint32), "2-D"),
        (np.array([[0, -1]], np.int32), "0..4294967295"),
        (np.array([[0, 2**32]], np.int64), "0..4294967295"),
        (np.zeros((3, 3), np.float32), "integer"),
        (np.zeros((3, 3), bool), "integer"),
    ],
)
def test_label_tiff_refuses_bad_input(tmp_path, bad, match):
    path = tmp_path / "bad.tif"
    with pytest.raises(ValueError, match=match):
        write_label_tiff(path, bad)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- atomic


def test_atomic_write_success_and_naming(tmp_path):
    assert partial_path(tmp_path / "cells.geojson.gz").name == "cells.geojson.partial.gz"
    assert partial_path(tmp_path / "labels").name == "labels.partial"
    target = tmp_path / "a" / "b" / "cells.parquet"
    with atomic_write(target) as tmp:
        assert tmp.name == "cells.partial.parquet" and tmp.parent == target.parent
        assert not target.exists()
        tmp.write_text("done")
        assert not target.exists()  # nothing under the final name before success
    assert target.read_text() == "done"
    assert sorted(p.name for p in target.parent.iterdir()) == ["cells.parquet"]


def test_atomic_write_failure_leaves_nothing(tmp_path):
    target = tmp_path / "out.csv"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    target.write_text("old")  # a failed rewrite keeps the previous complete file
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target) as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


def test_atomic_write_directories_and_stale_partials(tmp_path):
    target = tmp_path / "store.zarr"
    partial_path(target).mkdir()  # left over by a killed run
    (partial_path(target) / "junk").write_text("x")
    with atomic_write(target) as tmp:
        assert not tmp.exists()
        tmp.mkdir()
        (tmp / "0.0").write_text("chunk")
    with atomic_write(target) as tmp:  # replaces an existing directory
        tmp.mkdir()
        (tmp / "1.1").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["1.1"]
    with pytest.raises(ValueError):
        with atomic_write(target) as tmp:
            tmp.mkdir()
            (tmp / "x").write_text("half")
            raise ValueError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.zarr"]
    assert sorted(p.name for p in target.iterdir()) == ["1.1"]


def test_writers_leave_no_partial_on_error(tmp_path, monkeypatch):
    import pathosam.io.geojson as gj

    class Boom(Exception):
        pass

    class BadTable(pd.DataFrame):
        def to_parquet(self, *args, **kwargs):
            raise Boom

    with pytest.raises(Boom):
        write_table(BadTable({"id": [1]}), parquet_path=tmp_path / "t.parquet")

    calls = []
    real = gj._geometry

    def failing(parts):
        calls.append(1)
        if len(calls) == 5:
            raise Boom  # fails after some features were already streamed out
        return real(parts)

    monkeypatch.setattr(gj, "_geometry", failing)
    with pytest.raises(Boom):
        write_geojson(tmp_path / "n.geojson.gz", _geojson_labels(), progress=False)
    assert list(tmp_path.iterdir()) == []
