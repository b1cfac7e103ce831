"""Automatic evaluation: grid search of AIS / AMG post-processing and scoring on a dataset."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from pathosam.inference import decoder_maps
from pathosam.evaluation.grid_search import (
    QUICK_GRIDS,
    ais_grid_labels,
    evaluate_automatic,
    prepare_groundtruth,
    score_labels,
)
from pathosam.evaluation.metrics import mean_segmentation_accuracy
from pathosam.instances import ais_from_maps

from .test_segment import MapsFromImage, disk_image


@dataclass
class S:
    name: str
    image: np.ndarray
    labels: np.ndarray


def test_grid_labels_equal_ais_from_maps_for_every_setting(vectors):
    q = np.load(vectors / "ais" / "noisy_maps_gbm40.npz")
    maps = q["maps"].astype(np.float32)[:, :200, :240]
    grid = {"center_distance_threshold": (0.4, 0.6), "boundary_distance_threshold": (0.5, 0.7),
            "distance_smoothing": (1.0, 2.0), "min_size": (0, 50)}
    n = 0
    for params, seg in ais_grid_labels(maps, grid):
        np.testing.assert_array_equal(seg, ais_from_maps(maps, **params), err_msg=str(params))
        n += 1
    assert n == 16


def test_prepare_groundtruth_splits_disconnected_labels():
    gt = np.zeros((10, 10), np.uint16)
    gt[1:3, 1:3] = 5
    gt[6:8, 6:8] = 5  # same id, two pieces
    gt[3, 3] = 5  # diagonal neighbour of the first piece: 8-connected
    out = prepare_groundtruth(gt)
    assert out.dtype == np.uint32 and out.max() == 2 and out[3, 3] == out[1, 1]


def test_score_labels_keys_and_perfect_case():
    _, truth = disk_image((120, 150), seed=1, n=12)
    s = score_labels(truth, truth)
    assert s["mSA"] == s["SA50"] == s["SA75"] == s["PQ"] == s["AJI"] == 1.0
    assert s["n_pred"] == s["n_gt"] == 12
    assert s["precision@0.50"] == s["recall@0.95"] == s["f1@0.75"] == 1.0


def test_ais_grid_search_on_val_then_test():
    val = [S(f"v{k}", *disk_image((160, 200), seed=10 + k, n=20)) for k in range(2)]
    test = [S(f"t{k}", *disk_image((160, 200), seed=20 + k, n=20)) for k in range(2)]
    ev = evaluate_automatic(MapsFromImage(), test, "ais", val=val, grid=QUICK_GRIDS["ais"], tile_shape=None,
                            progress=False)
    assert len(ev.grid) == 3 * 3 * 2
    best = ev.grid["mSA"].max()
    assert ev.grid.loc[ev.grid["mSA"].idxmax(), "mSA"] == best
    for k in ("center_distance_threshold", "boundary_distance_threshold", "min_size"):
        assert ev.params[k] == ev.grid.loc[ev.grid["mSA"].idxmax(), k]
    # the test scores are those of the chosen parameters, recomputed independently
    model = MapsFromImage()
    for sample, row in zip(test, ev.per_image.itertuples()):
        maps = decoder_maps(model, sample.image, tile_shape=None)
        seg = ais_from_maps(maps, **ev.params)
        assert row.mSA == pytest.approx(mean_segmentation_accuracy(seg, prepare_groundtruth(sample.labels)))
    assert (ev.per_image["SA50"] == 1.0).all()  # every disk found (the fake's smoothed rims lower IoU)
    summary = ev.summary()
    assert summary["n_images"] == 2 and summary["mSA"] == pytest.approx(ev.per_image["mSA"].mean())


def test_padding_small_images_is_cropped_back():
    test = [S("small", *disk_image((100, 120), seed=3, n=8))]
    ev = evaluate_automatic(MapsFromImage(), test, "ais", tile_shape=None, pad_to=(256, 256), progress=False,
                            params={"min_size": 0})
    assert ev.predictions["small"].shape == (100, 120)
    padded = np.zeros((256, 256, 3), np.uint8)  # zeros at the bottom / right, as the reference
    padded[:100, :120] = test[0].image
    expected = ais_from_maps(decoder_maps(MapsFromImage(), padded, tile_shape=None), min_size=0)[:100, :120]
    assert ev.per_image["mSA"].iloc[0] == pytest.approx(
        mean_segmentation_accuracy(expected, prepare_groundtruth(test[0].labels)))


def test_amg_evaluation_runs_with_the_tiny_model(tiny_model, data_dir):
    from pathosam.datasets import open_dataset

    ds = open_dataset(data_dir / "gbm40", "folder")
    sample = ds[0]
    crop = S(sample.name, sample.image[:128, :128], sample.labels[:128, :128])
    ev = evaluate_automatic(tiny_model, [crop], "amg", val=[crop], grid=QUICK_GRIDS["amg"], points_per_side=4,
                            tile_shape=None, progress=False)
    assert len(ev.grid) == 4
    assert set(ev.params) == {"pred_iou_thresh", "stability_score_thresh"}
    row = ev.per_image.iloc[0]
    assert 0.0 <= row["mSA"] <= 1.0 and row["n_gt"] > 0


def test_ais_needs_a_decoder():
    model = MapsFromImage()
    model.decoder = None
    with pytest.raises(ValueError, match="no instance decoder"):
        evaluate_automatic(model, [], "ais")
