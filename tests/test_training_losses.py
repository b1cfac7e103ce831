"""Training losses, class weights and prompt samplers: hand-computed values on tiny tensors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pathosam.prompt_sampling import bounding_boxes, sample_correction_points
from pathosam.training import (
    PromptChoice,
    dice_based_distance_loss,
    dice_loss,
    distort_boxes,
    mask_iou,
    sam_batch_loss,
    sam_loss,
    sample_object_ids,
    sample_points,
    sample_training_prompts,
    semantic_class_weights,
    semantic_dice_loss,
    semantic_loss,
    training_prompt_choice,
    validation_prompt_choice,
    weighted_cross_entropy,
)

EPS = 1e-7


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


# --------------------------------------------------------------------------------------------
# dice
# --------------------------------------------------------------------------------------------

def test_dice_loss_by_hand():
    # channel 0: sum(xy) = 0.5 + 1 = 1.5; sum(x^2) = .25 + 1 + 0 + .25 = 1.5; sum(y^2) = 2
    #            loss = 1 - 2 * 1.5 / 3.5 = 1/7
    # channel 1: all zero -> denominator clamped to 1e-7, dice 0, loss 1 (empty vs empty is NOT 0)
    pred = t([[[[0.5, 1.0], [0.0, 0.5]], [[0.0, 0.0], [0.0, 0.0]]]])
    target = t([[[[1, 1], [0, 0]], [[0, 0], [0, 0]]]])
    per_channel = dice_loss(pred, target, reduce_channel=None)
    assert per_channel.tolist() == pytest.approx([1 / 7, 1.0], abs=1e-12)
    assert dice_loss(pred, target).item() == pytest.approx(1 / 7 + 1.0, abs=1e-12)  # default: sum
    assert dice_loss(pred, target, reduce_channel="mean").item() == pytest.approx((1 / 7 + 1) / 2, abs=1e-12)


def test_dice_loss_sums_over_the_batch_before_dividing():
    # two samples of one channel: sums are pooled, not per-sample losses averaged
    pred = t([[[[1.0, 0.0]]], [[[0.5, 0.5]]]])
    target = t([[[[1, 0]]], [[[0, 1]]]])
    # sum(xy) = 1 + 0.5 = 1.5; sum(x^2) = 1 + .25 + .25 = 1.5; sum(y^2) = 2 -> 1 - 3/3.5
    assert dice_loss(pred, target).item() == pytest.approx(1 - 3 / 3.5, abs=1e-12)


def test_dice_loss_shape_mismatch():
    with pytest.raises(ValueError):
        dice_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 3))


# --------------------------------------------------------------------------------------------
# SAM mask + IoU loss
# --------------------------------------------------------------------------------------------

PROBS = [  # (2 objects, 3 masks, 2, 2)
    [[[1.0, 1.0], [0.0, 0.0]], [[0.5, 1.0], [0.0, 0.5]], [[0.0, 0.0], [0.0, 0.0]]],
    [[[1.0, 1.0], [0.0, 0.0]], [[0.5, 1.0], [0.0, 0.5]], [[0.0, 0.0], [0.0, 0.9]]],
]
TARGETS = [[[[1, 1], [0, 0]]], [[[0, 0], [0, 1]]]]  # (2, 1, 2, 2)
IOU_PRED = [[0.9, 0.5, 0.1], [0.2, 0.3, 0.8]]

# object 0 (target = top row):
#   mask 0 = target              -> dice loss 0;              binarised IoU 2 / (2 + eps)
#   mask 1                       -> 1 - 2*1.5/(1.5+2) = 1/7;  binarised {(0,1)}: IoU 1 / (2 + eps)
#   mask 2 = 0                   -> loss 1;                   IoU 0
# object 1 (target = (1,1)):
#   mask 0: no overlap           -> loss 1;                   IoU 0 / (3 + eps)
#   mask 1: sum xy .5, x^2 1.5, y^2 1 -> 1 - 1/2.5 = .6;      IoU 0
#   mask 2: sum xy .9, x^2 .81, y^2 1 -> 1 - 1.8/1.81;        binarised {(1,1)}: IoU 1 / (1 + eps)
MIN_PER_OBJECT = [0.0, 1 - 1.8 / 1.81]
TRUE_IOU = [[2 / (2 + EPS), 1 / (2 + EPS), 0.0], [0.0, 0.0, 1 / (1 + EPS)]]


def _expected_iou_loss():
    sq = [(p - q) ** 2 for rp, rq in zip(IOU_PRED, TRUE_IOU) for p, q in zip(rp, rq)]
    return sum(sq) / 6  # MSE over objects x masks


def test_sam_loss_min_over_three_masks_by_hand():
    out = sam_loss(t(PROBS), t(TARGETS), t(IOU_PRED), masks_are_logits=False)
    assert out.mask_loss.item() == pytest.approx(sum(MIN_PER_OBJECT) / 2, abs=1e-12)
    assert out.iou_loss.item() == pytest.approx(_expected_iou_loss(), abs=1e-12)
    # ~ (.01 + 0 + .01 + .04 + .09 + .04) / 6
    assert out.iou_loss.item() == pytest.approx(0.19 / 6, abs=1e-6)
    assert out.total.item() == pytest.approx(out.mask_loss.item() + out.iou_loss.item(), abs=1e-15)
    np.testing.assert_allclose(mask_iou(t(PROBS), t(TARGETS)).numpy(), TRUE_IOU, atol=1e-15)


def test_sam_loss_from_logits_equals_loss_from_probabilities():
    probs = t(PROBS).clamp(1e-6, 1 - 1e-6)
    logits = torch.log(probs / (1 - probs))
    a = sam_loss(logits, t(TARGETS)[:, 0], t(IOU_PRED))  # (n, H, W) targets accepted too
    b = sam_loss(probs, t(TARGETS), t(IOU_PRED), masks_are_logits=False)
    assert a.total.item() == pytest.approx(b.total.item(), abs=1e-9)


def test_sam_loss_single_mask_and_batch_sum():
    probs = t(PROBS)[:, 1:2]  # one mask per object: no min to take
    iou = t(IOU_PRED)[:, 1:2]
    out = sam_loss(probs, t(TARGETS), iou, masks_are_logits=False)
    assert out.mask_loss.item() == pytest.approx((1 / 7 + 0.6) / 2, abs=1e-12)
    assert out.iou_loss.item() == pytest.approx(((0.5 - 1 / (2 + EPS)) ** 2 + 0.3 ** 2) / 2, abs=1e-12)
    # batch: per-image losses are summed (not averaged)
    full = sam_loss(t(PROBS), t(TARGETS), t(IOU_PRED), masks_are_logits=False)
    batch = sam_batch_loss([t(PROBS), probs], [t(TARGETS), t(TARGETS)], [t(IOU_PRED), iou], masks_are_logits=False)
    assert batch.mask_loss.item() == pytest.approx(full.mask_loss.item() + out.mask_loss.item(), abs=1e-12)
    assert batch.iou_loss.item() == pytest.approx(full.iou_loss.item() + out.iou_loss.item(), abs=1e-12)


def test_sam_loss_gradients():
    logits = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    iou = torch.rand(2, 3, dtype=torch.float64, requires_grad=True)
    targets = (torch.rand(2, 1, 4, 4) > 0.5).double()
    out = sam_loss(logits, targets, iou)
    # the true IoU is a constant: the IoU loss reaches only the IoU head
    assert torch.autograd.grad(out.iou_loss, logits, retain_graph=True, allow_unused=True)[0] is None
    g_iou, = torch.autograd.grad(out.iou_loss, iou, retain_graph=True)
    assert torch.isfinite(g_iou).all() and g_iou.abs().sum() > 0
    g, = torch.autograd.grad(out.mask_loss, logits)
    assert torch.isfinite(g).all()


def test_sam_loss_shape_checks():
    with pytest.raises(ValueError):
        sam_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 1, 4, 4), torch.zeros(2, 1))
    with pytest.raises(ValueError):
        sam_loss(torch.zeros(2, 3, 4, 4), torch.zeros(3, 1, 4, 4), torch.zeros(2, 3))


# --------------------------------------------------------------------------------------------
# UNETR distance loss
# --------------------------------------------------------------------------------------------

def test_dice_based_distance_loss_by_hand():
    target = t([[[[1, 1], [0, 0]], [[0, 1], [1, 1]], [[1, 0], [1, 1]]]])  # fg, centre, boundary
    pred = t([[[[0.8, 0.6], [0.2, 0.0]], [[0.2, 0.6], [0.9, 0.9]], [[0.7, 0.1], [0.5, 0.5]]]])
    # foreground: sum xy = 1.4, x^2 = .64 + .36 + .04 = 1.04, y^2 = 2  -> 1 - 2.8/3.04
    fg = 1 - 2.8 / 3.04
    # centre, masked by fg target: p = [.2, .6, 0, 0], t = [0, 1, 0, 0] -> 1 - 1.2/(.4 + 1)
    c = 1 - 1.2 / 1.4
    # boundary, masked: p = [.7, .1, 0, 0], t = [1, 0, 0, 0] -> 1 - 1.4/(.5 + 1)
    b = 1 - 1.4 / 1.5
    out = dice_based_distance_loss(pred, target)
    assert out.foreground.item() == pytest.approx(fg, abs=1e-12)
    assert out.center.item() == pytest.approx(c, abs=1e-12)
    assert out.boundary.item() == pytest.approx(b, abs=1e-12)
    assert out.total.item() == pytest.approx(fg + c + b, abs=1e-12)
    # unmasked centre: sum xy = .6+.9+.9 = 2.4, x^2 = .04+.36+.81+.81 = 2.02, y^2 = 3
    unmasked = dice_based_distance_loss(pred, target, mask_distances_in_bg=False)
    assert unmasked.center.item() == pytest.approx(1 - 4.8 / 5.02, abs=1e-12)


@pytest.mark.parametrize("name", ["monuseg", "gbm40", "cpm15"])
def test_dice_based_distance_loss_matches_reference(vectors, name):
    ref = json.loads((vectors / "ais" / "ais.json").read_text())["images"][name]["training_loss"]
    maps = np.load(vectors / "ais" / f"noisy_maps_{name}.npz")["maps"].astype(np.float32)
    tg = np.load(vectors / "ais" / f"targets_{name}.npz")
    target = np.stack([tg["foreground"], tg["center_distances"], tg["boundary_distances"]])
    out = dice_based_distance_loss(torch.from_numpy(maps)[None], torch.from_numpy(target)[None])
    for got, key in zip(out, ["total", "foreground_dice_loss", "center_dice_loss_masked", "boundary_dice_loss_masked"]):
        assert got.item() == pytest.approx(ref[key], rel=1e-5)


# --------------------------------------------------------------------------------------------
# semantic head
# --------------------------------------------------------------------------------------------

def test_semantic_class_weights_by_hand():
    # lo = 10, hi = 100: w = 10 - (f - 10) / 90 * 9 -> [1 (forced: most frequent), 10 - 4 = 6, 10]
    assert semantic_class_weights([100, 50, 10]) == [1, 1, 6, 10]
    # fractions give the same weights as counts
    assert semantic_class_weights([0.625, 0.3125, 0.0625]) == [1, 1, 6, 10]
    # patho-sam's default frequencies -> the generalist's weights
    assert semantic_class_weights([0.4702, 0.1797, 0.2229, 0.0159, 0.1113]) == [1, 1, 7, 6, 10, 8]
    assert semantic_class_weights([5, 5]) == [1, 1, 1]
    with pytest.raises(ValueError):
        semantic_class_weights([])


def test_weighted_cross_entropy_by_hand():
    # pixel a: logits (0, 0, 0), class 0 -> -log(1/3) = ln 3
    # pixel b: logits (0, ln 3, 0), class 1 -> p = 3/5 -> -ln 0.6
    logits = t([[[[0.0, 0.0]], [[0.0, math.log(3)]], [[0.0, 0.0]]]])  # (1, 3, 1, 2)
    target = torch.tensor([[[0, 1]]])
    a, b = math.log(3), -math.log(0.6)
    assert weighted_cross_entropy(logits, target).item() == pytest.approx((a + b) / 2, abs=1e-12)
    w = [1.0, 2.0, 3.0]
    expected = (1 * a + 2 * b) / (1 + 2)  # weighted mean: divided by the summed weights of the targets
    assert weighted_cross_entropy(logits, target, w).item() == pytest.approx(expected, abs=1e-12)
    # (N, 1, H, W) float targets, and the reference's dice_weight = 0 -> CE only
    assert semantic_loss(logits, target[:, None].double(), w).item() == pytest.approx(expected, abs=1e-12)
    mixed = semantic_loss(logits, target, w, dice_weight=0.25).item()
    assert mixed == pytest.approx(0.75 * expected + 0.25 * semantic_dice_loss(logits, target).item(), abs=1e-12)


def test_semantic_dice_loss_by_hand():
    # softmax of pixel a = (1/3, 1/3, 1/3), pixel b = (.2, .6, .2); one-hot a = class 0, b = class 1
    logits = t([[[[0.0, 0.0]], [[0.0, math.log(3)]], [[0.0, 0.0]]]])
    target = torch.tensor([[[0, 1]]])
    c0 = 1 - 2 * (1 / 3) / ((1 / 9 + 0.04) + 1)
    c1 = 1 - 2 * 0.6 / ((1 / 9 + 0.36) + 1)
    c2 = 1 - 0.0 / ((1 / 9 + 0.04) + 0)
    assert semantic_dice_loss(logits, target).item() == pytest.approx(c0 + c1 + c2, abs=1e-12)


# --------------------------------------------------------------------------------------------
# correction points
# --------------------------------------------------------------------------------------------

def _gt_square():
    gt = np.zeros((1, 12, 12), bool)
    gt[0, 4:8, 4:8] = True
    return gt


def test_correction_points_from_fn_and_fp():
    gt = _gt_square()
    pred = np.zeros_like(gt)
    pred[0, 4:8, 4:6] = True   # columns 6-7 of the object are false negatives
    pred[0, 0, 11] = True      # the only false positive: row 0, col 11
    for seed in range(20):
        pts, labels = sample_correction_points(pred, gt, np.random.default_rng(seed))
        assert pts.shape == (1, 2, 2) and labels.tolist() == [[1, 0]]
        (px, py), (nx, ny) = pts[0]
        assert 4 <= py < 8 and 6 <= px < 8     # in G & ~P
        assert (nx, ny) == (11, 0)             # (x, y) order


def test_correction_points_fallbacks_tp_and_ring():
    gt = _gt_square()
    pred = gt.copy()  # perfect prediction: no FN, no FP
    seen = set()
    for seed in range(300):
        pts, _ = sample_correction_points(pred, gt, np.random.default_rng(seed))
        (px, py), (nx, ny) = pts[0]
        assert gt[0, py, px]                          # positive from the true positives
        assert 1 <= ny < 11 and 1 <= nx < 11          # ring: bbox [4, 8) enlarged by 3 -> [1, 11)
        assert not gt[0, ny, nx]
        seen.add((ny, nx))
    assert len(seen) > 40  # uniform over the 100 - 16 = 84 ring pixels, not a fixed point


def test_correction_points_ring_clipped_and_outside_fallback():
    gt = np.zeros((1, 6, 6), bool)
    gt[0, 0:2, 0:2] = True  # corner object: ring clipped to rows/cols [0, 5)
    pts, _ = sample_correction_points(gt, gt, np.random.default_rng(0))
    nx, ny = pts[0, 1]
    assert ny < 5 and nx < 5 and not gt[0, ny, nx]
    # with no ring margin a rectangular G leaves an empty ring -> anywhere outside G
    rect = np.zeros((1, 6, 6), bool)
    rect[0, 1:3, 1:4] = True
    for seed in range(10):
        pts, _ = sample_correction_points(rect, rect, np.random.default_rng(seed), ring_margin=0)
        nx, ny = pts[0, 1]
        assert not rect[0, ny, nx]


def test_correction_points_deterministic_and_batched():
    rng = np.random.default_rng(1)
    gt = rng.random((5, 16, 16)) > 0.6
    pred = rng.random((5, 16, 16)) > 0.5
    a = sample_correction_points(pred, gt, np.random.default_rng(42))
    b = sample_correction_points(pred, gt, np.random.default_rng(42))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[0].shape == (5, 2, 2) and a[0].dtype == np.int64
    for k in range(5):
        (px, py), (nx, ny) = a[0][k]
        assert gt[k, py, px] and not pred[k, py, px]   # FN exist in these random masks
        assert pred[k, ny, nx] and not gt[k, ny, nx]   # FP exist too
    c = sample_correction_points(pred, gt, np.random.default_rng(43))
    assert not np.array_equal(a[0], c[0])


def test_correction_points_errors():
    with pytest.raises(ValueError):
        sample_correction_points(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 4), bool), np.random.default_rng(0))
    with pytest.raises(ValueError):
        sample_correction_points(np.zeros((4, 4), bool), np.zeros((4, 4), bool), np.random.default_rng(0))


# --------------------------------------------------------------------------------------------
# training prompts
# --------------------------------------------------------------------------------------------

def _labels():
    labels = np.zeros((40, 50), np.int32)
    labels[2:10, 3:12] = 1
    labels[20:35, 20:30] = 4
    labels[30:38, 40:48] = 9
    return labels


def test_prompt_choices():
    assert training_prompt_choice(0) == PromptChoice(1, 0, False, True)
    assert training_prompt_choice(7) == PromptChoice(0, 0, True, False)
    rng = np.random.default_rng(0)
    for i in range(200):
        c = validation_prompt_choice(i, rng)
        assert c.multimask == (i % 4 == 0)
        if i % 4 == 2:
            assert 1 <= c.n_positive <= 4 and 0 <= c.n_negative <= 4 and (c.n_positive, c.n_negative) != (1, 0)
            assert not c.use_box
        if i % 4 == 3:
            assert c.use_box and 1 <= c.n_positive <= 4


def test_sample_object_ids():
    labels = _labels()
    assert sample_object_ids(labels, None, np.random.default_rng(0)).tolist() == [1, 4, 9]
    ids = sample_object_ids(labels, 2, np.random.default_rng(0))
    assert len(ids) == 2 and set(ids) <= {1, 4, 9} and list(ids) == sorted(ids)


def test_point_prompts_inside_objects():
    labels = _labels()
    p = sample_training_prompts(labels, training_prompt_choice(0), np.random.default_rng(3))
    assert p.multimask and p.boxes_xyxy is None
    assert p.points_xy.shape == (3, 1, 2) and p.point_labels.tolist() == [[1], [1], [1]]
    for obj_id, (x, y) in zip(p.object_ids, p.points_xy[:, 0]):
        assert labels[y, x] == obj_id
    q = sample_training_prompts(labels, training_prompt_choice(0), np.random.default_rng(3))
    np.testing.assert_array_equal(p.points_xy, q.points_xy)
    assert p.truncate(2).points_xy.shape == (2, 1, 2)


def test_box_prompts_jitter_bounds():
    labels = _labels()
    exact = bounding_boxes(np.stack([labels == i for i in (1, 4, 9)]))
    assert exact.tolist() == [[2, 3, 10, 12], [20, 20, 35, 30], [30, 40, 38, 48]]
    for seed in range(30):
        p = sample_training_prompts(labels, training_prompt_choice(1), np.random.default_rng(seed))
        assert not p.multimask and p.points_xy is None
        for (x0, y0, x1, y1), (ey0, ex0, ey1, ex1) in zip(p.boxes_xyxy, exact):
            ly, lx = ey1 - ey0, ex1 - ex0
            # each side moves outward by at most round(0.025 * side), and stays in the image
            assert max(0, ey0 - round(0.025 * ly + 0.5)) <= y0 <= ey0
            assert max(0, ex0 - round(0.025 * lx + 0.5)) <= x0 <= ex0
            assert ey1 <= y1 <= min(40, ey1 + round(0.025 * ly + 0.5))
            assert ex1 <= x1 <= min(50, ex1 + round(0.025 * lx + 0.5))
    big = distort_boxes(np.array([[10, 10, 30, 30]]), (40, 40), 0.5, np.random.default_rng(0))[0]
    assert 0 <= big[0] <= 10 and 0 <= big[1] <= 10 and 30 <= big[2] <= 40 and 30 <= big[3] <= 40


def test_negative_points_respect_dilated_border():
    from scipy import ndimage

    yy, xx = np.mgrid[:60, :60]
    mask = (yy - 30) ** 2 + (xx - 30) ** 2 <= 36  # disc: the corners of its enlarged box are far from it
    box = bounding_boxes(mask[None])[0]
    y0, x0, y1, x1 = box
    chessboard = ndimage.distance_transform_cdt(~mask, metric="chessboard")
    for seed in range(10):
        pts, labels = sample_points(mask, box, 2, 4, np.random.default_rng(seed), dilation_strength=5)
        assert labels.tolist() == [1, 1, 0, 0, 0, 0]
        for (x, y) in pts[:2]:
            assert mask[y, x]
        for (x, y) in pts[2:]:
            # inside the box enlarged by 5 px, outside the object dilated 5 times by a 3x3 square
            assert y0 - 5 <= y < y1 + 5 and x0 - 5 <= x < x1 + 5
            assert chessboard[y, x] > 5
        assert len({tuple(p) for p in pts[2:]}) == 4  # without replacement


def test_negative_points_fallback_outside_object():
    # a square dilated by a square fills its enlarged box: no ring left -> anywhere outside the object
    mask = np.zeros((30, 30), bool)
    mask[10:20, 10:20] = True
    pts, labels = sample_points(mask, bounding_boxes(mask[None])[0], 1, 3, np.random.default_rng(0),
                                dilation_strength=3)
    assert labels.tolist() == [1, 0, 0, 0]
    assert mask[pts[0, 1], pts[0, 0]]
    for (x, y) in pts[1:]:
        assert not mask[y, x]
