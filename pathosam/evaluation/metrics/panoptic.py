"""Per-instance classes and panoptic quality (PQ, per class, PanNuke's mPQ / bPQ, CoNIC's mPQ+)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from .overlap import PANNUKE_CLASS_IDS, Contingency, _as_labels, _Factor, _runs, contingency_table


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


