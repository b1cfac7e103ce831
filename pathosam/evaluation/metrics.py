"""Evaluation metrics for nucleus instance and semantic segmentation.

Every function takes label images as numpy arrays indexed ``[row, col]`` (any number of
dimensions works): ``0`` is background, every other integer value is one object. Ids need not be
consecutive and may be any integer dtype up to ``uint64``; boolean arrays count as one object.

All object metrics are built on one sparse overlap table (:func:`contingency_table`): the areas of
all objects and the intersection of every *overlapping* (prediction, ground-truth) pair, computed
with ``bincount`` / ``unique`` over the pixels where both images are foreground (runs of equal
pixels collapsed first). Nothing is quadratic in the number of objects, so thousands of nuclei in
a 2000 x 2000 image take well under a second.

Conventions
-----------
* Argument order is ``(seg, gt)`` -- prediction first -- as in elf / micro-sam, except
  :func:`semantic_dice`, which keeps patho-sam's ``(gt, seg)`` order.
* :func:`mean_segmentation_accuracy` and :func:`matching` reproduce ``elf.evaluation`` (used by
  micro-sam and patho-sam) exactly, including the empty cases (SA = 0 when TP = 0, also when both
  images are empty). SA50 is ``accuracies[0]`` and SA75 ``accuracies[5]``; note that the
  reference's 6th threshold is ``np.arange(0.5, 1.0, 0.05)[5] == 0.7500000000000002``, not 0.75
  (:func:`sa75` uses the same value).
* Panoptic quality (:func:`panoptic_quality`, :func:`mpq`, :func:`bpq`, :func:`mpq_plus`) follows
  Kirillov et al. 2019 with the unique matching at IoU > 0.5 used by HoVer-Net, PanNuke and CoNIC.
  Empty cases: an image (or class) with neither ground-truth nor predicted objects has PQ = SQ =
  DQ = NaN; when there are objects but no match, SQ = DQ = PQ = 0. See :func:`mpq` for which
  images/classes the PanNuke averages skip.
* :func:`aggregated_jaccard_index` is Kumar et al. 2017 as implemented by HoVer-Net
  (``get_fast_aji``); NaN when both images are empty.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "DEFAULT_THRESHOLDS",
    "PANNUKE_CLASS_IDS",
    "SA50_INDEX",
    "SA75_INDEX",
    "Contingency",
    "aggregated_jaccard_index",
    "bpq",
    "class_weights_from_counts",
    "contingency_table",
    "dice_score",
    "instance_class_counts",
    "instance_classes",
    "matching",
    "mean_segmentation_accuracy",
    "mpq",
    "mpq_plus",
    "panoptic_quality",
    "panoptic_quality_per_class",
    "sa50",
    "sa75",
    "semantic_dice",
    "weighted_dice",
]

#: The reference's IoU thresholds ``np.arange(0.5, 1.0, 0.05)`` (0.5 ... 0.95, 10 values, with the
#: float rounding of ``arange``: e.g. index 5 is 0.7500000000000002).
DEFAULT_THRESHOLDS: np.ndarray = np.arange(0.5, 1.0, 0.05)
DEFAULT_THRESHOLDS.flags.writeable = False
#: Index of SA50 / SA75 in the per-threshold accuracies of :func:`mean_segmentation_accuracy`.
SA50_INDEX = 0
SA75_INDEX = 5
#: PanNuke nucleus classes (1 neoplastic, 2 inflammatory, 3 connective, 4 dead, 5 epithelial).
PANNUKE_CLASS_IDS: tuple[int, ...] = (1, 2, 3, 4, 5)

Criterion = Literal["iou", "iot", "iop"]

# Largest label value (and largest pair-key space) handled with a dense bincount / lookup table,
# unless the image itself is larger: bounds that path's memory to ~8 bytes per pixel.
_DENSE_MIN = 1 << 20


# --------------------------------------------------------------------------------------------
# overlap core
# --------------------------------------------------------------------------------------------


def _as_labels(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype == bool:
        return a.view(np.uint8)
    if a.dtype.kind in "ui":
        return a
    if a.dtype.kind == "f":
        if a.size and (not np.all(np.isfinite(a)) or np.any(a != np.round(a))):
            raise ValueError(f"{name}: a float label image must hold whole numbers only")
        return a.astype(np.int64)
    raise TypeError(f"{name}: expected an integer label image, got dtype {a.dtype}")


def _runs(flat: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start positions and lengths of the runs where ``flat`` (and every array in ``others``)
    stays constant."""
    n = flat.size
    change = flat[1:] != flat[:-1]
    for o in others:
        change |= o[1:] != o[:-1]
    starts = np.concatenate(([0], np.flatnonzero(change) + 1))
    lengths = np.diff(np.append(starts, n))
    return starts, lengths


def _reduce_by_key(keys: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique ``keys`` and the summed integer ``weights`` of each."""
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    first = np.concatenate(([0], np.flatnonzero(sk[1:] != sk[:-1]) + 1)) if sk.size else np.zeros(0, np.intp)
    return sk[first], np.add.reduceat(weights[order], first) if sk.size else np.zeros(0, np.int64)


class _Factor:
    """The non-zero ids of one flattened label image, their areas, and value -> index lookup."""

    __slots__ = ("ids", "areas", "_lut")

    def __init__(self, flat: np.ndarray):
        self._lut = None
        if flat.size == 0:
            self.ids = np.zeros(0, flat.dtype)
            self.areas = np.zeros(0, np.int64)
            return
        vmax = int(flat.max())
        dense = vmax < max(_DENSE_MIN, flat.size) and (flat.dtype.kind == "u" or int(flat.min()) >= 0)
        if dense:
            counts = np.bincount(flat.astype(np.intp, copy=False), minlength=1)
            counts[0] = 0
            ids = np.flatnonzero(counts)
            self.areas = counts[ids].astype(np.int64)
            self.ids = ids.astype(flat.dtype)
            lut = np.zeros(vmax + 1, np.intp)
            lut[ids] = np.arange(ids.size)
            self._lut = lut
        else:  # huge or negative ids: collapse runs, then sort the (few) run values
            starts, lengths = _runs(flat)
            vals, areas = _reduce_by_key(flat[starts], lengths)
            keep = vals != 0
            self.ids, self.areas = vals[keep], areas[keep].astype(np.int64)

    def index(self, values: np.ndarray) -> np.ndarray:
        """Positions in :attr:`ids` of ``values`` (all of which must be non-zero ids)."""
        if self._lut is not None:
            return self._lut[values.astype(np.intp, copy=False)]
        return np.searchsorted(self.ids, values)


@dataclass(frozen=True, eq=False)
class Contingency:
    """Sparse overlap table of a prediction and a ground-truth label image.

    Attributes
    ----------
    seg_ids, gt_ids : np.ndarray
        Sorted non-zero ids of each image (dtype of the input).
    seg_areas, gt_areas : np.ndarray
        int64 pixel count of each object, aligned with the ids.
    seg_index, gt_index : np.ndarray
        intp, one entry per overlapping (prediction, ground-truth) pair: positions in the id
        arrays. Pairs are sorted by ``(seg_index, gt_index)``; pairs without overlap are absent.
    intersection : np.ndarray
        int64 (> 0) number of pixels shared by each pair.
    """

    seg_ids: np.ndarray
    seg_areas: np.ndarray
    gt_ids: np.ndarray
    gt_areas: np.ndarray
    seg_index: np.ndarray
    gt_index: np.ndarray
    intersection: np.ndarray

    @property
    def n_seg(self) -> int:
        """Number of predicted objects."""
        return int(self.seg_ids.size)

    @property
    def n_gt(self) -> int:
        """Number of ground-truth objects."""
        return int(self.gt_ids.size)

    def union(self) -> np.ndarray:
        """int64 union area of each overlapping pair."""
        return self.seg_areas[self.seg_index] + self.gt_areas[self.gt_index] - self.intersection

    def scores(self, criterion: Criterion = "iou") -> np.ndarray:
        """float64 overlap score of each pair.

        Parameters
        ----------
        criterion : {"iou", "iot", "iop"}
            Intersection over union, over the ground-truth object's area ("true"), or over the
            predicted object's area. Non-overlapping pairs (absent) score 0 for all three.
        """
        if criterion == "iou":
            return self.intersection / self.union()
        if criterion == "iot":
            return self.intersection / self.gt_areas[self.gt_index]
        if criterion == "iop":
            return self.intersection / self.seg_areas[self.seg_index]
        raise ValueError(f"criterion must be 'iou', 'iot' or 'iop', got {criterion!r}")


def contingency_table(seg: np.ndarray, gt: np.ndarray) -> Contingency:
    """Object areas and the intersections of all overlapping object pairs of two label images.

    Parameters
    ----------
    seg, gt : np.ndarray
        Label images of equal shape (prediction, ground truth); 0 = background.

    Returns
    -------
    Contingency
        The sparse table. Cost: a few passes over the pixels plus a sort of the runs of
        jointly-foreground pixels; independent of the number of object pairs.
    """
    seg_a, gt_a = _as_labels(seg, "seg"), _as_labels(gt, "gt")
    if seg_a.shape != gt_a.shape:
        raise ValueError(f"seg and gt differ in shape: {seg_a.shape} vs {gt_a.shape}")
    s, g = seg_a.ravel(), gt_a.ravel()
    fs, fg = _Factor(s), _Factor(g)
    both = (s != 0) & (g != 0)
    sm, gm = s[both], g[both]
    if sm.size:
        starts, lengths = _runs(sm, gm)
        si = fs.index(sm[starts]).astype(np.int64)
        gi = fg.index(gm[starts]).astype(np.int64)
        n_gt = fg.ids.size
        keys = si * n_gt + gi
        n_keys = fs.ids.size * n_gt
        if n_keys <= max(_DENSE_MIN, 2 * keys.size):
            counts = np.bincount(keys, weights=lengths, minlength=n_keys)
            keys = np.flatnonzero(counts)
            inter = counts[keys].astype(np.int64)
        else:
            keys, inter = _reduce_by_key(keys, lengths.astype(np.int64))
        seg_index = (keys // n_gt).astype(np.intp)
        gt_index = (keys - seg_index * n_gt).astype(np.intp)
    else:
        seg_index = gt_index = np.zeros(0, np.intp)
        inter = np.zeros(0, np.int64)
    return Contingency(fs.ids, fs.areas, fg.ids, fg.areas, seg_index, gt_index, inter.astype(np.int64))


# --------------------------------------------------------------------------------------------
# matching, mSA (elf)
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# dice
# --------------------------------------------------------------------------------------------

_DICE_EPS = 1e-7


def dice_score(
    seg: np.ndarray,
    gt: np.ndarray,
    threshold_seg: float | None = 0,
    threshold_gt: float | None = 0,
) -> float:
    """Dice of the binarised images, as ``elf.evaluation.dice_score``: 2|A∩B| / (|A|+|B|+1e-7).

    Parameters
    ----------
    seg, gt : np.ndarray
        Prediction and ground truth of equal shape.
    threshold_seg, threshold_gt : float or None
        Foreground = values > threshold (default 0: any object). ``None`` uses the values as
        they are (soft dice of probability maps).

    Returns
    -------
    float
        0 when both are empty (0 / 1e-7).
    """
    a, b = np.asarray(seg), np.asarray(gt)
    if a.shape != b.shape:
        raise ValueError(f"seg and gt differ in shape: {a.shape} vs {b.shape}")
    if threshold_seg is not None:
        a = a > threshold_seg
    if threshold_gt is not None:
        b = b > threshold_gt
    if a.dtype == bool and b.dtype == bool:
        nom = 2 * np.count_nonzero(a & b)
        denom = np.count_nonzero(a) + np.count_nonzero(b)
    else:
        nom = 2 * np.sum(b * a)
        denom = np.sum(b) + np.sum(a)
    return float(nom) / float(denom + _DICE_EPS)


def semantic_dice(
    gt_classes: np.ndarray,
    seg_classes: np.ndarray,
    class_ids: Sequence[int] = PANNUKE_CLASS_IDS,
    *,
    reference_quirk: bool = False,
) -> np.ndarray:
    """Per-class dice of two class maps (note the order: ground truth first, as patho-sam).

    dice_c = 2|G_c ∩ S_c| / (|G_c| + |S_c| + 1e-7) with G_c = (gt == c), S_c = (seg == c).

    Parameters
    ----------
    gt_classes, seg_classes : np.ndarray
        Integer class maps of equal shape (0 = background).
    class_ids : sequence of int
        Classes to score, default PanNuke's 1..5.
    reference_quirk : bool
        ``False`` (default, correct): dice_c is NaN only when *both* maps lack class c; a
        prediction of a class absent from the ground truth scores 0. ``True``: reproduce
        patho-sam's ``semantic_segmentation_quality``, whose misplaced parenthesis makes dice_c
        NaN whenever the ground truth lacks class c, so false positives of absent classes are
        not penalised (and drop out of the later ``np.nanmean`` over images).

    Returns
    -------
    np.ndarray
        float64 (len(class_ids),). Per dataset the reference takes ``np.nanmean`` over images
        per class, then :func:`weighted_dice` or a plain mean over classes.
    """
    g, s = np.asarray(gt_classes), np.asarray(seg_classes)
    if g.shape != s.shape:
        raise ValueError(f"gt_classes and seg_classes differ in shape: {g.shape} vs {s.shape}")
    out = np.empty(len(class_ids), np.float64)
    for k, c in enumerate(class_ids):
        gc, sc = g == c, s == c
        n_g, n_s = np.count_nonzero(gc), np.count_nonzero(sc)
        if n_g == 0 and (reference_quirk or n_s == 0):
            out[k] = np.nan
        else:
            out[k] = float(2 * np.count_nonzero(gc & sc)) / float(n_g + n_s + _DICE_EPS)
    return out


def class_weights_from_counts(counts: Sequence[float] | np.ndarray) -> np.ndarray:
    """Class weights w_c = (#instances of class c) / (#instances), as patho-sam's PanNuke weights.

    Parameters
    ----------
    counts : array-like
        Instance count per class (e.g. summed :func:`instance_class_counts` over the images;
        patho-sam uses PanNuke fold 3).

    Returns
    -------
    np.ndarray
        float64 weights summing to 1 (all NaN if every count is 0).
    """
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    return c / total if total > 0 else np.full_like(c, np.nan)


def weighted_dice(
    per_class: Sequence[float] | np.ndarray,
    weights: Sequence[float] | np.ndarray,
    *,
    nan_policy: Literal["propagate", "omit"] = "propagate",
) -> float:
    """Weighted mean of per-class dice scores: Σ_c w_c·dice_c / Σ_c w_c.

    With weights from :func:`class_weights_from_counts` (Σ w = 1) this is patho-sam's
    "weighted mean" Σ_c w_c·dice_c (up to float rounding); equal weights give its "absolute mean".

    Parameters
    ----------
    per_class : array-like
        Dice per class (e.g. ``np.nanmean`` over images of :func:`semantic_dice`).
    weights : array-like
        Non-negative weight per class (counts work too: they are normalised).
    nan_policy : {"propagate", "omit"}
        "propagate" (reference behaviour): any NaN class makes the result NaN. "omit": NaN classes
        are left out and the remaining weights renormalised (NaN if nothing is left).

    Returns
    -------
    float
    """
    d = np.asarray(per_class, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if d.shape != w.shape:
        raise ValueError(f"per_class and weights differ in shape: {d.shape} vs {w.shape}")
    if nan_policy == "omit":
        keep = ~np.isnan(d)
        d, w = d[keep], w[keep]
    elif nan_policy != "propagate":
        raise ValueError(f"nan_policy must be 'propagate' or 'omit', got {nan_policy!r}")
    total = w.sum()
    if d.size == 0 or total <= 0:
        return math.nan
    return float(np.sum(w * d) / total)


# --------------------------------------------------------------------------------------------
# per-instance classes
# --------------------------------------------------------------------------------------------

ClassSpec = np.ndarray | Mapping[int, int] | Sequence[int]


def _classes_for(labels: np.ndarray, ids: np.ndarray, classes: ClassSpec, factor: _Factor | None = None) -> np.ndarray:
    """int64 class of each id in ``ids`` (see :func:`instance_classes` for ``classes``)."""
    if isinstance(classes, Mapping):
        return np.array([int(classes.get(int(i), 0)) for i in ids], np.int64)
    cls = np.asarray(classes)
    if cls.shape == labels.shape:  # per-pixel class map: majority vote, background excluded
        if ids.size == 0:
            return np.zeros(0, np.int64)
        lab = _as_labels(labels, "labels").ravel()
        cm = _as_labels(cls, "classes").ravel()
        fg = (lab != 0) & (cm != 0)
        lv, cv = lab[fg], cm[fg]
        out = np.zeros(ids.size, np.int64)
        if lv.size == 0:
            return out
        f = factor if factor is not None else _Factor(lab)
        starts, lengths = _runs(lv, cv)
        li = f.index(lv[starts]).astype(np.int64)
        cvals, cinv = np.unique(cv[starts], return_inverse=True)
        votes = np.zeros((ids.size, cvals.size), np.int64)
        np.add.at(votes, (li, cinv.ravel()), lengths)
        has = votes.max(axis=1) > 0
        out[has] = cvals[votes[has].argmax(axis=1)]  # ties: the lower class id
        return out
    if cls.ndim != 1:
        raise ValueError(
            f"classes must be a class map of the label image's shape {labels.shape}, a 1-D lookup "
            f"indexed by id, or a mapping id -> class; got shape {cls.shape}"
        )
    out = np.zeros(ids.size, np.int64)
    inside = ids.astype(np.float64) < cls.size if ids.size else np.zeros(0, bool)
    if ids.dtype.kind == "i":
        inside &= ids >= 0
    out[inside] = cls[ids[inside].astype(np.intp)]
    return out


def instance_classes(labels: np.ndarray, classes: ClassSpec) -> tuple[np.ndarray, np.ndarray]:
    """The class of every object of a label image.

    Parameters
    ----------
    labels : np.ndarray
        Instance label image, 0 = background.
    classes : np.ndarray or mapping
        One of: a per-pixel class map of the same shape as ``labels`` (an object's class is the
        majority of its pixels' classes, class-0 pixels excluded, ties -> lower id, 0 if all its
        pixels are 0 -- the rule of :func:`pathosam.semantic.nucleus_classes`); a 1-D lookup
        with ``classes[id]`` (e.g. the ``classes`` array of ``nucleus_classes``); or a mapping
        ``{id: class}``. Ids outside the lookup/mapping get class 0 (no class).

    Returns
    -------
    ids : np.ndarray
        Sorted non-zero ids.
    classes : np.ndarray
        int64 class per id.
    """
    lab = _as_labels(labels, "labels")
    f = _Factor(lab.ravel())
    return f.ids, _classes_for(lab, f.ids, classes, f)


def instance_class_counts(
    labels: np.ndarray, classes: ClassSpec, class_ids: Sequence[int] = PANNUKE_CLASS_IDS
) -> np.ndarray:
    """Number of objects of each class in one image (for :func:`class_weights_from_counts`).

    ``classes`` as in :func:`instance_classes`. patho-sam counts the distinct instance ids found
    in each class channel of PanNuke; with one class per instance that is the same number.
    """
    _, cls = instance_classes(labels, classes)
    return np.array([np.count_nonzero(cls == c) for c in class_ids], np.int64)


# --------------------------------------------------------------------------------------------
# panoptic quality
# --------------------------------------------------------------------------------------------


def _pq_from_counts(tp: int, fp: int, fn: int, iou_sum: float, eps: float) -> dict[str, float | int]:
    if tp + fp + fn == 0:
        pq = sq = dq = math.nan
    else:
        dq = tp / (tp + 0.5 * fp + 0.5 * fn)
        sq = iou_sum / (tp + eps) if tp > 0 else 0.0
        pq = dq * sq
    return {"pq": pq, "sq": sq, "dq": dq, "tp": int(tp), "fp": int(fp), "fn": int(fn), "iou_sum": float(iou_sum)}


def _check_match_iou(match_iou: float) -> None:
    if not match_iou >= 0.5:
        raise ValueError("match_iou must be >= 0.5 (the matching at IoU > 0.5 is unique; lower needs an assignment)")


def _pq_matches(ct: Contingency, match_iou: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    iou = ct.scores("iou")
    ok = iou > match_iou
    return ct.seg_index[ok], ct.gt_index[ok], iou[ok]


def panoptic_quality(
    seg: np.ndarray, gt: np.ndarray, *, match_iou: float = 0.5, eps: float = 0.0
) -> dict[str, float | int]:
    """Panoptic quality of one image, all objects one class (binary PQ).

    A predicted and a ground-truth object match when IoU > ``match_iou`` (> 0.5 makes the
    matching unique, no assignment needed). TP = matches, FP = unmatched predictions,
    FN = unmatched ground truth; DQ = TP / (TP + FP/2 + FN/2), SQ = Σ IoU(matches) / TP,
    PQ = DQ·SQ.

    Parameters
    ----------
    seg, gt : np.ndarray
        Predicted and ground-truth instance label images.
    match_iou : float
        Matching threshold (>= 0.5).
    eps : float
        Added to TP in the SQ denominator. 0 gives the exact PQ; ``1e-6`` reproduces the
        HoVer-Net / PanNuke / CoNIC code (``sq = iou_sum / (tp + 1e-6)``) to the last bits.

    Returns
    -------
    dict
        ``pq``, ``sq``, ``dq`` and ``tp``, ``fp``, ``fn``, ``iou_sum``. Empty cases: both images
        empty -> pq = sq = dq = NaN (TP = FP = FN = 0); objects but no match (e.g. empty
        prediction or empty ground truth) -> pq = sq = dq = 0.
    """
    _check_match_iou(match_iou)
    ct = contingency_table(seg, gt)
    _, _, iou = _pq_matches(ct, match_iou)
    tp = int(iou.size)
    return _pq_from_counts(tp, ct.n_seg - tp, ct.n_gt - tp, float(iou.sum()), eps)


def _per_class_counts(
    seg: np.ndarray,
    seg_class: ClassSpec,
    gt: np.ndarray,
    gt_class: ClassSpec,
    class_ids: Sequence[int],
    match_iou: float,
) -> np.ndarray:
    """(len(class_ids), 4) float64 rows TP, FP, FN, IoU-sum."""
    _check_match_iou(match_iou)
    ct = contingency_table(seg, gt)
    seg_l, gt_l = _as_labels(seg, "seg"), _as_labels(gt, "gt")
    cs = _classes_for(seg_l, ct.seg_ids, seg_class)
    cg = _classes_for(gt_l, ct.gt_ids, gt_class)
    si, gi, iou = _pq_matches(ct, match_iou)
    same = cs[si] == cg[gi]  # a match across classes is a FP of one class and a FN of the other
    mc, miou = cg[gi][same], iou[same]
    out = np.zeros((len(class_ids), 4), np.float64)
    for k, c in enumerate(class_ids):
        m = mc == c
        tp = int(np.count_nonzero(m))
        out[k] = (tp, np.count_nonzero(cs == c) - tp, np.count_nonzero(cg == c) - tp, miou[m].sum())
    return out


def panoptic_quality_per_class(
    seg: np.ndarray,
    seg_class: ClassSpec,
    gt: np.ndarray,
    gt_class: ClassSpec,
    class_ids: Sequence[int] = PANNUKE_CLASS_IDS,
    *,
    match_iou: float = 0.5,
    eps: float = 0.0,
) -> dict[int, dict[str, float | int]]:
    """Panoptic quality of each class in one image.

    For class c only the predicted objects of class c and the ground-truth objects of class c
    take part (PanNuke's per-class instance channels): a prediction of the wrong class is a FP
    of its class and leaves the ground-truth object a FN of its own.

    Parameters
    ----------
    seg, gt : np.ndarray
        Instance label images (object ids unique across classes).
    seg_class, gt_class : np.ndarray or mapping
        Class of each object: a per-pixel class map (majority vote), a 1-D lookup by id or a
        mapping id -> class; see :func:`instance_classes`.
    class_ids : sequence of int
        Classes to report, default PanNuke's 1..5.
    match_iou, eps : float
        As in :func:`panoptic_quality`.

    Returns
    -------
    dict
        ``{c: {"pq", "sq", "dq", "tp", "fp", "fn", "iou_sum"}}``; a class absent from both images
        has NaN pq/sq/dq; a class with only false positives (absent from the ground truth) has
        pq = 0 here -- :func:`mpq` then skips it, as PanNuke does.
    """
    counts = _per_class_counts(seg, seg_class, gt, gt_class, class_ids, match_iou)
    return {int(c): _pq_from_counts(int(r[0]), int(r[1]), int(r[2]), r[3], eps) for c, r in zip(class_ids, counts)}


def _nanmean(x) -> float:
    a = np.asarray(x, dtype=np.float64)
    a = a[~np.isnan(a)]
    return float(a.mean()) if a.size else math.nan


def _by_tissue(per_image: np.ndarray, tissue: Sequence | None) -> tuple[float, dict]:
    if tissue is None:
        return _nanmean(per_image), {}
    t = list(tissue)
    if len(t) != per_image.size:
        raise ValueError(f"tissue has {len(t)} entries for {per_image.size} images")
    names = list(dict.fromkeys(t))
    per_tissue = {n: _nanmean(per_image[[i for i, x in enumerate(t) if x == n]]) for n in names}
    return _nanmean(list(per_tissue.values())), per_tissue


def mpq(
    segs: Iterable[np.ndarray],
    seg_classes: Iterable[ClassSpec],
    gts: Iterable[np.ndarray],
    gt_classes: Iterable[ClassSpec],
    class_ids: Sequence[int] = PANNUKE_CLASS_IDS,
    *,
    tissue: Sequence | None = None,
    match_iou: float = 0.5,
    eps: float = 0.0,
    return_details: bool = False,
) -> float | tuple[float, dict]:
    """Multi-class PQ as the PanNuke paper (Gamper et al. 2020, PanNuke-metrics ``run.py``).

    1. Per image i and class c: PQ_ic (:func:`panoptic_quality_per_class`) -- **NaN (skipped)
       when the ground truth of image i has no object of class c**, even if the prediction has
       some (PanNuke's rule; those false positives are never penalised).
    2. Per image: mPQ_i = mean over the non-NaN classes (NaN if none: the image is skipped).
    3. Without ``tissue``: mPQ = mean over the non-NaN images. With ``tissue``: mean per tissue
       type over its images, then mean over tissue types -- PanNuke's reported "mPQ".

    This is an average of per-image PQs, not the PQ of the dataset: images with few nuclei weigh
    as much as crowded ones and a class's PQ is only scored where it occurs. For the pooled,
    properly-defined multi-class PQ use :func:`mpq_plus` (CoNIC's mPQ+); numbers of the two are
    not comparable.

    Parameters
    ----------
    segs, gts : iterable of np.ndarray
        Predicted / ground-truth instance label images (one per image; a stacked (N, H, W) array
        works).
    seg_classes, gt_classes : iterable
        Per image, the object classes as in :func:`instance_classes`.
    class_ids : sequence of int
        Default PanNuke's 1..5.
    tissue : sequence, optional
        Tissue type of each image.
    match_iou, eps : float
        As in :func:`panoptic_quality` (``eps=1e-6`` = the PanNuke code's SQ).
    return_details : bool
        Also return ``{"per_image_class": (N, C) array, "per_image": (N,), "per_class": {c: PQ
        averaged over the images where c is in the ground truth} (PanNuke's per-class PQ),
        "per_tissue": {tissue: mPQ}}``.

    Returns
    -------
    float, or (float, dict)
        NaN if no image has any ground-truth object of the classes.
    """
    rows = []
    for s, sc, g, gc in zip(segs, seg_classes, gts, gt_classes, strict=True):
        counts = _per_class_counts(s, sc, g, gc, class_ids, match_iou)
        row = []
        for tp, fp, fn, iou_sum in counts:
            row.append(math.nan if tp + fn == 0 else _pq_from_counts(int(tp), int(fp), int(fn), iou_sum, eps)["pq"])
        rows.append(row)
    per = np.array(rows, np.float64).reshape(-1, len(class_ids))
    per_image = np.array([_nanmean(r) for r in per])
    value, per_tissue = _by_tissue(per_image, tissue)
    if not return_details:
        return value
    per_class = {int(c): _nanmean(per[:, k]) for k, c in enumerate(class_ids)}
    return value, {"per_image_class": per, "per_image": per_image, "per_class": per_class, "per_tissue": per_tissue}


def bpq(
    segs: Iterable[np.ndarray],
    gts: Iterable[np.ndarray],
    *,
    tissue: Sequence | None = None,
    match_iou: float = 0.5,
    eps: float = 0.0,
    return_details: bool = False,
) -> float | tuple[float, dict]:
    """Binary PQ as the PanNuke paper: PQ of each image with all nuclei one class, averaged.

    Images whose ground truth has no nucleus are skipped (PanNuke's rule, even if the prediction
    has objects). Without ``tissue``: mean over images; with ``tissue``: mean per tissue type,
    then over tissue types (PanNuke's reported "bPQ").

    Parameters
    ----------
    segs, gts : iterable of np.ndarray
        Predicted / ground-truth instance label images.
    tissue : sequence, optional
        Tissue type of each image.
    match_iou, eps : float
        As in :func:`panoptic_quality`.
    return_details : bool
        Also return ``{"per_image": (N,), "per_tissue": {tissue: bPQ}}``.

    Returns
    -------
    float, or (float, dict)
    """
    per_image = []
    for s, g in zip(segs, gts, strict=True):
        r = panoptic_quality(s, g, match_iou=match_iou, eps=eps)
        per_image.append(math.nan if r["tp"] + r["fn"] == 0 else r["pq"])
    per_image = np.array(per_image, np.float64)
    value, per_tissue = _by_tissue(per_image, tissue)
    return (value, {"per_image": per_image, "per_tissue": per_tissue}) if return_details else value


def mpq_plus(
    segs: Iterable[np.ndarray],
    seg_classes: Iterable[ClassSpec],
    gts: Iterable[np.ndarray],
    gt_classes: Iterable[ClassSpec],
    class_ids: Sequence[int] = PANNUKE_CLASS_IDS,
    *,
    match_iou: float = 0.5,
    eps: float = 0.0,
    return_details: bool = False,
) -> float | tuple[float, dict]:
    """Dataset-level multi-class PQ (CoNIC's mPQ+): statistics pooled over all images per class.

    Per class c, TP_c, FP_c, FN_c and the IoU sum of the matches are summed over all images
    (matching within each image as in :func:`panoptic_quality_per_class`), PQ_c is computed
    from the sums, and mPQ+ is the mean of PQ_c over classes. Every false positive counts,
    including those of classes absent from an image's ground truth. A class with no object in
    any ground truth or prediction has PQ_c = NaN and is left out of the mean.

    Parameters
    ----------
    segs, seg_classes, gts, gt_classes, class_ids, match_iou, eps
        As in :func:`mpq`.
    return_details : bool
        Also return ``{"per_class": {c: {"pq", "sq", "dq", "tp", "fp", "fn", "iou_sum"}}}``.

    Returns
    -------
    float, or (float, dict)
    """
    total = np.zeros((len(class_ids), 4), np.float64)
    for s, sc, g, gc in zip(segs, seg_classes, gts, gt_classes, strict=True):
        total += _per_class_counts(s, sc, g, gc, class_ids, match_iou)
    per_class = {int(c): _pq_from_counts(int(r[0]), int(r[1]), int(r[2]), r[3], eps) for c, r in zip(class_ids, total)}
    value = _nanmean([v["pq"] for v in per_class.values()])
    return (value, {"per_class": per_class}) if return_details else value


# --------------------------------------------------------------------------------------------
# AJI
# --------------------------------------------------------------------------------------------


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
