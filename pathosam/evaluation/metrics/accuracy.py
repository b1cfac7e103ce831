"""Object matching and segmentation accuracy as elf / micro-sam compute them (mSA, SA50, SA75,
:func:`matching`), and the aggregated Jaccard index (AJI)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .overlap import DEFAULT_THRESHOLDS, SA50_INDEX, SA75_INDEX, Contingency, Criterion, contingency_table



def _max_matching(rows: np.ndarray, cols: np.ndarray) -> int:
    """Size of a maximum matching of the bipartite graph with the (distinct) edges rows[k]-cols[k].

    Objects with a single candidate are matched directly; the connected components of the rest
    (rare: only when an object has two partners at or above the threshold) are solved with the
    Hungarian algorithm on their small dense block.
    """
    if rows.size == 0:
        return 0
    _, ri, rdeg = np.unique(rows, return_inverse=True, return_counts=True)
    _, ci, cdeg = np.unique(cols, return_inverse=True, return_counts=True)
    if rdeg.max() == 1 and cdeg.max() == 1:
        return int(rows.size)
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nr, nc = rdeg.size, cdeg.size
    graph = coo_matrix((np.ones(rows.size), (ri, nr + ci)), shape=(nr + nc, nr + nc))
    _, comp = connected_components(graph, directed=False)
    edge_comp = comp[ri]
    per_comp = np.bincount(edge_comp)
    total = int(np.count_nonzero(per_comp == 1))
    for c in np.flatnonzero(per_comp > 1):
        sel = edge_comp == c
        r_u, r_l = np.unique(ri[sel], return_inverse=True)
        c_u, c_l = np.unique(ci[sel], return_inverse=True)
        block = np.zeros((r_u.size, c_u.size))
        block[r_l, c_l] = 1.0
        r, k = linear_sum_assignment(-block)
        total += int(block[r, k].sum())
    return total


def _true_positives(ct: Contingency, scores: np.ndarray, threshold: float) -> int:
    """elf's TP count: the Hungarian assignment with cost -[s >= t] - s / (2 n_matched).

    The tie-breaking term sums to at most 1/2 over an assignment, so the optimum is exactly a
    maximum-cardinality matching among the pairs with score >= t: that size is computed here.
    """
    n_matched = min(ct.n_seg, ct.n_gt)
    if n_matched == 0:
        return 0
    if threshold <= 0:  # every pair qualifies, overlapping or not
        return n_matched
    ok = scores >= threshold
    return _max_matching(ct.seg_index[ok], ct.gt_index[ok])


def _ratio(tp: int, denominator: int | float) -> float:
    return tp / denominator if tp > 0 else 0.0


def mean_segmentation_accuracy(
    seg: np.ndarray,
    gt: np.ndarray,
    thresholds: Sequence[float] | np.ndarray | None = None,
    return_accuracies: bool = False,
) -> float | tuple[float, list[float]]:
    """Mean segmentation accuracy (mSA) over IoU thresholds, identical to elf / micro-sam.

    For each threshold t, objects are matched one-to-one (the Hungarian assignment of
    ``elf.evaluation.mean_segmentation_accuracy``: maximise the number of pairs with IoU >= t,
    IoU as tie-breaker); TP = matched pairs with IoU >= t, FP = n_pred - TP, FN = n_gt - TP and
    SA(t) = TP / (TP + FP + FN), defined as 0 when TP = 0 (also when both images are empty).

    Parameters
    ----------
    seg : np.ndarray
        Predicted label image (0 = background).
    gt : np.ndarray
        Ground-truth label image of the same shape. micro-sam's evaluation relabels connected
        components of the ground truth first; do that yourself if you need its numbers.
    thresholds : sequence of float, optional
        IoU thresholds; default :data:`DEFAULT_THRESHOLDS` = ``np.arange(0.5, 1.0, 0.05)``.
    return_accuracies : bool
        Also return the SA of each threshold.

    Returns
    -------
    msa : float
        Mean of the per-threshold accuracies.
    accuracies : list of float
        Only with ``return_accuracies``: SA per threshold (SA50 = ``[0]``, SA75 = ``[5]`` for
        the default thresholds).

    Notes
    -----
    The reference's cost -[IoU >= t] - IoU / (2 n_matched) adds at most 1/2 of tie-breaking
    to an integer number of qualifying pairs, so its optimum always holds a maximum number of
    pairs with IoU >= t; TP is that number. It is computed on the sparse graph of pairs with
    IoU >= t: objects with a single candidate are counted directly (always the case for t > 0.5)
    and only the connected components with a shared candidate (IoU exactly 0.5, or lower
    thresholds) go through ``scipy.optimize.linear_sum_assignment``. Thresholds <= 0 make every
    pair qualify, overlapping or not (TP = min(n_pred, n_gt)), as in the reference.
    """
    ct = contingency_table(seg, gt)
    scores = ct.scores("iou")
    ts = DEFAULT_THRESHOLDS if thresholds is None else thresholds
    accuracies = []
    for t in ts:
        tp = _true_positives(ct, scores, float(t))
        accuracies.append(_ratio(tp, ct.n_seg + ct.n_gt - tp))  # TP + FP + FN
    msa = float(np.mean(accuracies)) if accuracies else math.nan
    return (msa, accuracies) if return_accuracies else msa


def sa50(seg: np.ndarray, gt: np.ndarray) -> float:
    """Segmentation accuracy at IoU 0.5 (``mean_segmentation_accuracy(..., True)[1][0]``)."""
    return mean_segmentation_accuracy(seg, gt, thresholds=DEFAULT_THRESHOLDS[SA50_INDEX:SA50_INDEX + 1])


def sa75(seg: np.ndarray, gt: np.ndarray) -> float:
    """Segmentation accuracy at the reference's 6th threshold, 0.7500000000000002 (SA75, index 5)."""
    return mean_segmentation_accuracy(seg, gt, thresholds=DEFAULT_THRESHOLDS[SA75_INDEX:SA75_INDEX + 1])


def matching(
    seg: np.ndarray,
    gt: np.ndarray,
    threshold: float = 0.5,
    criterion: Criterion = "iou",
    *,
    reference_quirk: bool = False,
) -> dict[str, float | int]:
    """Detection scores from a one-to-one object matching, as ``elf.evaluation.matching``.

    Parameters
    ----------
    seg, gt : np.ndarray
        Predicted and ground-truth label images (0 = background).
    threshold : float
        A pair counts as a true positive when its score is >= ``threshold``.
    criterion : {"iou", "iot", "iop"}
        Intersection over union; over the ground-truth object ("true"); over the predicted object.
    reference_quirk : bool
        elf names the two one-sided criteria the other way round (its code, derived from
        StarDist where rows are ground truth, divides "iot" by the *predicted* object's area).
        With ``True``, "iot" and "iop" are swapped to reproduce elf's numbers; "iou" is the same
        either way (the reference vectors only cover "iou").

    Returns
    -------
    dict
        ``precision`` TP/(TP+FP), ``recall`` TP/(TP+FN), ``segmentation_accuracy``
        TP/(TP+FP+FN), ``f1`` 2TP/(2TP+FP+FN) -- each 0 when TP = 0, as elf -- and the integer
        counts ``tp``, ``fp``, ``fn``, ``n_pred``, ``n_true``.
    """
    if criterion not in ("iou", "iot", "iop"):
        raise ValueError(f"criterion must be 'iou', 'iot' or 'iop', got {criterion!r}")
    if reference_quirk and criterion != "iou":
        criterion = "iop" if criterion == "iot" else "iot"
    ct = contingency_table(seg, gt)
    tp = _true_positives(ct, ct.scores(criterion), float(threshold))
    fp, fn = ct.n_seg - tp, ct.n_gt - tp
    return {
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "segmentation_accuracy": _ratio(tp, tp + fp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "n_pred": ct.n_seg,
        "n_true": ct.n_gt,
    }



def aggregated_jaccard_index(seg: np.ndarray, gt: np.ndarray) -> float:
    """Aggregated Jaccard Index (Kumar et al. 2017), as HoVer-Net's ``get_fast_aji``.

    Each ground-truth object G_i is paired with the prediction S_j of largest IoU (ties: the
    lowest prediction id); AJI = Σ_i |G_i ∩ S_j| / (Σ_i |G_i ∪ S_j| + Σ_{unused S} |S|). A
    ground-truth object that overlaps no prediction adds its area to the union; a prediction
    chosen by several ground-truth objects is counted in each of their unions (the known
    over-penalisation of AJI); predictions chosen by none add their areas to the union.

    Parameters
    ----------
    seg, gt : np.ndarray
        Predicted and ground-truth instance label images.

    Returns
    -------
    float
        In [0, 1]; NaN when both images are empty, 0 when only one is.
    """
    ct = contingency_table(seg, gt)
    if ct.n_seg == 0 and ct.n_gt == 0:
        return math.nan
    iou = ct.scores("iou")
    # best prediction per ground-truth object: sort by (gt, -iou, seg), take the first of each gt
    order = np.lexsort((ct.seg_index, -iou, ct.gt_index))
    g_sorted = ct.gt_index[order]
    first = order[np.concatenate(([True], g_sorted[1:] != g_sorted[:-1]))] if order.size else order
    inter = int(ct.intersection[first].sum())
    union = int(ct.union()[first].sum())
    paired_gt = np.zeros(ct.n_gt, bool)
    paired_gt[ct.gt_index[first]] = True
    used = np.zeros(ct.n_seg, bool)
    used[ct.seg_index[first]] = True
    union += int(ct.gt_areas[~paired_gt].sum()) + int(ct.seg_areas[~used].sum())
    return inter / union
