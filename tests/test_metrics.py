"""pathosam.evaluation.metrics: reference vectors (elf), hand-computed PQ / AJI / dice cases, and a
randomised comparison of the sparse implementation with naive per-pair code."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from pathosam.evaluation import metrics as M

_VECTORS = Path(os.environ.get("PATHOSAM_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "vectors"
_METRICS_JSON = _VECTORS / "metrics" / "metrics.json"
_PAIRS = [p["name"] for p in json.loads(_METRICS_JSON.read_text())["pairs"]] if _METRICS_JSON.exists() else ["<absent>"]


def _load_pair(vectors: Path, name: str):
    info = json.loads((vectors / "metrics" / "metrics.json").read_text())
    pair = next(p for p in info["pairs"] if p["name"] == name)

    def read(rel):
        if rel == "EMPTY":
            return np.zeros(pair["shape"], np.uint32)
        import tifffile

        return tifffile.imread(vectors / rel).astype(np.uint32)

    return pair, read(pair["seg"]), read(pair["gt"]), info


# ------------------------------------------------------------------------------------------
# (a) reference vectors
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", _PAIRS)
def test_reference_pairs(vectors, name):
    pair, seg, gt, info = _load_pair(vectors, name)
    assert np.array_equal(M.DEFAULT_THRESHOLDS, np.array(info["thresholds"]))
    msa, acc = M.mean_segmentation_accuracy(seg, gt, return_accuracies=True)
    assert len(acc) == 10
    assert msa == pytest.approx(pair["mSA"], abs=1e-9)
    np.testing.assert_allclose(acc, pair["SA"], rtol=0, atol=1e-9)
    assert M.mean_segmentation_accuracy(seg, gt) == pytest.approx(pair["mSA"], abs=1e-9)

    m = M.matching(seg, gt, threshold=0.5)
    for key, value in pair["matching_0.5"].items():
        assert m[key] == pytest.approx(value, abs=1e-9), key
    assert m["n_pred"] == pair["n_seg_objects"] and m["n_true"] == pair["n_gt_objects"]
    assert M.dice_score(seg, gt) == pytest.approx(pair["dice_score"], abs=1e-9)

    assert M.sa50(seg, gt) == pytest.approx(pair["SA"][M.SA50_INDEX], abs=1e-9)
    assert M.sa75(seg, gt) == pytest.approx(pair["SA"][M.SA75_INDEX], abs=1e-9)
    if "micro_sam_run_evaluation" in pair:
        ref = pair["micro_sam_run_evaluation"]
        assert acc[M.SA50_INDEX] == pytest.approx(ref["SA50"], abs=1e-9)
        assert acc[M.SA75_INDEX] == pytest.approx(ref["SA75"], abs=1e-9)
        assert m["f1"] == pytest.approx(ref["F1 Score"], abs=1e-9)


@pytest.mark.parametrize("name", [n for n in _PAIRS if n.endswith("perturbed") or n == "<absent>"])
def test_reference_pairs_uint64_and_sparse_ids(vectors, name):
    """uint64 inputs and huge non-consecutive ids (the sort path) give the same numbers."""
    pair, seg, gt, _ = _load_pair(vectors, name)
    big_seg = np.where(seg > 0, seg.astype(np.uint64) * np.uint64(1 << 40) + np.uint64(12345), 0).astype(np.uint64)
    big_gt = np.where(gt > 0, gt.astype(np.uint64) * np.uint64(7919) + np.uint64(3), 0).astype(np.uint64)
    msa, acc = M.mean_segmentation_accuracy(big_seg, big_gt, return_accuracies=True)
    assert msa == pytest.approx(pair["mSA"], abs=1e-9)
    np.testing.assert_allclose(acc, pair["SA"], rtol=0, atol=1e-9)
    assert M.panoptic_quality(big_seg, big_gt) == M.panoptic_quality(seg, gt)
    assert M.aggregated_jaccard_index(big_seg, big_gt) == M.aggregated_jaccard_index(seg, gt)


# ------------------------------------------------------------------------------------------
# (b) panoptic quality, hand-computed
# ------------------------------------------------------------------------------------------


def _img(*objects, shape=(10, 10)):
    """Label image from (id, rows slice, cols slice) triples."""
    a = np.zeros(shape, np.uint32)
    for i, r, c in objects:
        a[r, c] = i
    return a


A = (1, slice(0, 2), slice(0, 5))  # 10 px
B = (2, slice(5, 8), slice(5, 8))  # 9 px


def _pq(seg, gt, **kw):
    r = M.panoptic_quality(seg, gt, **kw)
    return r["pq"], r["sq"], r["dq"], r["tp"], r["fp"], r["fn"]


def test_pq_perfect():
    gt = _img(A, B)
    seg = _img((7, A[1], A[2]), (3, B[1], B[2]))  # other ids, same objects
    assert _pq(seg, gt) == (1.0, 1.0, 1.0, 2, 0, 0)


def test_pq_shift_around_half():
    gt = np.zeros((1, 50), np.uint32)
    gt[0, 0:30] = 1  # 30 px
    seg9 = np.zeros_like(gt)
    seg9[0, 9:39] = 4  # IoU 21/39 = 0.538 > 0.5: match
    pq, sq, dq, tp, fp, fn = _pq(seg9, gt)
    assert (tp, fp, fn) == (1, 0, 0) and dq == 1.0
    assert sq == pytest.approx(21 / 39, abs=1e-15) and pq == pytest.approx(21 / 39, abs=1e-15)
    seg10 = np.zeros_like(gt)
    seg10[0, 10:40] = 4  # IoU 20/40 = 0.5 exactly: no PQ match (IoU > 0.5) ...
    assert _pq(seg10, gt) == (0.0, 0.0, 0.0, 0, 1, 1)
    assert M.sa50(seg10, gt) == 1.0  # ... but SA50 counts IoU >= 0.5
    seg11 = np.zeros_like(gt)
    seg11[0, 11:41] = 4  # IoU 19/41 < 0.5
    assert _pq(seg11, gt) == (0.0, 0.0, 0.0, 0, 1, 1)
    assert M.sa50(seg11, gt) == 0.0


def test_pq_split():
    gt = _img((1, slice(0, 4), slice(0, 5)))  # 20 px
    seg = _img((1, slice(0, 4), slice(0, 3)), (2, slice(0, 4), slice(3, 5)))  # 12 px (IoU 0.6) + 8 px (0.4)
    pq, sq, dq, tp, fp, fn = _pq(seg, gt)
    assert (tp, fp, fn) == (1, 1, 0)
    assert dq == pytest.approx(2 / 3) and sq == pytest.approx(0.6) and pq == pytest.approx(0.4)


def test_pq_merged():
    gt = _img((1, slice(0, 4), slice(0, 4)), (2, slice(0, 4), slice(4, 6)))  # 16 + 8 px
    seg = _img((5, slice(0, 4), slice(0, 6)))  # 24 px: IoU 16/24 with gt 1, 8/24 with gt 2
    pq, sq, dq, tp, fp, fn = _pq(seg, gt)
    assert (tp, fp, fn) == (1, 0, 1)
    assert dq == pytest.approx(2 / 3) and sq == pytest.approx(2 / 3) and pq == pytest.approx(4 / 9)


def test_pq_missing_extra_empty():
    gt = _img(A, B)
    assert _pq(_img(A), gt) == pytest.approx((2 / 3, 1.0, 2 / 3, 1, 0, 1))  # missing object
    extra = _img(A, B, (9, slice(9, 10), slice(0, 3)))
    assert _pq(extra, gt) == pytest.approx((0.8, 1.0, 0.8, 2, 1, 0))  # extra object
    empty = np.zeros_like(gt)
    assert _pq(empty, gt) == (0.0, 0.0, 0.0, 0, 0, 2)  # empty prediction
    assert _pq(gt, empty) == (0.0, 0.0, 0.0, 0, 2, 0)  # empty ground truth
    pq, sq, dq, tp, fp, fn = _pq(empty, empty)  # both empty: undefined
    assert math.isnan(pq) and math.isnan(sq) and math.isnan(dq) and (tp, fp, fn) == (0, 0, 0)


def test_pq_eps_and_threshold():
    gt = _img((1, slice(0, 4), slice(0, 5)))
    seg = _img((1, slice(0, 4), slice(0, 3)), (2, slice(0, 4), slice(3, 5)))
    r = M.panoptic_quality(seg, gt, eps=1e-6)  # the HoVer-Net / PanNuke SQ denominator
    assert r["sq"] == 0.6 / (1 + 1e-6) and r["pq"] == (1 / 1.5) * (0.6 / (1 + 1e-6))
    assert M.panoptic_quality(seg, gt, match_iou=0.6)["tp"] == 0  # 0.6 is not > 0.6
    with pytest.raises(ValueError):
        M.panoptic_quality(seg, gt, match_iou=0.3)


def test_pq_per_class():
    gt = _img(A, B)
    gt_cls = {1: 1, 2: 2}
    seg = _img((4, A[1], A[2]), (5, B[1], B[2]))
    seg_cls = {4: 1, 5: 1}  # B predicted with the wrong class
    r = M.panoptic_quality_per_class(seg, seg_cls, gt, gt_cls, class_ids=(1, 2, 3))
    assert (r[1]["tp"], r[1]["fp"], r[1]["fn"]) == (1, 1, 0)
    assert r[1]["dq"] == pytest.approx(2 / 3) and r[1]["sq"] == 1.0 and r[1]["pq"] == pytest.approx(2 / 3)
    assert (r[2]["tp"], r[2]["fp"], r[2]["fn"], r[2]["pq"]) == (0, 0, 1, 0.0)
    assert math.isnan(r[3]["pq"]) and (r[3]["tp"], r[3]["fp"], r[3]["fn"]) == (0, 0, 0)
    # the same classes given as pixel maps and as 1-D lookups
    seg_map = np.where(seg > 0, 1, 0)
    gt_map = np.where(gt == 1, 1, np.where(gt == 2, 2, 0))
    lookup_seg = np.zeros(6, np.int64)
    lookup_seg[[4, 5]] = 1
    assert M.panoptic_quality_per_class(seg, seg_map, gt, gt_map, (1, 2, 3)) == r
    assert M.panoptic_quality_per_class(seg, lookup_seg, gt, np.array([0, 1, 2]), (1, 2, 3)) == r


def _pannuke_images():
    # image 1: A (class 1) right; B found but called class 1
    gt1, seg1 = _img(A, B), _img((4, A[1], A[2]), (5, B[1], B[2]))
    gc1, sc1 = {1: 1, 2: 2}, {4: 1, 5: 1}
    # image 2: C (class 2) right, plus an extra class-1 object (class 1 absent from the GT)
    C = (3, slice(0, 3), slice(0, 3))
    gt2, seg2 = _img(C), _img(C, (8, slice(6, 8), slice(6, 8)))
    gc2, sc2 = {3: 2}, {3: 2, 8: 1}
    return [seg1, seg2], [sc1, sc2], [gt1, gt2], [gc1, gc2]


def test_mpq_bpq_mpq_plus_by_hand():
    segs, scs, gts, gcs = _pannuke_images()
    # PanNuke mPQ: image 1 = mean(2/3 [class 1], 0 [class 2]) = 1/3; image 2: class 1 is skipped
    # (absent from the GT, its false positive is not counted), class 2 = 1 -> 1; mean 2/3
    value, d = M.mpq(segs, scs, gts, gcs, return_details=True)
    assert value == pytest.approx(2 / 3)
    np.testing.assert_allclose(d["per_image"], [1 / 3, 1.0])
    assert d["per_class"][1] == pytest.approx(2 / 3) and d["per_class"][2] == pytest.approx(0.5)
    assert math.isnan(d["per_class"][3]) and math.isnan(d["per_image_class"][1, 0])
    # binary PQ: image 1 perfect (1), image 2 one extra object (dq 2/3) -> 5/6
    b, bd = M.bpq(segs, gts, return_details=True)
    assert b == pytest.approx(5 / 6)
    np.testing.assert_allclose(bd["per_image"], [1.0, 2 / 3])
    # mPQ+: class 1 pooled TP 1, FP 2, FN 0 -> 1/2; class 2 TP 1, FP 0, FN 1 -> 2/3; mean 7/12
    plus, pd = M.mpq_plus(segs, scs, gts, gcs, return_details=True)
    assert plus == pytest.approx(7 / 12)
    assert (pd["per_class"][1]["tp"], pd["per_class"][1]["fp"], pd["per_class"][1]["fn"]) == (1, 2, 0)
    assert math.isnan(pd["per_class"][5]["pq"])


def test_mpq_bpq_tissue_average_and_empty_images():
    segs, scs, gts, gcs = _pannuke_images()
    empty = np.zeros((10, 10), np.uint32)
    segs, scs, gts, gcs = segs + [segs[1], segs[1]], scs + [scs[1], scs[1]], gts + [gts[1], empty], gcs + [gcs[1], {}]
    # per image mPQ [1/3, 1, 1, NaN (empty GT: skipped)]; bPQ [1, 2/3, 2/3, NaN]
    assert M.mpq(segs, scs, gts, gcs) == pytest.approx(7 / 9)
    assert M.bpq(segs, gts) == pytest.approx(7 / 9)
    tissue = ["x", "x", "y", "y"]
    value, d = M.mpq(segs, scs, gts, gcs, tissue=tissue, return_details=True)
    assert value == pytest.approx((2 / 3 + 1) / 2) and d["per_tissue"]["x"] == pytest.approx(2 / 3)
    assert M.bpq(segs, gts, tissue=tissue) == pytest.approx((5 / 6 + 2 / 3) / 2)
    # only empty ground truth: nothing to average
    assert math.isnan(M.mpq([segs[1]], [scs[1]], [empty], [{}]))
    assert math.isnan(M.bpq([segs[1]], [empty]))
    # mPQ+ counts the false positives of the empty-GT image: class 1 FP 4, class 2 FP 1 extra
    _, pd = M.mpq_plus(segs, scs, gts, gcs, return_details=True)
    assert (pd["per_class"][1]["tp"], pd["per_class"][1]["fp"], pd["per_class"][1]["fn"]) == (1, 4, 0)
    assert (pd["per_class"][2]["tp"], pd["per_class"][2]["fp"], pd["per_class"][2]["fn"]) == (2, 1, 1)


def test_instance_classes_majority_vote():
    labels = np.array([[1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3]], np.uint32)
    classes = np.array([[1, 1, 1, 2, 2, 2, 0, 0, 0, 0, 4]], np.uint8)
    ids, cls = M.instance_classes(labels, classes)
    assert ids.tolist() == [1, 2, 3] and cls.tolist() == [1, 0, 4]  # tie -> lower id; all background -> 0
    np.testing.assert_array_equal(M.instance_class_counts(labels, classes, (1, 2, 3, 4)), [1, 0, 0, 1])


# ------------------------------------------------------------------------------------------
# (c) AJI
# ------------------------------------------------------------------------------------------


def test_aji_by_hand():
    gt = _img((1, slice(0, 2), slice(0, 5)), (2, slice(5, 8), slice(5, 8)), (3, slice(0, 2), slice(8, 10)))
    seg = _img((1, slice(0, 2), slice(0, 4)), (2, slice(5, 8), slice(6, 9)), (3, slice(9, 10), slice(0, 3)))
    # G1-P1: 8 / 10; G2-P2: 6 / 12; G3 unmatched: +4 to the union; P3 unused: +3
    assert M.aggregated_jaccard_index(seg, gt) == pytest.approx(14 / 29)
    # one prediction chosen by two ground-truth objects is counted in both unions
    gt2 = _img((1, slice(0, 1), slice(0, 4)), (2, slice(0, 1), slice(4, 8)))
    seg2 = _img((9, slice(0, 1), slice(0, 8)))
    assert M.aggregated_jaccard_index(seg2, gt2) == pytest.approx(8 / 16)
    empty = np.zeros_like(gt)
    assert M.aggregated_jaccard_index(empty, gt) == 0.0
    assert M.aggregated_jaccard_index(seg, empty) == 0.0
    assert math.isnan(M.aggregated_jaccard_index(empty, empty))


# ------------------------------------------------------------------------------------------
# (d) dice
# ------------------------------------------------------------------------------------------


def test_semantic_dice_absent_classes():
    gt = np.array([[1, 1, 2, 2, 5, 0]])
    seg = np.array([[1, 0, 2, 3, 3, 0]])
    correct = M.semantic_dice(gt, seg, class_ids=(1, 2, 3, 4, 5))
    quirk = M.semantic_dice(gt, seg, class_ids=(1, 2, 3, 4, 5), reference_quirk=True)
    expected_12 = [2 / (3 + 1e-7), 2 / (3 + 1e-7)]
    np.testing.assert_allclose(correct[:2], expected_12, rtol=1e-15)
    np.testing.assert_allclose(quirk[:2], expected_12, rtol=1e-15)
    assert correct[2] == 0.0  # class 3 predicted but absent from the GT: a real error ...
    assert math.isnan(quirk[2])  # ... that the reference's quirk does not count
    assert math.isnan(correct[3]) and math.isnan(quirk[3])  # class 4 absent from both
    assert correct[4] == 0.0 and quirk[4] == 0.0  # class 5 missed: 0 in both modes


def test_dice_score_and_weights():
    a = np.array([[0, 3, 3, 0]])
    b = np.array([[0, 1, 0, 7]])
    assert M.dice_score(a, b) == 2 / (4 + 1e-7)
    assert M.dice_score(np.zeros(4), np.zeros(4)) == 0.0
    w = M.class_weights_from_counts([30, 10, 0, 40, 20])
    np.testing.assert_allclose(w, [0.3, 0.1, 0.0, 0.4, 0.2])
    d = np.array([0.8, 0.5, 0.1, 0.9, 0.7])
    assert M.weighted_dice(d, w) == pytest.approx(float(np.sum(w * d)), abs=1e-15)
    assert M.weighted_dice(d, [30, 10, 0, 40, 20]) == pytest.approx(float(np.sum(w * d)), abs=1e-15)
    d_nan = d.copy()
    d_nan[1] = np.nan
    assert math.isnan(M.weighted_dice(d_nan, w))
    assert M.weighted_dice(d_nan, w, nan_policy="omit") == pytest.approx((0.24 + 0.36 + 0.14) / 0.9)


# ------------------------------------------------------------------------------------------
# (e) randomised comparison with naive per-pair implementations
# ------------------------------------------------------------------------------------------


def _naive_tables(seg, gt):
    s_ids = [i for i in np.unique(seg) if i != 0]
    g_ids = [i for i in np.unique(gt) if i != 0]
    inter = np.zeros((len(s_ids), len(g_ids)))
    s_area = np.array([np.count_nonzero(seg == i) for i in s_ids], float)
    g_area = np.array([np.count_nonzero(gt == j) for j in g_ids], float)
    for a, i in enumerate(s_ids):
        for b, j in enumerate(g_ids):
            inter[a, b] = np.count_nonzero((seg == i) & (gt == j))
    return inter, s_area, g_area


def _naive_tp(scores, threshold):
    """The reference's assignment: cost -[s >= t] - s / (2 n_matched) on the dense matrix."""
    n_matched = min(scores.shape)
    if n_matched == 0 or not np.any(scores >= threshold):
        return 0
    costs = -(scores >= threshold).astype(float) - scores / (2 * n_matched)
    r, c = linear_sum_assignment(costs)
    return int(np.count_nonzero(scores[r, c] >= threshold))


def _naive_sa(scores, threshold):
    tp = _naive_tp(scores, threshold)
    n_pred, n_true = scores.shape
    return tp / (n_pred + n_true - tp) if tp > 0 else 0.0


def _naive_pq(iou):
    ok = iou > 0.5
    tp = int(ok.sum())
    fp, fn = iou.shape[0] - tp, iou.shape[1] - tp
    if tp + fp + fn == 0:
        return math.nan
    return (tp / (tp + 0.5 * fp + 0.5 * fn)) * (iou[ok].sum() / tp if tp else 0.0)


def _naive_aji(inter, s_area, g_area):
    if inter.size == 0:
        return math.nan if inter.shape == (0, 0) else 0.0
    union = s_area[:, None] + g_area[None, :] - inter
    iou = inter / union
    best = iou.argmax(axis=0)
    num = den = 0.0
    used = set()
    for j in range(iou.shape[1]):
        if iou[best[j], j] > 0:
            num += inter[best[j], j]
            den += union[best[j], j]
            used.add(best[j])
        else:
            den += g_area[j]
    den += sum(s_area[i] for i in range(len(s_area)) if i not in used)
    return num / den


def _random_labels(rng, shape, n, max_side, id_pool):
    a = np.zeros(shape, np.uint64)
    ids = rng.choice(id_pool, size=n, replace=False)
    for i in ids:
        h, w = rng.integers(1, max_side + 1, size=2)
        r, c = rng.integers(0, shape[0] - h + 1), rng.integers(0, shape[1] - w + 1)
        a[r:r + h, c:c + w] = i
    return a


@pytest.mark.parametrize("seed", range(6))
def test_random_against_naive(seed):
    rng = np.random.default_rng([20250501, seed])
    thresholds = np.concatenate([[0.0, 0.1, 0.25, 1 / 3, 0.5], M.DEFAULT_THRESHOLDS[1:], [1.0]])
    for _ in range(25):
        shape = (int(rng.integers(6, 20)), int(rng.integers(6, 20)))
        pool = np.array([1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 2**33 + 1, 2**63 + 7, 2**64 - 1], np.uint64)
        gt = _random_labels(rng, shape, int(rng.integers(0, 9)), 6, pool)
        seg = _random_labels(rng, shape, int(rng.integers(0, 9)), 6, pool)
        if rng.random() < 0.3:
            seg = gt.copy()
            seg[rng.random(shape) < 0.15] = 0
        if rng.random() < 0.5:  # uint32 path as well
            seg, gt = (seg % np.uint64(1000)).astype(np.uint32), (gt % np.uint64(1000)).astype(np.uint32)
        inter, s_area, g_area = _naive_tables(seg, gt)
        iou = inter / (s_area[:, None] + g_area[None, :] - inter) if inter.size else inter

        msa, acc = M.mean_segmentation_accuracy(seg, gt, thresholds=thresholds, return_accuracies=True)
        expected = [_naive_sa(iou, t) for t in thresholds]
        assert acc == pytest.approx(expected, abs=1e-12)
        assert msa == pytest.approx(np.mean(expected), abs=1e-12)

        for criterion, scores in (("iot", inter / g_area[None, :]), ("iop", inter / s_area[:, None])):
            if inter.size == 0:
                scores = inter
            for t in (0.3, 0.5, 0.8):
                m = M.matching(seg, gt, threshold=t, criterion=criterion)
                assert m["tp"] == _naive_tp(scores, t), (criterion, t)
                quirk = M.matching(seg, gt, threshold=t, criterion="iop" if criterion == "iot" else "iot",
                                   reference_quirk=True)
                assert quirk == m

        pq = M.panoptic_quality(seg, gt)["pq"]
        naive = _naive_pq(iou) if iou.size or inter.shape != (0, 0) else math.nan
        assert (math.isnan(pq) and math.isnan(naive)) or pq == pytest.approx(naive, abs=1e-12)
        aji = M.aggregated_jaccard_index(seg, gt)
        naive = _naive_aji(inter, s_area, g_area)
        assert (math.isnan(aji) and math.isnan(naive)) or aji == pytest.approx(naive, abs=1e-12)


def test_tie_at_half_needs_assignment():
    """Two predictions with IoU exactly 0.5 against one object, and a chain where greedy fails."""
    gt = np.array([[1, 1, 1, 1, 0, 0]], np.uint32)
    seg = np.array([[1, 1, 2, 2, 0, 0]], np.uint32)
    assert M.matching(seg, gt)["tp"] == 1 and M.sa50(seg, gt) == pytest.approx(1 / 2)
    # iot >= 0.5 graph: gt a <- {p, q}, gt b <- {q}: a maximum matching has 2 pairs
    gt = np.array([[1, 1, 2, 2]], np.uint32)
    seg = np.array([[5, 6, 6, 6]], np.uint32)
    assert M.matching(seg, gt, threshold=0.5, criterion="iot")["tp"] == 2


def test_contingency_table_and_inputs():
    seg = np.array([[0, 4, 4, 9], [9, 9, 0, 0]], np.int64)
    gt = np.array([[2, 2, 0, 0], [2, 7, 7, 0]], np.uint16)
    ct = M.contingency_table(seg, gt)
    assert ct.seg_ids.tolist() == [4, 9] and ct.gt_ids.tolist() == [2, 7]
    assert ct.seg_areas.tolist() == [2, 3] and ct.gt_areas.tolist() == [3, 2]
    pairs = {
        (int(ct.seg_ids[a]), int(ct.gt_ids[b])): int(n) for a, b, n in zip(ct.seg_index, ct.gt_index, ct.intersection)
    }
    assert pairs == {(4, 2): 1, (9, 2): 1, (9, 7): 1}
    np.testing.assert_allclose(ct.scores("iou"), [1 / 4, 1 / 5, 1 / 4])
    assert M.mean_segmentation_accuracy(seg.astype(float), gt) == M.mean_segmentation_accuracy(seg, gt)
    assert M.matching(seg > 0, gt > 0)["n_pred"] == 1
    with pytest.raises(ValueError):
        M.contingency_table(seg, gt[:, :3])
    with pytest.raises(ValueError):
        M.contingency_table(seg + 0.5, gt)
    with pytest.raises(ValueError):
        M.matching(seg, gt, criterion="dice")
    neg = np.array([[-3, -3, 0, 5]])  # negative ids are objects too (sort path)
    assert M.contingency_table(neg, neg).seg_ids.tolist() == [-3, 5]
    assert M.mean_segmentation_accuracy(neg, neg) == 1.0


def test_package_import_is_light():
    code = (
        "import sys, pathosam.evaluation as e; assert 'scipy' not in sys.modules, 'scipy imported'; "
        "assert callable(e.mean_segmentation_accuracy) and 'mpq' in dir(e)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
