"""Per-nucleus class tables (``classes/NAME.csv``), the CoNSeP tile reader and grouped splits."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile

from pathosam.datasets import detect_format, open_dataset, split_names


def _write_tile(root: Path, name: str, labels: np.ndarray, classes: dict[int, int] | None) -> None:
    for sub in ("images", "labels", "classes"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(name))
    tifffile.imwrite(root / "images" / f"{name}.tif", rng.integers(0, 255, (*labels.shape, 3), dtype=np.uint8))
    tifffile.imwrite(root / "labels" / f"{name}.tif", labels.astype(np.uint16))
    if classes is not None:
        with open(root / "classes" / f"{name}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "class"])
            w.writerows(sorted(classes.items()))


def _labels() -> np.ndarray:
    lab = np.zeros((16, 16), np.uint16)
    lab[1:5, 1:5] = 3  # stored ids need not be consecutive: the table refers to them
    lab[8:12, 8:14] = 7
    return lab


def test_folder_with_class_table_builds_the_class_map(tmp_path):
    _write_tile(tmp_path, "a", _labels(), {3: 2, 7: 4})
    ds = open_dataset(tmp_path)
    assert ds.format == "folder"
    s = ds[0]
    assert s.labels.max() == 2  # renumbered 1..N
    assert s.classes[2, 2] == 2 and s.classes[9, 9] == 4 and s.classes[0, 0] == 0
    # the classes follow the objects through the renumbering
    assert set(np.unique(s.classes[s.labels == 1])) == {2} and set(np.unique(s.classes[s.labels == 2])) == {4}


def test_class_table_errors_name_the_file(tmp_path):
    _write_tile(tmp_path, "a", _labels(), {3: 2})  # id 7 has no row
    with pytest.raises(ValueError, match=r"a\.csv.*no class for label id\(s\) \[7\]"):
        open_dataset(tmp_path)[0]
    (tmp_path / "classes" / "a.csv").write_text("label,type\n3,1\n")
    with pytest.raises(ValueError, match=r"a\.csv: a class table needs the columns 'id' and 'class'"):
        open_dataset(tmp_path)[0]
    (tmp_path / "classes" / "a.csv").write_text("id,class\n3,x\n")
    with pytest.raises(ValueError, match=r"a\.csv, line 2: id and class must be whole numbers"):
        open_dataset(tmp_path)[0]


def test_consep_tiles_format_groups_tiles_by_source_image(tmp_path):
    for img in (1, 2, 3, 4):
        for tile in range(3):
            _write_tile(tmp_path, f"consep_train_{img}_{tile:03d}", _labels(), {3: 1, 7: 3})
    assert detect_format(tmp_path) == "consep_tiles"
    ds = open_dataset(tmp_path)
    assert ds.class_names == ("background", "other", "inflammatory", "epithelial", "spindle-shaped")
    assert ds.sources["consep_train_2_001"] == "train_2"
    assert ds[0].meta["source"] == "train_1"
    parts = split_names(ds.names, (0.25, 0.25), seed=3, groups=ds.sources)
    for k in ("train", "val", "test"):
        assert len(parts[k]) % 3 == 0 and parts[k]
    sides = {ds.sources[n]: k for k, names in parts.items() for n in names}
    assert len(sides) == 4  # every source image on exactly one side
    for k, names in parts.items():
        assert all(sides[ds.sources[n]] == k for n in names)


def test_grouped_split_equals_the_plain_split_with_singleton_groups():
    names = [f"img{i:02d}" for i in range(27)]
    for seed in (0, 1, 42):
        plain = split_names(names, (0.25, 0.1), seed=seed)
        assert split_names(names, (0.25, 0.1), seed=seed, groups={n: n for n in names}) == plain
        assert split_names(names, (0.25, 0.1), seed=seed, groups={}) == plain


def test_shared_consep(data_dir):
    root = data_dir / "consep"
    if not root.is_dir():
        pytest.skip("shared CoNSeP tiles not present")
    ds = open_dataset(root)
    assert ds.format == "consep_tiles" and len(ds) == 432
    assert len(set(ds.sources.values())) == 27
    s = ds["consep_train_12_003"]
    ids = np.unique(s.labels)[1:]
    # every nucleus has exactly one class, 1..4
    for i in ids[:20]:
        c = np.unique(s.classes[s.labels == i])
        assert len(c) == 1 and 1 <= c[0] <= 4
    assert not s.classes[s.labels == 0].any()
