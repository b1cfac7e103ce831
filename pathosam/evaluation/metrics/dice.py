"""Dice scores: binary, per class (semantic), and class-weighted."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

from .overlap import PANNUKE_CLASS_IDS


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


