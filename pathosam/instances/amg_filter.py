"""The cheap stage of AMG (:mod:`pathosam.instances.amg`): score filters, per-crop and cross-crop
box NMS and the optional small-region step on :class:`~.amg_records.MaskCandidates`."""

from __future__ import annotations

import numpy as np

from .amg_boxes import box_nms
from .amg_records import MaskCandidates, MaskRecord
from .amg_small_regions import postprocess_small_regions
from .params import AMG_DEFAULTS

__all__ = ["filter_masks"]


def _passes(iou: np.ndarray, stab: np.ndarray, pred_iou_thresh: float, stability_score_thresh: float) -> np.ndarray:
    """The reference's two score filters, float32 comparisons, each only when its threshold > 0."""
    keep = np.ones(len(iou), dtype=bool)
    if pred_iou_thresh > 0.0:
        keep &= np.asarray(iou, dtype=np.float32) > np.float32(pred_iou_thresh)
    if stability_score_thresh > 0.0:
        with np.errstate(invalid="ignore"):
            keep &= np.asarray(stab, dtype=np.float32) >= np.float32(stability_score_thresh)
    return keep


def _check_stricter(name: str, value: float, prefilter: float) -> None:
    if prefilter > 0.0 and not (value > 0.0 and np.float32(value) >= np.float32(prefilter)):
        raise ValueError(
            f"{name}={value} is looser than the candidates' pre-filter ({prefilter}); "
            f"generate the candidates with {name} <= {value}"
        )


def filter_masks(
    candidates: MaskCandidates,
    pred_iou_thresh: float = AMG_DEFAULTS.pred_iou_thresh,
    stability_score_thresh: float = AMG_DEFAULTS.stability_score_thresh,
    box_nms_thresh: float = AMG_DEFAULTS.box_nms_thresh,
    crop_nms_thresh: float = AMG_DEFAULTS.crop_nms_thresh,
    min_mask_region_area: int = AMG_DEFAULTS.min_mask_region_area,
) -> list[MaskRecord]:
    """Filter candidate masks as the reference's ``generate`` does (the cheap stage).

    Per crop: predicted IoU ``> pred_iou_thresh`` and stability ``>= stability_score_thresh``
    (each only when > 0; both must be at least the candidates' pre-filter), box NMS at
    ``box_nms_thresh`` scored by predicted IoU. With several crops: box NMS at ``crop_nms_thresh``
    scored by 1 / crop area. With ``min_mask_region_area > 0``: small holes and islands removed
    and NMS at ``max(box_nms_thresh, crop_nms_thresh)`` preferring unchanged masks.

    Parameters
    ----------
    candidates : MaskCandidates
        From :func:`generate_mask_candidates`.
    pred_iou_thresh, stability_score_thresh, box_nms_thresh, crop_nms_thresh : float
        Thresholds (defaults: :class:`~pathosam.instances.params.AMGParams`).
    min_mask_region_area : int
        Hole / island area threshold in pixels (0 = off).

    Returns
    -------
    list of MaskRecord
        The kept masks, in the reference's order (boxes (x0, y0, x1, y1) in full-image pixels).
    """
    _check_stricter("pred_iou_thresh", pred_iou_thresh, candidates.pred_iou_thresh)
    _check_stricter("stability_score_thresh", stability_score_thresh, candidates.stability_score_thresh)
    kept: list[MaskRecord] = []
    for records in candidates.crops:
        if not records:
            continue
        iou = np.array([r.predicted_iou for r in records], dtype=np.float32)
        stab = np.array([r.stability_score for r in records], dtype=np.float32)
        records = [r for r, ok in zip(records, _passes(iou, stab, pred_iou_thresh, stability_score_thresh)) if ok]
        if not records:
            continue
        boxes = np.stack([r.box for r in records])
        scores = np.array([r.predicted_iou for r in records], dtype=np.float32)
        kept.extend(records[i] for i in box_nms(boxes, scores, box_nms_thresh))
    if len(candidates.crop_boxes) > 1 and kept:
        areas = np.array([(r.crop_box[2] - r.crop_box[0]) * (r.crop_box[3] - r.crop_box[1]) for r in kept])
        scores = np.float32(1.0) / areas.astype(np.float32)
        kept = [kept[i] for i in box_nms(np.stack([r.box for r in kept]), scores, crop_nms_thresh)]
    if min_mask_region_area > 0:
        kept = postprocess_small_regions(kept, min_mask_region_area, max(box_nms_thresh, crop_nms_thresh),
                                          candidates.image_shape)
    return kept
