"""Iterative-prompting evaluation (pathosam.evaluation.iterative_prompting).

* Initial prompts against ``vectors/interactive/interactive.npz`` (micro-sam's
  ``get_centers_and_bounding_boxes`` mode 'v' and ``_get_batched_prompts``): exact.
* The correction loop with a deterministic fake predictor on a synthetic label image: point
  accumulation, box kept, multimask only at the start, best-IoU selection, mask feedback, what
  the correction sampler receives, independence of ``batch_size``, and perfect scores for an oracle.
* ``PathoSAM.predict_batch`` equals per-object ``predict`` (tiny reference model).
* The full protocol (8 iterations, point and box start) with the tiny model on GBM40 ``gbm40_05``,
  on a seeded subset of objects (5 / 3 of 104) to keep the test short: every prompt costs
  ~0.1-0.3 s of mask decoder on 2 CPU cores, batched or not.
"""

from __future__ import annotations

import csv
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile

import pathosam.prompt_sampling as prompt_sampling
from pathosam.evaluation.iterative_prompting import (
    InteractiveResult,
    _relabel_sequential,
    initial_box_prompts,
    initial_point_prompts,
    object_prompts,
    run_interactive,
    write_interactive_report,
)
from pathosam.evaluation.metrics import mean_segmentation_accuracy


# ---------------------------------------------------------------------------- vectors
@pytest.fixture(scope="module")
def ivec(vectors):
    return dict(np.load(vectors / "interactive" / "interactive.npz"))


def test_initial_prompts_equal_vectors(ivec):
    gt = ivec["gt"]
    ids, centers, bboxes = object_prompts(gt)
    np.testing.assert_array_equal(ids, ivec["gt_ids"])
    np.testing.assert_array_equal(centers, ivec["centers_yx"])
    np.testing.assert_array_equal(bboxes, ivec["bboxes_yxyx"])
    points, labels = initial_point_prompts(centers)
    assert points.shape == ivec["point_prompts_xy"].shape and points.dtype == np.int64
    np.testing.assert_array_equal(points, ivec["point_prompts_xy"])
    np.testing.assert_array_equal(labels, ivec["point_labels"])
    boxes = initial_box_prompts(bboxes)
    np.testing.assert_array_equal(boxes, ivec["box_prompts_xyxy"])
    _, centroids, _ = object_prompts(gt, mode="p")
    np.testing.assert_allclose(centroids, ivec["centroids_yx"], rtol=0, atol=1e-12)


def test_gt_relabelling_equals_vectors(ivec, data_dir):
    raw = tifffile.imread(data_dir / "gbm40" / "labels" / "gbm40_05.tif")
    np.testing.assert_array_equal(_relabel_sequential(raw.astype(np.uint32)), ivec["gt"])


def test_centre_tie_break_and_border_padding():
    gt = np.zeros((12, 14), dtype=np.uint16)
    gt[0:3, 0:5] = 4  # touches the top and left border: padding gives it a boundary there
    gt[5:10, 6:13] = 9  # 5 x 7 interior rectangle
    gt[6:9, 2:4] = 2
    ids, centers, bboxes = object_prompts(gt)
    np.testing.assert_array_equal(ids, [2, 4, 9])
    # object 4: row 1, cols 1..3 all at distance 1 from the inner boundary -> first in row-major order
    # object 9: rows 7, cols 8..10 at distance 2 -> (7, 8); object 2 is all boundary -> its first pixel
    np.testing.assert_array_equal(centers, [[6, 2], [1, 1], [7, 8]])
    np.testing.assert_array_equal(bboxes, [[6, 2, 9, 4], [0, 0, 3, 5], [5, 6, 10, 13]])
    np.testing.assert_array_equal(initial_box_prompts(bboxes), [[2, 6, 4, 9], [0, 0, 5, 3], [6, 5, 13, 10]])
    p, lab = initial_point_prompts(np.array([[6.9, 2.2]]))
    np.testing.assert_array_equal(p, [[[2, 6]]])
    np.testing.assert_array_equal(lab, [[1]])


# ---------------------------------------------------------------------------- fake predictor
def _synthetic_gt() -> np.ndarray:
    gt = np.zeros((64, 80), dtype=np.int32)
    gt[0:10, 0:12] = 3  # border object
    gt[20:34, 5:19] = 7
    gt[20:34, 19:30] = 8  # touches 7
    yy, xx = np.mgrid[:64, :80]
    gt[(yy - 45) ** 2 + (xx - 55) ** 2 <= 8**2] = 20
    gt[50:60, 10:22] = 21
    gt[5:15, 60:75] = 30
    return gt


class FakeModel:
    """Deterministic stand-in for PathoSAM: returns the GT object under the first point / box centre.

    Multimask: 3 candidates with IoUs (0.2, 0.1, 0.9): index 2 is the GT mask, 0 is empty, 1 is the
    whole image. Low-res logits are filled with a value unique to (call, object, candidate).
    """

    def __init__(self, gt: np.ndarray):
        self.gt = _relabel_sequential(gt.astype(np.uint32))
        self.calls: list[dict] = []
        self.embedded = 0

    def embed(self, image, tile_shape=None, normalization="none", progress=False):
        assert tile_shape is None
        self.embedded += 1
        return SimpleNamespace(tiled=False, image_shape=image.shape[:2], tag="fake-embedding")

    def predict_batch(self, emb, points=None, point_labels=None, boxes=None, mask_input=None, multimask=False):
        assert emb.tag == "fake-embedding"
        k = len(self.calls)
        self.calls.append({
            "points": None if points is None else np.array(points),
            "labels": None if point_labels is None else np.array(point_labels),
            "boxes": None if boxes is None else np.array(boxes),
            "mask_input": None if mask_input is None else np.array(mask_input),
            "multimask": multimask,
        })
        b = len(points) if points is not None else len(boxes)
        H, W = self.gt.shape
        c = 3 if multimask else 1
        masks = np.zeros((b, c, H, W), dtype=bool)
        iou = np.zeros((b, c), dtype=np.float32)
        low = np.zeros((b, c, 256, 256), dtype=np.float32)
        for j in range(b):
            if boxes is not None:
                x0, y0, x1, y1 = boxes[j]
                y, x = (y0 + y1 - 1) // 2, (x0 + x1 - 1) // 2
            else:
                x, y = (int(v) for v in points[j, 0])
            obj = self.gt == self.gt[y, x]
            if multimask:
                masks[j, 1] = True
                masks[j, 2] = obj
                iou[j] = (0.2, 0.1, 0.9)
            else:
                masks[j, 0] = obj
                iou[j] = 0.5
            for cc in range(c):
                low[j, cc] = 1000 * k + 10 * j + cc
        self.calls[-1]["out_low"] = low
        return masks, iou, low


@pytest.fixture()
def sampler_spy(monkeypatch):
    seen = []
    real = prompt_sampling.sample_correction_points

    def spy(pred, gt, rng):
        seen.append((np.array(pred), np.array(gt)))
        return real(pred, gt, rng)

    monkeypatch.setattr(prompt_sampling, "sample_correction_points", spy)
    return seen


def test_correction_loop_point_start(sampler_spy):
    gt = _synthetic_gt()
    model = FakeModel(gt)
    n_it, bs = 5, 4
    res = run_interactive(model, np.zeros((*gt.shape, 3), np.uint8), gt, start="point", n_iterations=n_it,
                          use_masks=True, seed=3, batch_size=bs)
    n = 6
    n_batches = 2
    assert model.embedded == 1
    assert len(model.calls) == n_it * n_batches
    gt_seq = model.gt
    ids, centers, _ = object_prompts(gt_seq)
    p0, l0 = initial_point_prompts(centers)
    for it in range(n_it):
        batch = model.calls[it * n_batches:(it + 1) * n_batches]
        pts = np.concatenate([c["points"] for c in batch])
        labs = np.concatenate([c["labels"] for c in batch])
        assert all(c["boxes"] is None for c in batch)
        assert all(c["multimask"] == (it == 0) for c in batch)
        assert pts.shape == (n, 1 + 2 * it, 2) and labs.shape == (n, 1 + 2 * it)
        np.testing.assert_array_equal(pts[:, :1], p0)  # the initial point stays first
        np.testing.assert_array_equal(labs, np.concatenate([l0] + [[[1, 0]] * n] * it, axis=1))
        if it > 0:  # points accumulate: the previous prompt is a prefix
            prev = np.concatenate([c["points"] for c in model.calls[(it - 1) * n_batches:it * n_batches]])
            np.testing.assert_array_equal(pts[:, : prev.shape[1]], prev)
        # mask feedback: previous iteration's logits of the kept mask (best IoU = candidate 2 at it 0)
        if it == 0:
            assert all(c["mask_input"] is None for c in batch)
        else:
            prev_calls = model.calls[(it - 1) * n_batches:it * n_batches]
            best = 2 if it == 1 else 0
            expected = np.concatenate([c["out_low"][:, best : best + 1] for c in prev_calls])
            got = np.concatenate([c["mask_input"] for c in batch])
            np.testing.assert_array_equal(got, expected)
    # the sampler saw the kept masks (= GT objects) and the GT object masks, once per correction
    assert len(sampler_spy) == n_it - 1
    obj = gt_seq[None] == ids[:, None, None].astype(np.uint32)
    for pred, g in sampler_spy:
        np.testing.assert_array_equal(g, obj)
        np.testing.assert_array_equal(pred, obj)
    # with a perfect prediction: positives inside the object, negatives in the ring around it
    for k in range(1, 1 + 2 * (n_it - 1), 2):
        pos, neg = res.points_xy[:, k].astype(int), res.points_xy[:, k + 1].astype(int)
        assert (gt_seq[pos[:, 1], pos[:, 0]] == ids).all()
        assert (gt_seq[neg[:, 1], neg[:, 0]] != ids).all()
    # oracle scores
    np.testing.assert_array_equal(res.msa, np.ones(n_it))
    np.testing.assert_array_equal(res.sa50, np.ones(n_it))
    np.testing.assert_array_equal(res.sa75, np.ones(n_it))
    np.testing.assert_array_equal(res.n_points, 1 + 2 * np.arange(n_it))
    assert res.boxes_xyxy is None and len(res.labels) == n_it
    assert all(lab.dtype == np.uint32 and lab.max() == n for lab in res.labels)


def test_correction_loop_box_start_without_masks():
    gt = _synthetic_gt()
    model = FakeModel(gt)
    emb = SimpleNamespace(tiled=False, image_shape=gt.shape, tag="fake-embedding")
    res = run_interactive(model, None, gt, start="box", n_iterations=4, seed=1, batch_size=32, embeddings=emb)
    assert model.embedded == 0 and len(model.calls) == 4
    _, _, bboxes = object_prompts(model.gt)
    boxes0 = initial_box_prompts(bboxes)
    for it, c in enumerate(model.calls):
        np.testing.assert_array_equal(c["boxes"], boxes0)  # box kept in every iteration
        assert c["multimask"] is False and c["mask_input"] is None
        if it == 0:
            assert c["points"] is None and c["labels"] is None
        else:
            assert c["points"].shape == (6, 2 * it, 2)
            np.testing.assert_array_equal(c["labels"], np.tile([1, 0], (6, it)))
            if it > 1:
                np.testing.assert_array_equal(c["points"][:, : 2 * (it - 1)], model.calls[it - 1]["points"])
    np.testing.assert_array_equal(res.n_points, [0, 2, 4, 6])
    np.testing.assert_array_equal(res.boxes_xyxy, boxes0)
    np.testing.assert_array_equal(res.msa, np.ones(4))


def test_batch_size_and_relabelling_do_not_change_results():
    gt = _synthetic_gt()
    a = run_interactive(FakeModel(gt), np.zeros(gt.shape, np.uint8), gt, n_iterations=4, seed=5, batch_size=1)
    b = run_interactive(FakeModel(gt), np.zeros(gt.shape, np.uint8), _relabel_sequential(gt.astype(np.uint32)),
                        n_iterations=4, seed=5, batch_size=32, keep_labels=False)
    np.testing.assert_array_equal(a.points_xy, b.points_xy)
    np.testing.assert_array_equal(a.msa, b.msa)
    assert b.labels is None
    c = run_interactive(FakeModel(gt), np.zeros(gt.shape, np.uint8), gt, n_iterations=4, seed=6)
    assert not np.array_equal(a.points_xy, c.points_xy)


def test_max_objects_restricts_prompts_and_gt():
    gt = _synthetic_gt()
    model = FakeModel(gt)
    res = run_interactive(model, np.zeros(gt.shape, np.uint8), gt, n_iterations=2, max_objects=3, seed=0)
    assert len(res.object_ids) == 3 and np.all(np.diff(res.object_ids) > 0)
    assert model.calls[0]["points"].shape == (3, 1, 2)
    assert len(np.unique(res.gt)) == 4  # background + the 3 prompted objects
    np.testing.assert_array_equal(res.msa, [1.0, 1.0])


def test_bad_arguments():
    gt = _synthetic_gt()
    img = np.zeros(gt.shape, np.uint8)
    with pytest.raises(ValueError, match="start"):
        run_interactive(FakeModel(gt), img, gt, start="mask")
    with pytest.raises(ValueError, match="no objects"):
        run_interactive(FakeModel(gt), img, np.zeros_like(gt))
    with pytest.raises(ValueError, match="shape"):
        run_interactive(FakeModel(gt), img[:10], gt)
    with pytest.raises(ValueError, match="untiled"):
        run_interactive(FakeModel(gt), None, gt, embeddings=SimpleNamespace(tiled=True, image_shape=gt.shape))


def test_report_files(tmp_path):
    res = InteractiveResult(
        start="box", object_ids=np.arange(1, 4), msa=np.linspace(0.2, 0.6, 8), sa50=np.linspace(0.4, 0.9, 8),
        sa75=np.linspace(0.1, 0.5, 8), accuracies=np.zeros((8, 10)), n_points=2 * np.arange(8),
    )
    files = write_interactive_report(res, tmp_path / "out")
    rows = list(csv.reader(files["csv"].open()))
    assert rows[0] == ["iteration", "mSA", "SA50", "SA75"] and len(rows) == 9
    assert [int(r[0]) for r in rows[1:]] == list(range(8))
    np.testing.assert_array_equal([float(r[1]) for r in rows[1:]], res.msa)
    from PIL import Image

    with Image.open(files["plot"]) as im:
        assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200


# ---------------------------------------------------------------------------- tiny model
@pytest.fixture(scope="module")
def gbm40(data_dir, tiny_model):
    image = tifffile.imread(data_dir / "gbm40" / "images" / "gbm40_05.tif")
    labels = tifffile.imread(data_dir / "gbm40" / "labels" / "gbm40_05.tif")
    return image, labels, tiny_model.embed(image, tile_shape=None, progress=False)


def test_predict_batch_equals_predict(tiny_model, gbm40, ivec):
    from pathosam.models.sam import Sam

    _, _, emb = gbm40
    sel = [0, 40, 77]
    pts = ivec["point_prompts_xy"][sel].astype(np.float64)
    lab = ivec["point_labels"][sel]
    boxes = ivec["box_prompts_xyxy"][sel]
    extra = np.array([[[5.5, 9.25], [300.0, 200.0]]] * len(sel)) + np.arange(len(sel))[:, None, None]
    pts3 = np.concatenate([pts, extra], axis=1)
    lab3 = np.concatenate([lab, np.tile([0, 1], (len(sel), 1))], axis=1)
    m1, i1, l1 = tiny_model.predict_batch(emb, points=pts, point_labels=lab, multimask=True)
    cases = [
        (dict(points=pts, point_labels=lab, multimask=True), (m1, i1, l1)),
        (dict(points=pts3, point_labels=lab3, boxes=boxes, mask_input=l1[:, :1]), None),
    ]
    for kw, out in cases:
        masks, iou, low = out if out is not None else tiny_model.predict_batch(emb, **kw)
        c = 3 if kw.get("multimask") else 1
        assert masks.shape == (len(sel), c, 512, 512) and masks.dtype == bool
        assert iou.shape == (len(sel), c) and low.shape == (len(sel), c, 256, 256)
        for j in range(len(sel)):
            one = {k: None if kw.get(k) is None else kw[k][j]
                   for k in ("points", "point_labels", "boxes", "mask_input")}
            sm, si, sl = tiny_model.predict(
                emb, points=one["points"], point_labels=one["point_labels"], box=one["boxes"],
                mask_input=one["mask_input"], multimask=kw.get("multimask", False),
            )
            np.testing.assert_allclose(iou[j], si, rtol=0, atol=1e-5)
            np.testing.assert_allclose(low[j], sl, rtol=0, atol=1e-5)
            diff = masks[j] != sm
            if diff.any():  # float rounding may flip pixels whose logit is ~0
                import torch

                full = Sam.postprocess_masks(torch.from_numpy(sl[None]), emb.input_sizes[0], emb.original_sizes[0])
                assert np.abs(full[0].numpy()[diff]).max() < 1e-4
                assert diff.mean() < 1e-4


@pytest.mark.parametrize("start,use_masks,n_obj", [("point", False, 5), ("box", True, 3)])
def test_full_protocol_tiny_model(tiny_model, gbm40, ivec, tmp_path, start, use_masks, n_obj):
    image, labels, emb = gbm40
    res = run_interactive(tiny_model, image, labels, start=start, n_iterations=8, use_masks=use_masks, seed=0,
                          batch_size=32, embeddings=emb, max_objects=n_obj)
    assert res.start == start and res.n_iterations == 8
    assert set(res.object_ids) <= set(ivec["gt_ids"]) and len(res.object_ids) == n_obj
    for v in (res.msa, res.sa50, res.sa75):
        assert v.shape == (8,) and np.isfinite(v).all() and (v >= 0).all() and (v <= 1).all()
    np.testing.assert_array_equal(res.sa50, res.accuracies[:, 0])
    np.testing.assert_array_equal(res.sa75, res.accuracies[:, 5])
    first = 1 if start == "point" else 0
    np.testing.assert_array_equal(res.n_points, first + 2 * np.arange(8))
    assert res.points_xy.shape == (n_obj, first + 14, 2)
    # initial prompts of the prompted objects are the reference's
    idx = np.searchsorted(ivec["gt_ids"], res.object_ids)
    if start == "point":
        np.testing.assert_array_equal(res.points_xy[:, :1], ivec["point_prompts_xy"][idx])
    else:
        np.testing.assert_array_equal(res.boxes_xyxy, ivec["box_prompts_xyxy"][idx])
    # label images and scores agree
    assert len(res.labels) == 8 and all(lab.shape == (512, 512) and lab.dtype == np.uint32 for lab in res.labels)
    msa, accs = mean_segmentation_accuracy(res.labels[-1], res.gt, return_accuracies=True)
    assert msa == res.msa[-1] and accs[0] == res.sa50[-1]
    files = write_interactive_report(res, tmp_path)
    rows = list(csv.reader(files["csv"].open()))
    assert len(rows) == 9 and files["plot"].stat().st_size > 0
