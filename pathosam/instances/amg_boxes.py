"""Box geometry of AMG (:mod:`pathosam.instances.amg`): mask boxes in SAM's convention, the
crop-edge test and box non-maximum suppression.

Boxes are (x0, y0, x1, y1) in pixels; SAM's mask boxes have *inclusive* x1 / y1.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

__all__ = ["CROP_EDGE_TOLERANCE", "box_nms", "is_box_near_crop_edge", "mask_to_box"]

#: Distance (pixels) from a crop edge under which a box counts as touching it (SAM's ``atol``).
CROP_EDGE_TOLERANCE = 20.0


def _masks_to_boxes_torch(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool -> (N, 4) int64 (x0, y0, x1, y1) inclusive; empty masks -> zeros."""
    n, h, w = masks.shape
    if n == 0:
        return torch.zeros((0, 4), dtype=torch.int64, device=masks.device)
    rows = masks.any(dim=2)  # (N, H)
    cols = masks.any(dim=1)  # (N, W)
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    y1 = torch.where(rows, ar_h, -1).amax(dim=1)
    y0 = torch.where(rows, ar_h, h).amin(dim=1)
    x1 = torch.where(cols, ar_w, -1).amax(dim=1)
    x0 = torch.where(cols, ar_w, w).amin(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1)
    empty = y1 < 0
    boxes[empty] = 0
    return boxes.to(torch.int64)


def mask_to_box(mask: np.ndarray) -> np.ndarray:
    """Box of a bool mask, SAM's ``batched_mask_to_box`` convention.

    Parameters
    ----------
    mask : numpy.ndarray
        (..., H, W) bool masks.

    Returns
    -------
    numpy.ndarray
        int64 (..., 4) boxes (x0, y0, x1, y1) with x1 / y1 the *inclusive* last column / row;
        (0, 0, 0, 0) for an empty mask.
    """
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape[-2:]
    rows, cols = mask.any(axis=-1), mask.any(axis=-2)
    y0, x0 = rows.argmax(axis=-1), cols.argmax(axis=-1)
    y1, x1 = h - 1 - rows[..., ::-1].argmax(axis=-1), w - 1 - cols[..., ::-1].argmax(axis=-1)
    boxes = np.stack([x0, y0, x1, y1], axis=-1).astype(np.int64)
    boxes[~rows.any(axis=-1)] = 0
    return boxes


def is_box_near_crop_edge(
    boxes: np.ndarray,
    crop_box: Sequence[int],
    image_shape: tuple[int, int],
    atol: float = CROP_EDGE_TOLERANCE,
) -> np.ndarray:
    """Which boxes lie within ``atol`` pixels of an edge of their crop that is not an image edge.

    SAM's ``is_box_near_crop_edge``: each box coordinate is compared with the same coordinate of
    the crop box (x0 with x0, ..., x1 with the crop's exclusive x1) and of the image box
    (0, 0, W, H); a coordinate counts when ``|box - crop| <= atol`` and not ``|box - image| <= atol``.

    Parameters
    ----------
    boxes : numpy.ndarray
        (N, 4) boxes (x0, y0, x1, y1), full-image pixels, SAM convention (x1/y1 inclusive).
    crop_box : sequence of int
        (x0, y0, x1, y1) of the crop, full-image pixels, end exclusive.
    image_shape : tuple of int
        (H, W) of the full image.
    atol : float
        Tolerance in pixels (20 in the reference).

    Returns
    -------
    numpy.ndarray
        bool (N,).
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    crop = np.asarray(crop_box, dtype=np.float64).reshape(1, 4)
    image = np.array([[0, 0, image_shape[1], image_shape[0]]], dtype=np.float64)
    near_crop = np.abs(b - crop) <= atol
    near_image = np.abs(b - image) <= atol
    return np.any(near_crop & ~near_image, axis=1)


def box_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy box non-maximum suppression with torchvision's ``nms`` semantics.

    Boxes are visited by descending score (stable: equal scores keep input order); a box is kept
    unless an already kept box overlaps it with IoU ``> iou_threshold`` (equal does not
    suppress). IoU follows torchvision: area = (x1 - x0) * (y1 - y0) on the coordinates as
    given, float32 arithmetic; a zero union gives NaN, which never suppresses.

    Parameters
    ----------
    boxes : numpy.ndarray
        (N, 4) boxes (x0, y0, x1, y1).
    scores : numpy.ndarray
        (N,) scores.
    iou_threshold : float
        Suppression threshold.

    Returns
    -------
    numpy.ndarray
        int64 indices of the kept boxes, by descending score.
    """
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    s = np.asarray(scores, dtype=np.float32).reshape(-1)
    if len(b) != len(s):
        raise ValueError(f"{len(b)} boxes but {len(s)} scores")
    n = len(b)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    thr = np.float32(iou_threshold)
    order = np.argsort(-s, kind="stable")
    b = b[order]
    x0, y0, x1, y1 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    areas = (x1 - x0) * (y1 - y0)
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    with np.errstate(invalid="ignore", divide="ignore"):
        for i in range(n):
            if suppressed[i]:
                continue
            keep.append(i)
            rest = np.nonzero(~suppressed[i + 1 :])[0] + i + 1
            if rest.size == 0:
                break
            w = np.maximum(np.float32(0), np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]))
            h = np.maximum(np.float32(0), np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]))
            inter = w * h
            iou = inter / (areas[i] + areas[rest] - inter)
            suppressed[rest[iou > thr]] = True
    return order[np.asarray(keep, dtype=np.int64)].astype(np.int64)
