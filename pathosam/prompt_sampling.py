"""Prompts simulated from ground-truth masks: what training and interactive evaluation share.

Conventions: masks are indexed (row, col) = (y, x); **points are returned in SAM's (x, y)
order**, integer pixel coordinates of the mask, not scaled to the model's input frame (see
:func:`pathosam.image.transform_coords`). Every random draw comes from the
``numpy.random.Generator`` passed in, so a seed reproduces the prompts.

Used by the training prompt schedule (:mod:`pathosam.training.prompts`) and by the iterative
prompting protocol (:mod:`pathosam.evaluation.iterative_prompting`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["RING_MARGIN", "bounding_boxes", "sample_correction_points", "sample_pixels"]

#: Enlargement of the GT bounding box for the fallback negative ring of the correction sampler, pixels.
RING_MARGIN = 3


def sample_pixels(region: np.ndarray, size: int, replace: bool, rng: np.random.Generator) -> np.ndarray:
    """``size`` uniformly drawn (row, col) coordinates of the True pixels of ``region``.

    Parameters
    ----------
    region : numpy.ndarray
        bool (H, W) mask to draw from.
    size : int
        Number of pixels.
    replace : bool
        Draw with replacement.
    rng : numpy.random.Generator

    Returns
    -------
    numpy.ndarray
        int64 (size, 2) in (row, col) order.
    """
    coords = np.argwhere(region)
    idx = rng.choice(len(coords), size=size, replace=replace)
    return coords[idx]


def bounding_boxes(masks: np.ndarray) -> np.ndarray:
    """Bounding boxes of binary masks as (y0, x0, y1, x1), max exclusive (regionprops ``bbox``).

    Parameters
    ----------
    masks : numpy.ndarray
        bool (n_objects, H, W); every mask must be non-empty.

    Returns
    -------
    numpy.ndarray
        int64 (n_objects, 4) in (row, col) order.
    """
    boxes = np.zeros((len(masks), 4), dtype=np.int64)
    for k, m in enumerate(masks):
        rows = np.flatnonzero(m.any(axis=1))
        cols = np.flatnonzero(m.any(axis=0))
        if rows.size == 0:
            raise ValueError(f"mask {k} is empty")
        boxes[k] = rows[0], cols[0], rows[-1] + 1, cols[-1] + 1
    return boxes


def sample_correction_points(pred: np.ndarray, gt: np.ndarray, rng: np.random.Generator,
                             ring_margin: int = RING_MARGIN) -> tuple[np.ndarray, np.ndarray]:
    """One positive and one negative correction point per object (iterative prompting).

    Per object with P = predicted mask and G = ground truth (uniform draws over the pixels of the
    chosen region):

    - positive: from the false negatives G & ~P; if empty, from the true positives G & P;
    - negative: from the false positives P & ~G; if empty, from the ring = (G's bounding box,
      max exclusive, enlarged by ``ring_margin`` pixels on every side and clipped to the image)
      minus G; if still empty, from anywhere outside G.

    All positives are drawn first (object order), then all negatives.

    Parameters
    ----------
    pred : numpy.ndarray
        bool (N, H, W) predicted masks (reference: logits > 0 of the selected mask, at the target
        resolution).
    gt : numpy.ndarray
        bool (N, H, W) ground-truth masks; each must be non-empty and not cover the whole image.
    rng : numpy.random.Generator
    ring_margin : int
        Bounding-box enlargement for the negative fallback (reference: 3).

    Returns
    -------
    points_xy : numpy.ndarray
        int64 (N, 2, 2): per object [positive, negative], each (x, y) in pixels.
    labels : numpy.ndarray
        int64 (N, 2): ``[[1, 0], ...]``.
    """
    pred = np.asarray(pred).astype(bool, copy=False)
    gt = np.asarray(gt).astype(bool, copy=False)
    if pred.shape != gt.shape or pred.ndim != 3:
        raise ValueError(f"pred and gt must both have shape (N, H, W), got {pred.shape} and {gt.shape}")
    n, h, w = gt.shape
    pos = np.zeros((n, 2), dtype=np.int64)
    neg = np.zeros((n, 2), dtype=np.int64)
    for k in range(n):
        g, p = gt[k], pred[k]
        region = g & ~p
        if not region.any():
            region = g & p
        if not region.any():
            raise ValueError(f"object {k}: ground-truth mask is empty")
        pos[k] = sample_pixels(region, 1, False, rng)[0]
    for k in range(n):
        g, p = gt[k], pred[k]
        region = p & ~g
        if not region.any():
            y0, x0, y1, x1 = bounding_boxes(g[None])[0]
            region = np.zeros_like(g)
            region[max(y0 - ring_margin, 0):min(y1 + ring_margin, h),
                   max(x0 - ring_margin, 0):min(x1 + ring_margin, w)] = True
            region &= ~g
        if not region.any():
            region = ~g
        if not region.any():
            raise ValueError(f"object {k}: ground-truth mask covers the whole image, no negative point possible")
        neg[k] = sample_pixels(region, 1, False, rng)[0]
    points_xy = np.stack([pos[:, ::-1], neg[:, ::-1]], axis=1)
    labels = np.tile(np.array([[1, 0]], dtype=np.int64), (n, 1))
    return np.ascontiguousarray(points_xy), labels
