"""CoNSeP-style classification scores: detection F1, per-class F1 of matched nuclei, HoVer-Net F_c."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pathosam.evaluation.metrics import classification_counts, classification_scores


def _case():
    gt = np.zeros((20, 40), np.int32)
    seg = np.zeros_like(gt)
    gt[1:6, 1:6], seg[1:6, 1:6] = 1, 5          # A: matched, true 1, predicted 1
    gt[1:6, 10:16], seg[1:6, 10:15] = 2, 6      # B: matched (IoU 25/30), true 2, predicted 3
    gt[10:15, 1:6] = 3                           # C: missed (true 3)
    seg[10:15, 20:26] = 7                        # D: false positive (predicted 2)
    gt[10:15, 30:35], seg[10:15, 30:32] = 4, 8   # E: IoU 10/25 -> not matched (true 1, predicted 1)
    return seg, gt, {5: 1, 6: 3, 7: 2, 8: 1}, {1: 1, 2: 2, 3: 3, 4: 1}


def test_counts_and_scores_by_hand():
    seg, gt, sc, gc = _case()
    c = classification_counts(seg, gt, sc, gc, n_classes=4)
    assert c.confusion[1, 1] == 1 and c.confusion[2, 3] == 1 and c.confusion.sum() == 2
    assert c.unmatched_pred.tolist() == [0, 1, 1, 0]  # E (1) and D (2)
    assert c.unmatched_gt.tolist() == [0, 1, 0, 1]    # E (1) and C (3)
    s = classification_scores(c)
    d = s["detection"]
    assert (d["tp"], d["fp"], d["fn"]) == (2, 2, 2) and d["f1"] == pytest.approx(0.5)
    assert s["accuracy"] == pytest.approx(0.5)
    assert s["classes"][1]["f1"] == 1.0
    assert s["classes"][2]["f1"] == 0.0 and s["classes"][3]["f1"] == 0.0
    # HoVer-Net F_2: TP 0, TN = 2 - 0 - 0 - 1 = 1, FP 0, FN 1, unmatched predicted 2: 1, unmatched true 2: 0
    assert s["classes"][2]["hovernet_f"] == pytest.approx(2 / (2 + 2 + 1))
    # F_1: TP 1, TN 1, FP 0, FN 0, unmatched E on both sides -> 4 / (4 + 1 + 1)
    assert s["classes"][1]["hovernet_f"] == pytest.approx(4 / 6)


def test_class_maps_and_pooling():
    seg, gt, sc, gc = _case()
    seg_map = np.zeros(seg.shape, np.uint8)
    gt_map = np.zeros(gt.shape, np.uint8)
    for i, k in sc.items():
        seg_map[seg == i] = k
    for i, k in gc.items():
        gt_map[gt == i] = k
    a = classification_counts(seg, gt, seg_map, gt_map, 4)
    b = classification_counts(seg, gt, sc, gc, 4)
    assert np.array_equal(a.confusion, b.confusion)
    both = a + b
    assert both.confusion.sum() == 4 and classification_scores(both)["detection"]["f1"] == pytest.approx(0.5)


def test_empty_and_bad_classes():
    z = np.zeros((8, 8), np.int32)
    s = classification_scores(classification_counts(z, z, {}, {}, 5))
    assert s["detection"]["tp"] == 0 and math.isnan(s["detection"]["f1"]) and math.isnan(s["classes"][1]["f1"])
    seg, gt, sc, gc = _case()
    with pytest.raises(ValueError, match=r"predicted class ids must be in 0\.\.3"):
        classification_counts(seg, gt, {**sc, 5: 9}, gc, 4)
