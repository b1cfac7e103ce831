"""Small holes and islands of AMG masks (step 7 of :mod:`pathosam.instances.amg`): removal on a
full-image mask (segment-anything's ``remove_small_regions``) and the exact equivalent on a
record's box crop, then NMS preferring unchanged masks."""

from __future__ import annotations

import numpy as np

from .amg_boxes import box_nms, mask_to_box
from .amg_records import MaskRecord

__all__ = ["postprocess_small_regions", "remove_small_regions"]


def _label8(x: np.ndarray) -> tuple[np.ndarray, int]:
    from skimage.measure import label

    lab, n = label(x, connectivity=2, background=0, return_num=True)
    return lab, int(n)


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """Remove small holes or islands from a full-image mask (segment-anything's ``remove_small_regions``).

    ``mode="holes"``: 8-connected components of the background smaller than ``area_thresh`` are
    filled (also a small background region at the image border). ``mode="islands"``: 8-connected
    components of the mask smaller than ``area_thresh`` are removed; if all are small, the largest
    (the first in raster order among equals) is kept.

    Parameters
    ----------
    mask : numpy.ndarray
        (H, W) bool mask.
    area_thresh : float
        Regions with fewer pixels are removed.
    mode : {"holes", "islands"}
        What to remove.

    Returns
    -------
    mask : numpy.ndarray
        (H, W) bool result.
    changed : bool
        Whether anything was removed.
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    mask = np.asarray(mask, dtype=bool)
    holes = mode == "holes"
    lab, n = _label8(~mask if holes else mask)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    small = np.nonzero(sizes < area_thresh)[0] + 1
    if small.size == 0:
        return mask, False
    if holes:
        return mask | np.isin(lab, small), True
    big = np.nonzero(sizes >= area_thresh)[0] + 1
    if big.size == 0:
        big = np.array([int(np.argmax(sizes)) + 1])
    return np.isin(lab, big), True


def _outside_parts(box_rc: tuple[int, int, int, int], shape: tuple[int, int]):
    """Connected parts of (image minus box): list of (area, pad sides) for the sides of the box
    that are not image edges. ``box_rc`` = (r0, c0, r1, c1) end exclusive."""
    r0, c0, r1, c1 = box_rc
    H, W = shape
    top, bottom, left, right = r0 > 0, r1 < H, c0 > 0, c1 < W
    vertical = [s for s, on in (("top", top), ("bottom", bottom)) if on]
    horizontal = [s for s, on in (("left", left), ("right", right)) if on]
    if vertical and horizontal:
        return [(H * W - (r1 - r0) * (c1 - c0), vertical + horizontal)]
    areas = {"top": r0 * W, "bottom": (H - r1) * W, "left": c0 * H, "right": (W - c1) * H}
    return [(areas[s], [s]) for s in vertical + horizontal]


def _record_small_regions(rec: MaskRecord, area_thresh: float, shape: tuple[int, int]):
    """Holes then islands of one record, computed on its box crop; returns (crop, box, changed)."""
    crop = rec.mask
    x0, y0 = int(rec.box[0]), int(rec.box[1])
    h, w = crop.shape
    H, W = shape
    parts = _outside_parts((y0, x0, y0 + h, x0 + w), shape)
    pads = {s for _, sides in parts for s in sides}
    pt, pb, pl, pr = ("top" in pads), ("bottom" in pads), ("left" in pads), ("right" in pads)
    work = np.pad(~crop, ((int(pt), int(pb)), (int(pl), int(pr))), constant_values=True)
    lab, n = _label8(work)
    inner = lab[int(pt) : int(pt) + h, int(pl) : int(pl) + w]
    sizes = np.bincount(inner.ravel(), minlength=n + 1).astype(np.int64)
    strip = {
        "top": lambda: lab[0, :], "bottom": lambda: lab[-1, :],
        "left": lambda: lab[:, 0], "right": lambda: lab[:, -1],
    }
    touching = set()
    for area, sides in parts:
        labels = {int(v) for s in sides for v in np.unique(strip[s]()) if v > 0}
        for v in labels:
            sizes[v] += area
        touching |= labels
    small = np.nonzero(sizes[1:] < area_thresh)[0] + 1
    if any(int(v) in touching for v in small):
        # A region reaching outside the box is small: the outside pixels would change too.
        full, changed_h = remove_small_regions(rec.full_mask(shape), area_thresh, "holes")
        full, changed_i = remove_small_regions(full, area_thresh, "islands")
        box = mask_to_box(full)
        return full[box[1] : box[3] + 1, box[0] : box[2] + 1], box, changed_h or changed_i
    changed = small.size > 0
    if changed:
        crop = crop | np.isin(inner, small)
    crop, changed_i = remove_small_regions(crop, area_thresh, "islands")
    if not (changed or changed_i):
        return crop, rec.box.copy(), False
    local = mask_to_box(crop)
    if not crop.any():  # cannot happen for a non-empty mask; keep SAM's empty-box convention
        return crop[:1, :1], np.zeros(4, dtype=np.int64), True
    new = crop[local[1] : local[3] + 1, local[0] : local[2] + 1]
    return new, local + np.array([x0, y0, x0, y0]), True


def postprocess_small_regions(records: list[MaskRecord], min_area: float, nms_thresh: float,
                              shape: tuple[int, int]) -> list[MaskRecord]:
    """Step 7 of :mod:`pathosam.instances.amg`: remove holes and islands smaller than ``min_area`` pixels
    from every mask of ``records`` (in an image of ``shape`` (H, W)), then box NMS at
    ``nms_thresh`` preferring unchanged masks; returns the kept records."""
    if not records:
        return records
    new_masks, new_boxes, nms_boxes, scores = [], [], [], []
    for rec in records:
        crop, box, changed = _record_small_regions(rec, min_area, shape)
        new_masks.append(crop)
        new_boxes.append(box)
        # the reference recomputes every box from the (full-image) mask: empty -> zeros
        nms_boxes.append(box if crop.any() else np.zeros(4, dtype=np.int64))
        scores.append(0.0 if changed else 1.0)
    keep = box_nms(np.stack(nms_boxes), np.asarray(scores, dtype=np.float32), nms_thresh)
    out = []
    for i in keep:
        rec = records[i]
        if scores[i] == 0.0:
            rec = MaskRecord.from_crop(new_masks[i], new_boxes[i], rec.predicted_iou, rec.stability_score,
                                       rec.crop_box, rec.point)
        out.append(rec)
    return out
