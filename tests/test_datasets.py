"""Dataset readers: each test writes a tiny dataset in the format's on-disk layout and reads it back."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy.io import savemat

from pathosam.datasets import (
    Dataset, Sample, detect_format, list_formats, open_dataset, pad_sample, split_names, unpad,
)

ALL_FORMATS = ["consep", "consep_tiles", "cpm", "cryonuseg", "folder", "glas", "lizard", "lynsec", "monuseg", "nuclick",
               "nuinsseg", "pannuke", "puma", "srsanet", "tnbc"]


# ---------------------------------------------------------------------------------------------
# helpers


def rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def instances(h=24, w=32, ids=(1, 2, 3)):
    """Three objects, the first two touching (side by side), ids as given."""
    lab = np.zeros((h, w), np.int64)
    lab[2:8, 2:8] = ids[0]
    lab[2:8, 8:14] = ids[1]  # touches object 1
    lab[14:20, 20:28] = ids[2]
    return lab


def save_png(path: Path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def save_tif(path: Path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, arr)


def save_npy(path: Path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, arr)


def save_mat(path: Path, **arrays):
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(path), arrays)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when a and b split the pixels into the same objects (ids may differ)."""
    a = np.asarray(a).ravel()
    b = np.asarray(b).ravel()
    if not np.array_equal(a == 0, b == 0):
        return False
    pairs = np.unique(np.stack([a, b], 1)[a > 0], axis=0)
    return len(pairs) == len(np.unique(pairs[:, 0])) == len(np.unique(pairs[:, 1]))


def check_labels(s: Sample, n: int | None = None):
    assert s.image.dtype == np.uint8 and s.image.ndim == 3 and s.image.shape[2] == 3
    assert s.labels.dtype == np.uint32 and s.labels.shape == s.image.shape[:2]
    ids = np.unique(s.labels)
    ids = ids[ids > 0]
    assert np.array_equal(ids, np.arange(1, len(ids) + 1)), "ids must be consecutive 1..N"
    if n is not None:
        assert len(ids) == n
    if s.classes is not None:
        assert s.classes.dtype == np.uint8 and s.classes.shape == s.labels.shape
        assert s.class_names[0] == "background"


def test_registry_lists_every_format():
    assert list_formats() == ALL_FORMATS


# ---------------------------------------------------------------------------------------------
# folder


def test_folder_basic_and_autodetect(tmp_path):
    lab_a = instances(ids=(5, 9, 40))  # non-consecutive ids are renumbered
    save_png(tmp_path / "images" / "a.png", rgb(24, 32, 1))
    save_tif(tmp_path / "labels" / "a.tif", lab_a.astype(np.uint16))
    save_tif(tmp_path / "images" / "b.tif", rgb(24, 32, 2))
    save_png(tmp_path / "labels" / "b.png", (instances() > 0).astype(np.uint8))  # 8-bit labels
    (tmp_path / "images" / ".hidden.png").write_bytes(b"junk")

    assert detect_format(tmp_path) == "folder"
    ds = open_dataset(tmp_path)
    assert isinstance(ds, Dataset) and ds.format == "folder"
    assert ds.name == tmp_path.name and ds.names == ["a", "b"] and len(ds) == 2
    a = ds[0]
    check_labels(a, 3)
    assert np.array_equal(a.image, rgb(24, 32, 1))
    assert same_partition(a.labels, lab_a)
    assert np.array_equal(np.unique(a.labels), [0, 1, 2, 3])
    assert a.classes is None and a.meta["split"] is None and a.meta["image_path"].endswith("a.png")
    b = ds["b"]
    assert np.array_equal(b.image, rgb(24, 32, 2))
    check_labels(b, 1)
    with pytest.raises(ValueError, match="cannot select split"):
        open_dataset(tmp_path, split="train")


def test_folder_unmatched_files_are_listed(tmp_path):
    save_png(tmp_path / "images" / "a.png", rgb(8, 8))
    save_png(tmp_path / "images" / "orphan.png", rgb(8, 8))
    save_tif(tmp_path / "labels" / "a.tif", np.ones((8, 8), np.uint16))
    save_tif(tmp_path / "labels" / "lonely.tif", np.ones((8, 8), np.uint16))
    with pytest.raises(ValueError, match=r"orphan.*lonely"):
        open_dataset(tmp_path, format="folder")
    with pytest.warns(UserWarning, match="orphan"):
        ds = open_dataset(tmp_path, format="folder", strict=False)
    assert ds.names == ["a"]


def test_folder_split_layouts_and_classes(tmp_path):
    for split, seed in (("train", 1), ("test", 2)):
        save_png(tmp_path / split / "images" / "x.png", rgb(24, 32, seed))
        save_tif(tmp_path / split / "labels" / "x.tif", instances().astype(np.uint32))
    save_tif(tmp_path / "test" / "classes" / "x.tif", (instances() > 0).astype(np.uint8) * 2)
    ds = open_dataset(tmp_path, class_names=["a", "b"])
    assert ds.format == "folder" and ds.splits == ("test", "train")
    assert ds.names == ["test_x", "train_x"]  # stems repeat across splits -> split prefix
    test = open_dataset(tmp_path, split="test", class_names=["a", "b"])
    assert test.names == ["test_x"]  # the same name whatever the selection
    s = test[0]
    check_labels(s, 3)
    assert np.array_equal(s.image, rgb(24, 32, 2))
    assert s.class_names == ("background", "a", "b") and set(np.unique(s.classes)) == {0, 2}
    assert open_dataset(tmp_path, split="train")[0].classes is None
    with pytest.raises(ValueError, match="unknown split 'val'.*available: test, train"):
        open_dataset(tmp_path, split="val")

    # torch_em-style images/<split>/ + labels/<split>/
    root = tmp_path / "te"
    save_tif(root / "images" / "train" / "p.tif", rgb(24, 32, 3))
    save_tif(root / "labels" / "train" / "p.tif", instances().astype(np.uint16))
    save_tif(root / "images" / "test" / "q.tif", rgb(24, 32, 4))
    save_tif(root / "labels" / "test" / "q.tif", instances().astype(np.uint16))
    ds = open_dataset(root)
    assert ds.names == ["q", "p"] and open_dataset(root, split="train").names == ["p"]


def test_dataset_views_and_lookup(tmp_path):
    for i in range(4):
        save_png(tmp_path / "images" / f"im{i}.png", rgb(8, 8, i))
        save_tif(tmp_path / "labels" / f"im{i}.tif", np.full((8, 8), i, np.uint16))
    ds = open_dataset(tmp_path)
    assert ds.names == ["im0", "im1", "im2", "im3"]
    view = ds[1:3]
    assert isinstance(view, Dataset) and view.names == ["im1", "im2"] and len(ds) == 4
    assert np.array_equal(ds[-1].image, rgb(8, 8, 3))
    sel = ds.select(["im3", "im0"])
    assert sel.names == ["im3", "im0"] and "im3" in sel and "im1" not in sel
    with pytest.raises(KeyError):
        ds["nope"]
    with pytest.raises(KeyError, match="unknown sample"):
        ds.select(["nope"])
    assert [s.name for s in ds] == ds.names
    assert ds[0].n_objects == 0 and ds[2].n_objects == 1


def test_sample_validation():
    with pytest.raises(ValueError, match="uint8"):
        Sample("x", np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.uint32))
    with pytest.raises(ValueError, match="differs"):
        Sample("x", np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5), np.uint32))
    s = Sample("x", np.zeros((4, 4, 3), np.uint8), np.ones((4, 4), np.int32), np.ones((4, 4), np.int64))
    assert s.labels.dtype == np.uint32 and s.classes.dtype == np.uint8


# ---------------------------------------------------------------------------------------------
# pannuke


def _pannuke_fold(root: Path, k: int, n: int = 2, h: int = 24, w: int = 32):
    images = np.stack([rgb(h, w, 10 * k + i) for i in range(n)]).astype(np.float64)
    masks = np.zeros((n, h, w, 6), np.float64)
    masks[0, 2:8, 2:8, 0] = 3  # neoplastic, id 3
    masks[0, 2:8, 8:14, 0] = 7  # neoplastic, id 7, touching
    masks[0, 14:20, 20:28, 1] = 3  # inflammatory with the same id as a neoplastic one
    masks[0, 5:8, 12:16, 4] = 1  # epithelial, overlapping neoplastic 7 -> later channel wins
    masks[0, ..., 5] = (masks[0, ..., :5].sum(-1) == 0)  # background channel
    masks[1, 10:12, 10:12, 2] = 2
    fold = root / f"fold_{k}" / f"Fold {k}"
    save_npy(fold / "images" / f"fold{k}" / "images.npy", images)
    save_npy(fold / "images" / f"fold{k}" / "types.npy", np.array(["Breast", "Colon"][:n]))
    save_npy(fold / "masks" / f"fold{k}" / "masks.npy", masks)
    return images, masks


def test_pannuke(tmp_path):
    images, masks = _pannuke_fold(tmp_path, 1)
    _pannuke_fold(tmp_path, 3)
    assert detect_format(tmp_path) == "pannuke"
    ds = open_dataset(tmp_path)
    assert ds.names == ["fold1_00000", "fold1_00001", "fold3_00000", "fold3_00001"]
    assert ds.splits == ("fold1", "fold3")
    s = ds[0]
    check_labels(s, 4)
    assert np.array_equal(s.image, images[0].astype(np.uint8))
    expected = np.zeros((24, 32), np.int64)
    expected[2:8, 2:8] = 1
    expected[2:8, 8:14] = 2
    expected[14:20, 20:28] = 3
    expected[5:8, 12:16] = 4  # the later channel wins where they overlap
    assert same_partition(s.labels, expected)
    cls = np.zeros((24, 32), np.uint8)
    cls[2:8, 2:14] = 1
    cls[14:20, 20:28] = 2
    cls[5:8, 12:16] = 5
    assert np.array_equal(s.classes, cls)
    assert s.class_names == ("background", "neoplastic", "inflammatory", "connective", "dead", "epithelial")
    assert s.meta["tissue"] == "Breast" and s.meta["split"] == "fold1"
    assert ds[1].classes.max() == 3
    for spelling in ("fold3", "3", "Fold 3", "fold_3"):
        assert open_dataset(tmp_path, format="pannuke", split=spelling).names == ["fold3_00000", "fold3_00001"]
    assert len(open_dataset(tmp_path, split=["fold1", "fold3"])) == 4
    with pytest.raises(ValueError, match="unknown split"):
        open_dataset(tmp_path, split="fold2")


def test_pannuke_uint8_images_and_pickling(tmp_path):
    import pickle

    images = np.stack([rgb(16, 16, 1)])
    masks = np.zeros((1, 16, 16, 6), np.uint8)
    masks[0, 2:5, 2:5, 3] = 1
    save_npy(tmp_path / "fold2" / "images.npy", images)
    save_npy(tmp_path / "fold2" / "masks.npy", masks)
    ds = open_dataset(tmp_path, format="pannuke")
    assert ds.names == ["fold2_00000"] and "tissue" not in ds[0].meta
    ds2 = pickle.loads(pickle.dumps(ds))
    s = ds2[0]
    assert np.array_equal(s.image, images[0]) and set(np.unique(s.classes)) == {0, 4}


# ---------------------------------------------------------------------------------------------
# lizard / consep / cpm (.mat)


def test_lizard(tmp_path):
    inst = instances(ids=(4, 9, 12)).astype(np.int32)
    for i, (folder, stem) in enumerate((("1", "consep_1"), ("2", "pannuke_2"))):
        save_png(tmp_path / f"lizard_images{folder}" / f"Lizard_Images{folder}" / f"{stem}.png", rgb(24, 32, i))
        save_mat(tmp_path / "lizard_labels" / "Lizard_Labels" / "Labels" / f"{stem}.mat",
                 inst_map=inst, id=np.array([[4], [9], [12]]), **{"class": np.array([[2], [3], [6]])},
                 bbox=np.zeros((3, 4)), centroid=np.zeros((3, 2)))
    # overlay images with the same names must be ignored
    save_png(tmp_path / "overlay" / "Overlay" / "consep_1.png", rgb(24, 32, 9))
    with open(tmp_path / "lizard_labels" / "Lizard_Labels" / "info.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerows([["Filename", "Source", "Split"], ["consep_1", "consep", 1], ["pannuke_2", "pannuke", 3]])

    assert detect_format(tmp_path) == "lizard"
    ds = open_dataset(tmp_path)
    assert ds.names == ["consep_1", "pannuke_2"] and ds.splits == ("split1", "split3")
    s = ds[0]
    check_labels(s, 3)
    assert np.array_equal(s.image, rgb(24, 32, 0))
    assert same_partition(s.labels, inst)
    cls = np.zeros_like(s.classes)
    cls[inst == 4], cls[inst == 9], cls[inst == 12] = 2, 3, 6
    assert np.array_equal(s.classes, cls)
    assert s.class_names[2] == "epithelial" and s.class_names[6] == "connective"
    assert open_dataset(tmp_path, split="split3").names == ["pannuke_2"]
    assert open_dataset(tmp_path, split="1").names == ["consep_1"]


def _consep(root: Path):
    inst = instances().astype(np.float64)
    types = np.zeros(inst.shape, np.int32)
    types[inst == 1], types[inst == 2], types[inst == 3] = 4, 6, 2
    for i, split in enumerate(("Train", "Test")):
        img = np.concatenate([rgb(24, 32, i), np.full((24, 32, 1), 255, np.uint8)], -1)  # RGBA
        save_png(root / "CoNSeP" / split / "Images" / f"{split.lower()}_1.png", img)
        save_mat(root / "CoNSeP" / split / "Labels" / f"{split.lower()}_1.mat", inst_map=inst, type_map=types,
                 inst_type=np.array([[4], [6], [2]]), inst_centroid=np.zeros((3, 2)))
    return inst, types


def test_consep(tmp_path):
    inst, types = _consep(tmp_path)
    assert detect_format(tmp_path) == "consep"
    ds = open_dataset(tmp_path)
    assert ds.names == ["test_1", "train_1"] and ds.splits == ("test", "train")
    s = open_dataset(tmp_path, split="test")[0]
    check_labels(s, 3)
    assert np.array_equal(s.image, rgb(24, 32, 1))
    assert same_partition(s.labels, inst) and np.array_equal(s.classes, types)
    assert len(s.class_names) == 8 and s.class_names[4] == "dysplastic/malignant epithelial"
    merged = open_dataset(tmp_path, merge_types=True)[0]
    assert set(np.unique(merged.classes)) == {0, 2, 3, 4} and merged.class_names[4] == "spindle-shaped"


def test_cpm(tmp_path):
    inst = instances(ids=(2, 5, 6)).astype(np.int32)
    save_png(tmp_path / "cpm15" / "Images" / "image_00.png", rgb(24, 32, 0))
    save_mat(tmp_path / "cpm15" / "Labels" / "image_00.mat", inst_map=inst)
    save_png(tmp_path / "cpm15" / "Images" / "image_01.png", rgb(24, 32, 1))
    save_mat(tmp_path / "cpm15" / "Labels" / "image_01.mat", inst_map=inst)
    for i, split in enumerate(("train", "test")):
        save_png(tmp_path / "cpm17" / split / "Images" / "image_00.png", rgb(24, 32, 5 + i))
        save_mat(tmp_path / "cpm17" / split / "Labels" / "image_00.mat", inst_map=inst)

    assert detect_format(tmp_path) == "cpm"
    with pytest.raises(ValueError, match="variant"):
        open_dataset(tmp_path)
    ds17 = open_dataset(tmp_path, variant="cpm17")
    assert ds17.name == "cpm17" and ds17.names == ["test_image_00", "train_image_00"]
    s = open_dataset(tmp_path, variant="cpm17", split="train")[0]
    assert s.name == "train_image_00" and np.array_equal(s.image, rgb(24, 32, 5))
    check_labels(s, 3)
    assert same_partition(s.labels, inst) and s.classes is None

    assert open_dataset(tmp_path, format="cpm17").names == ds17.names  # format alias = variant
    assert open_dataset(tmp_path, format="cpm15").names == ["image_00", "image_01"]
    ds15 = open_dataset(tmp_path / "cpm15")
    assert ds15.format == "cpm" and ds15.name == "cpm15" and ds15.names == ["image_00", "image_01"]
    with pytest.raises(ValueError, match="split_names"):
        open_dataset(tmp_path / "cpm15", split="test")


def test_mat_v73_gives_a_clear_error(tmp_path):
    from pathosam.datasets._io import loadmat

    p = tmp_path / "x.mat"
    # a MATLAB v7.3 file is HDF5 with a 512-byte MATLAB header
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    p.write_bytes(header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02IM" + b"\x00" * 388)
    with pytest.raises(ValueError, match="v7.3.*h5py"):
        loadmat(p, ["inst_map"])


# ---------------------------------------------------------------------------------------------
# monuseg / puma (polygons)


def _aperio_xml(polys) -> str:
    regions = []
    for i, pts in enumerate(polys, 1):
        verts = "".join(f'<Vertex X="{x}" Y="{y}" Z="0"/>' for x, y in pts)
        regions.append(f'<Region Id="{i}" Type="0"><Attributes/><Vertices>{verts}</Vertices></Region>')
    return ('<?xml version="1.0" encoding="utf-8"?><Annotations><Annotation Id="1"><Regions>'
            + "".join(regions) + "</Regions></Annotation></Annotations>")


def rect(x0, y0, x1, y1):
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def test_monuseg(tmp_path):
    polys = [
        rect(1.5, 1.5, 6.5, 4.5),  # cols 2..6, rows 2..4
        rect(4.5, 3.5, 9.5, 7.5),  # overlaps the first: the later one wins
        [(20, 20), (22, 22)],  # < 3 vertices: dropped
        rect(11.5, 11.5, 12.5, 12.5),  # one pixel, fully covered by the next
        rect(10.5, 10.5, 14.5, 14.5),
        rect(-5, -5, -1, -1),  # outside the image: no pixel, dropped
    ]
    train = tmp_path / "MoNuSeg 2018 Training Data"
    save_tif(train / "Tissue Images" / "TCGA-A.tif", rgb(20, 24, 0))
    (train / "Annotations").mkdir()
    (train / "Annotations" / "TCGA-A.xml").write_text(_aperio_xml(polys))
    test = tmp_path / "MoNuSegTestData"
    save_tif(test / "TCGA-B.tif", rgb(20, 24, 1))
    (test / "TCGA-B.xml").write_text(_aperio_xml([rect(0, 0, 3, 3)]))

    assert detect_format(tmp_path) == "monuseg"
    ds = open_dataset(tmp_path)
    assert ds.names == ["TCGA-A", "TCGA-B"] and ds.splits == ("test", "train")
    s = ds["TCGA-A"]
    check_labels(s, 3)
    assert np.array_equal(s.image, rgb(20, 24, 0))
    expected = np.zeros((20, 24), np.uint32)
    expected[2:5, 2:7] = 1
    expected[4:8, 5:10] = 2
    expected[11:15, 11:15] = 3
    assert np.array_equal(s.labels, expected)
    b = open_dataset(tmp_path, split="test")[0]
    # integer vertices: skimage.draw.polygon includes the boundary pixels (rows/cols 0..3)
    assert b.name == "TCGA-B" and np.array_equal(np.argwhere(b.labels).max(0), [3, 3]) and b.labels.sum() == 16
    # an annotation without its image is reported
    (test / "TCGA-C.xml").write_text(_aperio_xml([rect(0, 0, 3, 3)]))
    with pytest.raises(ValueError, match="TCGA-C"):
        open_dataset(tmp_path, format="monuseg")


def _feature(geometry, name="nuclei_tumor"):
    return {"type": "Feature", "geometry": geometry,
            "properties": {"objectType": "annotation", "classification": {"name": name, "color": [0, 0, 0]}}}


def _poly(*rings):
    return {"type": "Polygon", "coordinates": [[list(p) for p in r + r[:1]] for r in rings]}


def test_puma(tmp_path):
    feats = [
        _feature(_poly(rect(2, 3, 6, 8))),  # traced along pixel edges: rows 3..7, cols 2..5
        _feature(_poly(rect(10, 2, 18, 10), rect(12, 4, 16, 8)), "nuclei_lymphocyte"),  # with a hole
        _feature({"type": "MultiPolygon", "coordinates": [[[list(p) for p in rect(0, 14, 2, 16)]],
                                                          [[list(p) for p in rect(4, 14, 6, 16)]]]},
                 "nuclei_stroma"),
        _feature(_poly(rect(5, 6, 8, 9)), "nuclei_apoptosis"),  # overlaps the first: later wins
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 1]}, "properties": {}},
    ]
    rois = tmp_path / "01_training_dataset_tif_ROIs"
    anns = tmp_path / "01_training_dataset_geojson_nuclei"
    for i, kind in enumerate(("metastatic", "primary")):
        stem = f"training_set_{kind}_roi_00{i + 1}"
        rgba = np.concatenate([rgb(20, 24, i), np.full((20, 24, 1), 255, np.uint8)], -1)
        save_tif(rois / f"{stem}.tif", rgba)
        anns.mkdir(exist_ok=True)
        (anns / f"{stem}_nuclei.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
        tissue = tmp_path / "01_training_dataset_geojson_tissue"
        tissue.mkdir(exist_ok=True)
        (tissue / f"{stem}_tissue.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": []}))

    assert detect_format(tmp_path) == "puma"
    ds = open_dataset(tmp_path)
    assert ds.names == ["training_set_metastatic_roi_001", "training_set_primary_roi_002"]
    assert ds.splits == ("metastatic", "primary")
    with pytest.warns(UserWarning, match="without polygon"):
        s = open_dataset(tmp_path, split="primary")[0]
    check_labels(s, 4)
    assert np.array_equal(s.image, rgb(20, 24, 1))
    exp = np.zeros((20, 24), np.uint32)
    exp[3:8, 2:6] = 1
    exp[2:10, 10:18] = 2
    exp[4:8, 12:16] = 0  # the hole
    exp[14:16, 0:2] = 3
    exp[14:16, 4:6] = 3  # both parts of the MultiPolygon are one nucleus
    exp[6:9, 5:8] = 4
    assert np.array_equal(s.labels, exp)
    names = s.class_names
    assert names[0] == "background" and len(names) == 11
    assert names[s.classes[3, 2]] == "nuclei_tumor" and names[s.classes[2, 10]] == "nuclei_lymphocyte"
    assert names[s.classes[14, 4]] == "nuclei_stroma" and names[s.classes[7, 6]] == "nuclei_apoptosis"
    assert s.classes[s.labels == 0].max() == 0

    custom = open_dataset(tmp_path, class_names=["nuclei_tumor", "nuclei_lymphocyte"])
    with pytest.raises(ValueError, match="nuclei_stroma"):
        custom[0]


# ---------------------------------------------------------------------------------------------
# tnbc / nuinsseg / cryonuseg / glas (mask images)


def test_tnbc_components_merge_touching(tmp_path):
    base = tmp_path / "TNBC_NucleiSegmentation"
    gt = np.zeros((24, 32), np.uint8)
    gt[2:8, 2:8] = 255
    gt[2:8, 8:14] = 255  # touching: merges
    gt[8:10, 14:16] = 255  # diagonal neighbour: merges (8-connectivity)
    gt[15:20, 20:25] = 255
    for i, slide in enumerate(("01", "02")):
        rgba = np.concatenate([rgb(24, 32, i), np.zeros((24, 32, 1), np.uint8) + 255], -1)
        save_png(base / f"Slide_{slide}" / f"{slide}_1.png", rgba)
        save_png(base / f"GT_{slide}" / f"{slide}_1.png", gt)
    save_png(tmp_path / "__MACOSX" / "TNBC_NucleiSegmentation" / "Slide_01" / "01_1.png", rgb(4, 4))
    (base / "Slide_01" / "._01_1.png").write_bytes(b"junk")

    assert detect_format(tmp_path) == "tnbc"
    ds = open_dataset(tmp_path)
    assert ds.names == ["01_1", "02_1"]
    s = ds[1]
    check_labels(s, 2)
    assert np.array_equal(s.image, rgb(24, 32, 1))
    assert s.labels[2, 2] == s.labels[2, 13] == s.labels[9, 15] != s.labels[16, 21]
    with pytest.raises(ValueError, match="split_names"):
        open_dataset(tmp_path, split="train")


def test_nuinsseg(tmp_path):
    data = tmp_path / "data"
    for i, tissue in enumerate(("human bladder", "human brain")):
        save_png(data / tissue / "tissue images" / "01.png", rgb(24, 32, i))
        save_tif(data / tissue / "label masks modify" / "01.tif", instances(ids=(1, 2, 7)).astype(np.int16))
        save_tif(data / tissue / "mask binary" / "01.tif", np.zeros((24, 32), np.uint8))
    assert detect_format(tmp_path) == "nuinsseg"
    ds = open_dataset(tmp_path)
    assert ds.names == ["human_bladder_01", "human_brain_01"]  # stems repeat -> tissue prefix
    s = ds["human_brain_01"]
    check_labels(s, 3)
    assert np.array_equal(s.image, rgb(24, 32, 1)) and s.meta["tissue"] == "human brain"
    assert same_partition(s.labels, instances())


def test_cryonuseg(tmp_path):
    save_tif(tmp_path / "tissue images" / "Human_Adrenal_01.tif", rgb(24, 32, 0))
    save_tif(tmp_path / "tissue images" / "Human_Brain_02.tif", rgb(24, 32, 1))
    for stem in ("Human_Adrenal_01", "Human_Brain_02"):
        save_tif(tmp_path / "Annotator 1 (biologist)" / "label masks modify" / f"{stem}.tif",
                 instances().astype(np.uint16))
        nested = tmp_path / "Annotator 2 (bioinformatician)" / "Annotator 2 (bioinformatician)"
        save_tif(nested / "label masks modify" / f"{stem}.tif", (instances() > 0).astype(np.uint16))
    assert detect_format(tmp_path) == "cryonuseg"
    ds = open_dataset(tmp_path)
    assert ds.names == ["Human_Adrenal_01", "Human_Brain_02"]
    s = ds[1]
    check_labels(s, 3)
    assert np.array_equal(s.image, rgb(24, 32, 1)) and s.meta["annotator"] == "Annotator 1 (biologist)"
    b3 = open_dataset(tmp_path, annotator="b3")[0]
    check_labels(b3, 1)
    with pytest.raises(ValueError, match="no annotator folder"):
        open_dataset(tmp_path, annotator="b2")


def test_glas_glands(tmp_path):
    d = tmp_path / "Warwick_QU_Dataset"
    d.mkdir()
    for i, stem in enumerate(("train_1", "testA_1", "testB_2")):
        Image.fromarray(rgb(24, 32, i)).save(d / f"{stem}.bmp")
        Image.fromarray(instances(ids=(3, 8, 20)).astype(np.uint8)).save(d / f"{stem}_anno.bmp")
    with open(d / "Grade.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["name", " patient ID", " grade (GlaS)"], ["train_1", "1", " benign"]])
    assert detect_format(tmp_path) == "glas"
    ds = open_dataset(tmp_path)
    assert ds.names == ["testA_1", "testB_2", "train_1"] and ds.splits == ("testA", "testB", "train")
    s = ds["train_1"]
    check_labels(s, 3)
    assert np.array_equal(s.image, rgb(24, 32, 0)) and s.meta["grade"] == "benign"
    assert same_partition(s.labels, instances())
    assert open_dataset(tmp_path, split="test").names == ["testA_1", "testB_2"]
    assert open_dataset(tmp_path, split="testB").names == ["testB_2"]


# ---------------------------------------------------------------------------------------------
# lynsec / nuclick / srsanet (.npy)


def test_lynsec(tmp_path):
    def sample(seed):
        return np.concatenate([rgb(24, 32, seed), instances(ids=(1, 4, 6))[..., None].astype(np.uint8)], -1)

    save_npy(tmp_path / "lynsec 1" / "0.npy", sample(0))
    save_npy(tmp_path / "lynsec 2" / "0.npy", sample(1))
    save_npy(tmp_path / "lynsec 2" / "3_l2.npy", sample(2))  # skipped: label mismatch (i < 35)
    save_npy(tmp_path / "lynsec 2" / "40_l2.npy", sample(3))
    assert detect_format(tmp_path) == "lynsec"
    ds = open_dataset(tmp_path)
    assert ds.names == ["lynsec_1_0", "lynsec_2_0", "lynsec_2_40_l2"] and ds.splits == ("h&e", "ihc")
    assert open_dataset(tmp_path, split="ihc").names == ["lynsec_1_0"]
    he = open_dataset(tmp_path, split="he")
    assert he.names == ["lynsec_2_0", "lynsec_2_40_l2"]
    s = he[1]
    check_labels(s, 3)
    assert np.array_equal(s.image, rgb(24, 32, 3)) and same_partition(s.labels, instances())
    assert "lynsec_2_3_l2" in open_dataset(tmp_path, skip_mismatched=False).names


def test_nuclick(tmp_path):
    base = tmp_path / "IHC_nuclick" / "IHC"
    for i, split in enumerate(("Train", "Validation")):
        save_png(base / "images" / split / f"img_{i}.png", rgb(24, 32, i))
        save_npy(base / "masks" / split / f"img_{i}.npy", instances(ids=(2, 3, 9)).astype(np.int32))
    assert detect_format(tmp_path) == "nuclick"
    ds = open_dataset(tmp_path)
    assert ds.names == ["img_0", "img_1"] and ds.splits == ("train", "validation")
    for spelling in ("Validation", "val", "validation"):
        assert open_dataset(tmp_path, split=spelling).names == ["img_1"]
    s = ds[1]
    check_labels(s, 3)
    assert np.array_equal(s.image, rgb(24, 32, 1)) and same_partition(s.labels, instances())


def test_srsanet(tmp_path):
    base = tmp_path / "IHC_TMA_dataset"
    m = np.zeros((2, 24, 32), np.uint8)
    m[0, 2:8, 2:8] = 1
    m[1, 2:8, 8:14] = 1  # touches the channel-0 nucleus: merged
    m[0, 14:20, 20:28] = 1
    m[1, 16:18, 22:24] = 1  # overlap (sum 2): its own region, as the reference
    for i, stem in enumerate(("fold1_1", "fold3_7")):
        save_png(base / "images" / f"{stem}.png", rgb(24, 32, i))
        save_npy(base / "masks" / f"{stem}.npy", m)
    assert detect_format(tmp_path) == "srsanet"
    ds = open_dataset(tmp_path)
    assert ds.names == ["fold1_1", "fold3_7"] and ds.splits == ("fold1", "fold3")
    assert open_dataset(tmp_path, split="test").names == ["fold3_7"]
    assert open_dataset(tmp_path, split="1").names == ["fold1_1"]
    s = ds[0]
    check_labels(s, 3)
    assert s.labels[2, 2] == s.labels[2, 13]
    assert s.labels[16, 22] != s.labels[14, 20] and s.labels[16, 22] > 0


# ---------------------------------------------------------------------------------------------
# detection errors


def test_auto_detection_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="(?s)cannot recognise.*folder: DIR/images"):
        open_dataset(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        open_dataset(tmp_path / "missing")
    with pytest.raises(ValueError, match="unknown dataset format 'nope'"):
        open_dataset(tmp_path / "empty", format="nope")
    with pytest.raises(ValueError, match="no tnbc samples"):
        open_dataset(tmp_path / "empty", format="tnbc")
    # two layouts in one folder: ambiguous
    amb = tmp_path / "amb"
    save_png(amb / "Slide_01" / "a.png", rgb(8, 8))
    save_png(amb / "GT_01" / "a.png", np.zeros((8, 8), np.uint8))
    Image.fromarray(rgb(8, 8)).save(amb / "x.bmp")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(amb / "x_anno.bmp")
    with pytest.raises(ValueError, match="ambiguous.*glas.*tnbc"):
        open_dataset(amb)
    assert len(open_dataset(amb, format="tnbc")) == 1


# ---------------------------------------------------------------------------------------------
# padding and splits


def _small_sample():
    lab = np.zeros((256, 200), np.uint32)
    lab[10:20, 10:20] = 1
    cls = (lab > 0).astype(np.uint8) * 3
    return Sample("s", rgb(256, 200, 5), lab, cls, ("background", "a", "b", "c"))


def test_pad_sample_top_left():
    s = _small_sample()
    p = pad_sample(s, (512, 512))
    assert p.image.shape == (512, 512, 3) and p.labels.shape == (512, 512) and p.classes.shape == (512, 512)
    assert np.array_equal(p.image[:256, :200], s.image) and not p.image[256:].any() and not p.image[:, 200:].any()
    assert np.array_equal(p.labels[:256, :200], s.labels) and p.labels.dtype == np.uint32
    assert p.meta["padding"] == ((0, 256), (0, 312)) and p.name == "s" and p.class_names == s.class_names
    assert np.array_equal(unpad(p.labels, p.meta["padding"]), s.labels)
    assert s.image.shape == (256, 200, 3)  # the input is not modified


def test_pad_sample_center_and_no_crop():
    s = _small_sample()
    p = pad_sample(s, (512, 512), mode="center")
    assert p.meta["padding"] == ((128, 128), (156, 156))
    assert np.array_equal(p.image[128:384, 156:356], s.image)
    assert np.array_equal(unpad(p.image, p.meta["padding"]), s.image)
    odd = pad_sample(s, (259, 201), mode="center")
    assert odd.meta["padding"] == ((1, 2), (0, 1))
    big = pad_sample(s, (128, 128))  # larger than the target: untouched, never cropped
    assert big.image.shape == (256, 200, 3) and big.meta["padding"] == ((0, 0), (0, 0))
    with pytest.raises(ValueError, match="padding mode"):
        pad_sample(s, mode="bottom")


def test_split_names_deterministic():
    names = [f"img{i:03d}" for i in range(50)]
    a = split_names(names, (0.1, 0.2), seed=7)
    b = split_names(list(reversed(names)), (0.1, 0.2), seed=7)
    assert a == b  # same names + seed -> same split, whatever the input order
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (35, 5, 10)
    assert sorted(a["train"] + a["val"] + a["test"]) == names
    assert split_names(names, (0.1, 0.2), seed=8) != a
    d = split_names(names)
    assert (len(d["val"]), len(d["test"])) == (6, 10)
    assert split_names(["x"], (0.5, 0.5)) in ({"train": [], "val": [], "test": ["x"]},
                                              {"train": [], "val": ["x"], "test": []})
    with pytest.raises(ValueError, match="unique"):
        split_names(["a", "a"])
    with pytest.raises(ValueError, match="fractions"):
        split_names(names, (0.6, 0.6))


def test_split_names_with_dataset_select(tmp_path):
    for i in range(6):
        save_png(tmp_path / "images" / f"im{i}.png", rgb(8, 8, i))
        save_tif(tmp_path / "labels" / f"im{i}.tif", np.zeros((8, 8), np.uint16))
    ds = open_dataset(tmp_path)
    parts = split_names(ds.names, (0.2, 0.3), seed=1)
    views = {k: ds.select(v) for k, v in parts.items()}
    assert sum(len(v) for v in views.values()) == 6
    assert views["test"].names == parts["test"]


# ---------------------------------------------------------------------------------------------
# real data


def _manifest_counts(root: Path) -> dict[str, int]:
    manifest = root / "manifest.csv"
    if not manifest.is_file():
        return {}
    with open(manifest, newline="") as fh:
        return {row["name"]: int(row["n_nuclei"]) for row in csv.DictReader(fh) if row.get("n_nuclei")}


@pytest.mark.parametrize("dataset", ["monuseg", "cpm15", "gbm40"])
def test_real_data_through_folder(data_dir, dataset):
    root = data_dir / dataset
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    counts = _manifest_counts(root)
    assert detect_format(root) == "folder"
    ds = open_dataset(root, format="folder")
    assert ds.name == dataset
    if counts:
        assert sorted(ds.names) == sorted(counts)
    if dataset == "monuseg":
        assert len(ds) == 18
    total = 0
    for s in ds:
        assert s.image.dtype == np.uint8 and s.image.ndim == 3 and s.image.shape[2] == 3
        if dataset == "monuseg":
            assert s.image.shape == (1000, 1000, 3)
        assert s.labels.shape == s.image.shape[:2] and s.labels.dtype == np.uint32
        n = int(s.labels.max())
        if counts:
            assert n == counts[s.name], s.name
        assert len(np.unique(s.labels)) == n + 1  # consecutive ids
        total += n
    if counts:
        assert total == sum(counts.values())


def test_relabel_consecutive_dtypes():
    from pathosam.datasets import relabel_consecutive

    lab = np.array([[0, 7], [2**40, 7]], np.uint64)
    out = relabel_consecutive(lab)
    assert out.dtype == np.uint32 and out.tolist() == [[0, 1], [2, 1]]
    assert relabel_consecutive(np.array([[0, 3.0]])).tolist() == [[0, 1]]
    with pytest.raises(ValueError, match="non-integer"):
        relabel_consecutive(np.array([[0, 1.5]]))
