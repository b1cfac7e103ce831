"""The class head shipped with pathosam_small: CoNSeP's 4 classes, offline (docs/models.md)."""

from __future__ import annotations

import pytest

import pathosam
from pathosam import registry
from pathosam.semantic import CONSEP

HEAD = f"{registry.DEFAULT_MODEL}_classes"


@pytest.fixture(scope="module")
def classified_model():
    return pathosam.load_model(semantic_decoder=True, device="cpu", progress=False)  # offline: bundled


def test_bundled_head_is_small_verified_and_consep(classified_model):
    path = registry.path(HEAD)
    assert path.is_file() and path.stat().st_size < 4 * 2**20
    registry.verify_file(HEAD, path)
    weights = sum(p.stat().st_size for p in path.parent.glob("*.pt"))
    assert weights < 30 * 2**20  # everything the package ships
    assert classified_model.class_scheme is CONSEP
    assert registry.get(registry.DEFAULT_MODEL).semantic_decoder == HEAD


def _validation_tiles(data_dir, n):
    from pathosam.datasets import open_dataset, split_names

    root = data_dir / "consep"
    if not root.is_dir():
        pytest.skip("shared CoNSeP tiles not present")
    ds = open_dataset(root)
    val = split_names(ds.names, (0.25, 0.0), seed=0, groups=ds.sources)["val"]  # never trained on
    tiles = [ds[name] for name in val if ds[name].labels.max() > 0]
    return tiles[:: max(1, len(tiles) // n)][:n]  # spread over the 7 source images


def test_classes_of_true_nuclei_on_validation_tiles(classified_model, data_dir):
    """The head alone: each ground-truth nucleus of 12 validation tiles (spread over the 7
    validation images) gets the majority class
    of the head's maps inside it (benchmarks/bench_consep.py scores all 112 tiles)."""
    from pathosam.evaluation.metrics import ClassificationCounts, classification_counts, classification_scores
    from pathosam.inference import input_size, resolve_tiling
    from pathosam.semantic import nucleus_classes

    m = classified_model
    counts = ClassificationCounts.empty(CONSEP.n_classes)
    for s in _validation_tiles(data_dir, 12):
        ts, hl = resolve_tiling(s.image.shape[:2], "auto", None, input_size(m))
        maps = m.semantic_maps(m.embed(s.image, tile_shape=ts, halo=hl, progress=False), image=s.image, progress=False)
        cls, _ = nucleus_classes(s.labels, maps)
        counts += classification_counts(s.labels, s.labels, cls, s.classes, CONSEP.n_classes)
    scores = classification_scores(counts)
    print("accuracy", round(scores["accuracy"], 3), {c: round(v["f1"], 3) for c, v in scores["classes"].items()})
    assert scores["accuracy"] >= MIN_ACCURACY
    # inflammatory and epithelial are recognised, not only the majority class (spindle-shaped)
    assert scores["classes"][2]["f1"] >= MIN_F1_INFLAMMATORY and scores["classes"][3]["f1"] >= MIN_F1_EPITHELIAL


def test_cli_classes_offline_with_the_default_model(tmp_path, data_dir):
    import pandas as pd
    import tifffile

    from pathosam.cli import main

    s = _validation_tiles(data_dir, 1)[0]
    image = tmp_path / f"{s.name}.tif"
    tifffile.imwrite(image, s.image)
    assert main(["segment", str(image), "-o", str(tmp_path / "out"), "--classes", "-q"]) == 0
    table = pd.read_csv(tmp_path / "out" / f"{s.name}.csv")
    assert len(table) > 0 and set(table["class_name"].fillna("")) <= set(CONSEP.names[1:]) | {""}
    assert table["class_probability"].between(0, 1).all()


# measured on these 12 tiles: accuracy 0.620, F1 inflammatory 0.674, epithelial 0.799 (spindle-shaped
# 0.333, other 0.061); minus a margin for other CPUs
MIN_ACCURACY = 0.55
MIN_F1_INFLAMMATORY = 0.6
MIN_F1_EPITHELIAL = 0.7
