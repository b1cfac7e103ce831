"""Automatic mask generation (AMG): SAM prompted with a regular point grid, masks filtered and merged.

This reproduces micro-sam's ``AutomaticMaskGenerator`` / ``TiledAutomaticMaskGenerator`` (which
follow segment-anything's ``SamAutomaticMaskGenerator``) on precomputed :class:`ImageEmbeddings`:

1. **Crops.** Untiled: one crop, the whole image. Tiled: every tile's *outer* block (inner + halo)
   is one crop with its own embedding.
2. **Point grid.** ``points_per_side`` x ``points_per_side`` points at the cell centres
   ``(k + 0.5) / n`` of the crop (segment-anything's ``build_point_grid``: ``np.linspace(1/2n,
   1 - 1/2n, n)``, x varying fastest), scaled by the crop's (width, height).
3. **Prediction.** Points run in batches of ``points_per_batch`` through the prompt encoder and the
   mask decoder with multimask output (3 masks per point, point-major order); the low-resolution
   logits are upsampled to the crop's size exactly like ``Sam.postprocess_masks``.
4. **Per-mask scores.** Predicted IoU from the IoU head; stability score = IoU of
   ``logits > threshold + offset`` and ``logits > threshold - offset`` (threshold 0, offset 1);
   binary mask = ``logits > 0``; box = SAM's ``batched_mask_to_box`` (x1/y1 are the *inclusive*
   maximum pixel index; an empty mask gets (0, 0, 0, 0) in crop coordinates).
5. **Per-crop filters** (reference order): predicted IoU ``> pred_iou_thresh`` (only when the
   threshold is > 0), stability ``>= stability_score_thresh`` (only when > 0), boxes within 20 px
   of a crop edge that is not an image edge dropped, then box NMS at ``box_nms_thresh`` scored by
   the predicted IoU.
6. **Across crops** (more than one crop only): box NMS at ``crop_nms_thresh`` scored by
   ``1 / crop area`` (prefer smaller crops; equal crops keep the earlier one).
7. **Optional** ``min_mask_region_area``: holes and islands smaller than the area removed from every
   mask (8-connected), then box NMS at ``max(box_nms_thresh, crop_nms_thresh)`` preferring masks
   that did not change.
8. **Merge** (:func:`masks_to_labels`, micro-sam's ``mask_data_to_segmentation`` as micro-sam's
   AMG ``generate(output_mode="instance_segmentation", with_background=True)`` calls it, i.e.
   ``merge_exclusively=False, label_masks=True``): masks sorted by area (descending, stable),
   painted so smaller masks overwrite larger ones, 4-connected components, components below
   ``min_object_size`` removed, the largest segment (normally the background, 0) set to 0, ids
   relabelled 1..N. (Older micro-sam versions had no connected-components step:
   ``label_components=False``.)

All float comparisons are done in float32 like the reference (thresholds are cast to float32).

Memory: full-image masks are never kept. Each surviving mask is a :class:`MaskRecord` holding its
box and a bit-packed copy of the mask inside that box, in global image coordinates. Upsampling
and thresholding run on small chunks of masks (about 128 MB of float logits at a time), and the
IoU / stability / crop-edge filters are applied right there, while generating.

Two-stage use (grid search): :func:`generate_mask_candidates` runs the model once and keeps the
masks passing *pre-filter* thresholds; :func:`filter_masks` then applies any thresholds at least
as strict, cheaply, and gives exactly what generating with those thresholds directly gives.

Deliberate differences from the reference (none changes the result for the same model outputs):

* No run-length encoding; masks are stored as bit-packed box crops.
* The IoU/stability/crop-edge filters run during generation (the reference stores every mask and
  filters in ``generate``); they are per-mask tests, so the outcome is identical.
* Our NMS is our own (numpy, float32 arithmetic as torchvision's CPU kernel); the kept set is the
  same and it always returns the kept indices by descending score with ties in input order
  (torchvision's CPU kernel sorts stably; its large-input path re-sorts with ``torch.sort``,
  whose tie order is not specified).
* Connected components (and the hole/island step) use scikit-image; the reference uses
  ``elf.parallel.label`` (blocks of 512 x 512) and OpenCV. The partition is the same; for images
  larger than 512 x 512 the reference's ids may be numbered in another order. OpenCV may number
  components in another order, which matters only when every island of a mask is below
  ``min_mask_region_area`` and two of them tie for the largest.
* The recorded grid point is float64 (the reference keeps it as float32); it is informational.
* Crop-level hole filling runs on the box crop with the outside of the box accounted for exactly
  (a full-image mask is built only in the rare case where a region reaching the box edge is small).

Modules: this one is the entry point (:func:`amg_from_embeddings`, and every name below re-exported);
the steps live in ``amg_grid`` (point grid, crops), ``amg_candidates`` (SAM on the grid, stability
scores, pre-filters: steps 2-5), ``amg_records`` (:class:`MaskRecord`, :class:`MaskCandidates`),
``amg_boxes`` (mask boxes, crop-edge test, box NMS), ``amg_filter`` (the cheap stage,
:func:`filter_masks`: steps 5-7), ``amg_small_regions`` (step 7) and ``amg_labels`` (step 8).

Coordinates: points are (x, y), boxes (x0, y0, x1, y1), in pixels of the full image, arrays are
indexed [row, col].
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .amg_boxes import box_nms, is_box_near_crop_edge, mask_to_box
from .amg_candidates import generate_mask_candidates, stability_score
from .amg_filter import filter_masks
from .amg_grid import point_grid
from .amg_labels import masks_to_labels
from .amg_records import MaskCandidates, MaskRecord
from .amg_small_regions import _record_small_regions, postprocess_small_regions, remove_small_regions
from .params import AMG_DEFAULTS

if TYPE_CHECKING:  # pragma: no cover
    from ..embeddings import ImageEmbeddings
    from ..predictor import PathoSAM

__all__ = [
    "MaskCandidates",
    "MaskRecord",
    "amg_from_embeddings",
    "box_nms",
    "filter_masks",
    "generate_mask_candidates",
    "is_box_near_crop_edge",
    "mask_to_box",
    "masks_to_labels",
    "point_grid",
    "postprocess_small_regions",
    "remove_small_regions",
    "stability_score",
    "_record_small_regions",  # private, importable from here for the tests
]


def amg_from_embeddings(
    model: "PathoSAM",
    emb: "ImageEmbeddings",
    points_per_side: int = AMG_DEFAULTS.points_per_side,
    points_per_batch: int = AMG_DEFAULTS.points_per_batch,
    pred_iou_thresh: float = AMG_DEFAULTS.pred_iou_thresh,
    stability_score_thresh: float = AMG_DEFAULTS.stability_score_thresh,
    box_nms_thresh: float = AMG_DEFAULTS.box_nms_thresh,
    crop_nms_thresh: float = AMG_DEFAULTS.crop_nms_thresh,
    min_mask_region_area: int = AMG_DEFAULTS.min_mask_region_area,
    stability_score_offset: float = AMG_DEFAULTS.stability_score_offset,
    min_object_size: int = AMG_DEFAULTS.min_object_size,
    progress: bool = True,
) -> np.ndarray:
    """Automatic mask generation on precomputed embeddings -> instance labels.

    micro-sam's ``AutomaticMaskGenerator`` (untiled ``emb``) or ``TiledAutomaticMaskGenerator``
    (tiled ``emb``: one point grid per tile outer block) followed by ``generate`` with
    ``output_mode="instance_segmentation", with_background=True``; see the module docstring for
    each step and the few deliberate differences.

    Defaults of the parameters: :class:`~pathosam.instances.params.AMGParams` (the reference's).

    Parameters
    ----------
    model : PathoSAM
        The model.
    emb : ImageEmbeddings
        Embeddings of the image (untiled or tiled).
    points_per_side : int
        Grid points per side of each crop.
    points_per_batch : int
        Points per mask-decoder batch.
    pred_iou_thresh : float
        Keep predicted IoU ``>`` this (0 disables).
    stability_score_thresh : float
        Keep stability ``>=`` this (0 disables).
    box_nms_thresh : float
        Box NMS IoU threshold within a crop.
    crop_nms_thresh : float
        Box NMS IoU threshold across crops / tiles.
    min_mask_region_area : int
        Remove holes and islands smaller than this from each mask (0 = off).
    stability_score_offset : float
        Logit offset of the stability score.
    min_object_size : int
        Drop masks and final segments smaller than this (pixels).
    progress : bool
        Show a progress bar.

    Returns
    -------
    numpy.ndarray
        uint32 (H, W) labels, 0 = background, ids 1..N.
    """
    candidates = generate_mask_candidates(
        model, emb, points_per_side, points_per_batch, pred_iou_thresh, stability_score_thresh,
        stability_score_offset, progress,
    )
    records = filter_masks(candidates, pred_iou_thresh, stability_score_thresh, box_nms_thresh, crop_nms_thresh,
                           min_mask_region_area)
    return masks_to_labels(records, candidates.image_shape, with_background=True, min_object_size=min_object_size)
