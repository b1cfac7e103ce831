"""Nucleus classification scored as CoNSeP / HoVer-Net score it: detection of the nuclei, then
the class of the detected ones.

A prediction and a ground-truth nucleus match when IoU > ``match_iou`` (0.5: unique, as for PQ).
Counts are summed over a whole image set (:class:`ClassificationCounts`, ``+``) before the
scores are taken, as HoVer-Net pools its test images:

* detection: TP = matches, FP = unmatched predictions, FN = unmatched ground truth;
  F1_d = 2 TP / (2 TP + FP + FN);
* per class c, among the **matched** nuclei: TP_c = predicted c and true c, FP_c = predicted c
  and true other, FN_c = true c and predicted other; F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c);
* HoVer-Net's F_c (Graham et al. 2019, eq. 11) also charges the unmatched nuclei of class c:
  2 (TP_c + TN_c) / (2 (TP_c + TN_c) + 2 FP_c + 2 FN_c + FP_d,c + FN_d,c);
* the confusion matrix of the matched nuclei (rows: true class, columns: predicted class).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .overlap import contingency_table
from .panoptic import ClassSpec, _check_match_iou, _classes_for


@dataclass
class ClassificationCounts:
    """Summable counts of one or more images; class ids 0..n_classes-1 (0 = no class).

    ``confusion``: int64 (K, K) matched nuclei by (true class, predicted class);
    ``unmatched_pred`` / ``unmatched_gt``: int64 (K,) unmatched nuclei by class.
    """

    confusion: np.ndarray
    unmatched_pred: np.ndarray
    unmatched_gt: np.ndarray

    @classmethod
    def empty(cls, n_classes: int) -> "ClassificationCounts":
        z = np.zeros(n_classes, np.int64)
        return cls(np.zeros((n_classes, n_classes), np.int64), z.copy(), z.copy())

    def __add__(self, other: "ClassificationCounts") -> "ClassificationCounts":
        return ClassificationCounts(self.confusion + other.confusion, self.unmatched_pred + other.unmatched_pred,
                                    self.unmatched_gt + other.unmatched_gt)


def classification_counts(
    seg: np.ndarray, gt: np.ndarray, seg_classes: ClassSpec, gt_classes: ClassSpec, n_classes: int,
    *, match_iou: float = 0.5,
) -> ClassificationCounts:
    """Matched-pair confusion and unmatched counts of one image.

    Parameters
    ----------
    seg, gt : np.ndarray
        Predicted and ground-truth instance label images (0 = background).
    seg_classes, gt_classes : array or mapping
        The class of each object, as :func:`~pathosam.evaluation.metrics.instance_classes`
        takes it (a class map of the image's shape, a lookup ``classes[id]``, or ``{id: class}``).
    n_classes : int
        Class ids are 0..n_classes-1 (background / no class = 0 included).
    match_iou : float
        Matching threshold (IoU > match_iou; >= 0.5).
    """
    _check_match_iou(match_iou)
    ct = contingency_table(seg, gt)
    pc = _classes_for(np.asarray(seg), ct.seg_ids, seg_classes)
    gc = _classes_for(np.asarray(gt), ct.gt_ids, gt_classes)
    for what, c in (("predicted", pc), ("ground-truth", gc)):
        if c.size and (c.min() < 0 or c.max() >= n_classes):
            raise ValueError(f"{what} class ids must be in 0..{n_classes - 1}, got {int(c.min())}..{int(c.max())}")
    ok = ct.scores("iou") > match_iou
    si, gi = ct.seg_index[ok], ct.gt_index[ok]
    out = ClassificationCounts.empty(n_classes)
    np.add.at(out.confusion, (gc[gi], pc[si]), 1)
    seg_free = np.ones(ct.n_seg, bool)
    seg_free[si] = False
    gt_free = np.ones(ct.n_gt, bool)
    gt_free[gi] = False
    out.unmatched_pred += np.bincount(pc[seg_free], minlength=n_classes)
    out.unmatched_gt += np.bincount(gc[gt_free], minlength=n_classes)
    return out


def _f1(tp: float, fp: float, fn: float) -> float:
    d = 2 * tp + fp + fn
    return float(2 * tp / d) if d else float("nan")


def classification_scores(counts: ClassificationCounts, class_ids=None) -> dict:
    """Scores of summed counts: ``detection`` {tp, fp, fn, precision, recall, f1},
    ``accuracy`` (share of matched nuclei with the right class), and per class id
    ``classes[c]`` = {f1 (matched nuclei), hovernet_f (HoVer-Net's F_c), n_true (matched)};
    ``confusion`` as a nested list. ``class_ids``: the classes to score (default 1..K-1)."""
    cm = counts.confusion
    k = cm.shape[0]
    ids = list(range(1, k)) if class_ids is None else [int(c) for c in class_ids]
    tp_d = int(cm.sum())
    fp_d, fn_d = int(counts.unmatched_pred.sum()), int(counts.unmatched_gt.sum())
    out = {
        "detection": {"tp": tp_d, "fp": fp_d, "fn": fn_d,
                      "precision": tp_d / (tp_d + fp_d) if tp_d + fp_d else float("nan"),
                      "recall": tp_d / (tp_d + fn_d) if tp_d + fn_d else float("nan"),
                      "f1": _f1(tp_d, fp_d, fn_d)},
        "accuracy": float(np.trace(cm) / tp_d) if tp_d else float("nan"),
        "classes": {},
        "confusion": cm.tolist(),
    }
    for c in ids:
        tp = int(cm[c, c])
        fp = int(cm[:, c].sum() - tp)
        fn = int(cm[c, :].sum() - tp)
        tn = tp_d - tp - fp - fn
        d = 2 * (tp + tn) + 2 * fp + 2 * fn + int(counts.unmatched_pred[c]) + int(counts.unmatched_gt[c])
        out["classes"][c] = {"f1": _f1(tp, fp, fn), "hovernet_f": float(2 * (tp + tn) / d) if d else float("nan"),
                             "n_true": int(cm[c, :].sum())}
    return out
