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

Coordinates: points are (x, y), boxes (x0, y0, x1, y1), in pixels of the full image, arrays are
indexed [row, col].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import numpy as np
import torch

from ..relabel import relabel_consecutive
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
]

#: Distance (pixels) from a crop edge under which a box counts as touching it (SAM's ``atol``).
CROP_EDGE_TOLERANCE = 20.0
#: Rough budget (bytes) for the float logits of one chunk of upsampled masks.
_CHUNK_BYTES = 128 * 2**20


# --------------------------------------------------------------------------------------------------
# records
# --------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class MaskRecord:
    """One mask found by AMG, stored as its box and the mask inside the box.

    Attributes
    ----------
    box : numpy.ndarray
        int64 (4,) box (x0, y0, x1, y1) in full-image pixels; x1 and y1 are the *inclusive* last
        column / row of the mask (SAM's ``batched_mask_to_box`` convention). An empty mask has the
        box (cx0, cy0, cx0, cy0) of its crop's corner and a 1 x 1 all-False mask.
    predicted_iou : float
        The mask decoder's IoU prediction (float32 value).
    stability_score : float
        IoU of the mask thresholded at +offset and -offset (float32 value).
    crop_box : tuple of int
        (x0, y0, x1, y1) of the crop the mask was predicted in, full-image pixels, end exclusive.
    point : tuple of float or None
        The (x, y) grid point that prompted the mask, full-image pixels.
    area : int
        Number of mask pixels.
    """

    box: np.ndarray
    predicted_iou: float
    stability_score: float
    crop_box: tuple[int, int, int, int]
    point: tuple[float, float] | None
    area: int
    _bits: np.ndarray = field(repr=False)
    _shape: tuple[int, int] = field(repr=False)

    @classmethod
    def from_crop(
        cls,
        mask: np.ndarray,
        box: Sequence[int],
        predicted_iou: float = 1.0,
        stability_score: float = 1.0,
        crop_box: Sequence[int] = (0, 0, 0, 0),
        point: tuple[float, float] | None = None,
    ) -> "MaskRecord":
        """Record from a bool ``mask`` covering exactly ``box`` (x0, y0, x1, y1 inclusive)."""
        mask = np.asarray(mask, dtype=bool)
        box = np.asarray(box, dtype=np.int64).reshape(4)
        shape = (int(box[3] - box[1] + 1), int(box[2] - box[0] + 1))
        if mask.shape != shape:
            raise ValueError(f"mask shape {mask.shape} does not match box {box.tolist()} (expected {shape})")
        return cls(box, float(predicted_iou), float(stability_score), tuple(int(c) for c in crop_box),
                   point, int(mask.sum()), np.packbits(mask, axis=None), shape)

    @classmethod
    def from_full(cls, mask: np.ndarray, **kwargs) -> "MaskRecord":
        """Record from a full-image bool mask (cropped to its box; an empty mask -> box at (0, 0))."""
        mask = np.asarray(mask, dtype=bool)
        box = mask_to_box(mask)
        return cls.from_crop(mask[box[1] : box[3] + 1, box[0] : box[2] + 1], box, **kwargs)

    @property
    def mask(self) -> np.ndarray:
        """bool (y1 - y0 + 1, x1 - x0 + 1) mask inside :attr:`box`."""
        h, w = self._shape
        return np.unpackbits(self._bits, count=h * w).reshape(h, w).astype(bool)

    @property
    def slices(self) -> tuple[slice, slice]:
        """numpy slices of :attr:`box` in the full image."""
        x0, y0, x1, y1 = (int(v) for v in self.box)
        return slice(y0, y1 + 1), slice(x0, x1 + 1)

    def full_mask(self, shape: tuple[int, int]) -> np.ndarray:
        """The mask pasted into an all-False bool image of ``shape`` (H, W)."""
        out = np.zeros(shape, dtype=bool)
        out[self.slices] = self.mask
        return out


@dataclass
class MaskCandidates:
    """Output of :func:`generate_mask_candidates`: per-crop masks that passed the pre-filters.

    Attributes
    ----------
    crops : list of list of MaskRecord
        For each crop, its masks in prediction order (point-major, 3 masks per point).
    crop_boxes : list of tuple of int
        (x0, y0, x1, y1) per crop, full-image pixels, end exclusive.
    image_shape : tuple of int
        (H, W) of the full image.
    pred_iou_thresh, stability_score_thresh : float
        Pre-filter thresholds already applied (0 = none); :func:`filter_masks` accepts only
        thresholds at least as strict.
    stability_score_offset : float
        Offset the stability scores were computed with.
    """

    crops: list[list[MaskRecord]]
    crop_boxes: list[tuple[int, int, int, int]]
    image_shape: tuple[int, int]
    pred_iou_thresh: float
    stability_score_thresh: float
    stability_score_offset: float = AMG_DEFAULTS.stability_score_offset

    def __len__(self) -> int:
        return sum(len(c) for c in self.crops)


# --------------------------------------------------------------------------------------------------
# elementary steps
# --------------------------------------------------------------------------------------------------


def point_grid(points_per_side: int) -> np.ndarray:
    """Regular grid of ``n * n`` points at cell centres in [0, 1] x [0, 1].

    Parameters
    ----------
    points_per_side : int
        Points per side, ``n >= 1``.

    Returns
    -------
    numpy.ndarray
        float64 (n * n, 2) points (x, y) = ((i + 0.5) / n, (j + 0.5) / n), x varying fastest;
        computed with ``np.linspace`` exactly as segment-anything's ``build_point_grid``.
    """
    n = int(points_per_side)
    if n < 1:
        raise ValueError(f"points_per_side must be >= 1, got {points_per_side}")
    offset = 1 / (2 * n)
    side = np.linspace(offset, 1 - offset, n)
    xs = np.tile(side[None, :], (n, 1))
    ys = np.tile(side[:, None], (1, n))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def stability_score(logits, threshold: float = 0.0, offset: float = AMG_DEFAULTS.stability_score_offset):
    """Stability score of mask logits: IoU of ``logits > threshold + offset`` and ``> threshold - offset``.

    Parameters
    ----------
    logits : torch.Tensor or numpy.ndarray
        (..., H, W) mask logits.
    threshold : float
        Mask threshold (SAM: 0).
    offset : float
        Threshold offset (reference default 1.0).

    Returns
    -------
    torch.Tensor or numpy.ndarray
        float32 (...) scores, the same kind as the input. The high mask lies inside the low one, so
        this is ``count(high) / count(low)`` (NaN when both are empty, as in the reference).
    """
    is_numpy = not torch.is_tensor(logits)
    x = torch.as_tensor(np.asarray(logits)) if is_numpy else logits
    inter = (x > (threshold + offset)).sum(dim=(-2, -1), dtype=torch.int32)
    union = (x > (threshold - offset)).sum(dim=(-2, -1), dtype=torch.int32)
    score = inter.to(torch.float32) / union.to(torch.float32)
    return score.numpy() if is_numpy else score


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


# --------------------------------------------------------------------------------------------------
# small holes and islands
# --------------------------------------------------------------------------------------------------


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
    """Step 7 of the module docstring: remove holes and islands smaller than ``min_area`` pixels
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


# --------------------------------------------------------------------------------------------------
# generation
# --------------------------------------------------------------------------------------------------


def _crop_boxes(emb: "ImageEmbeddings") -> list[tuple[int, int, int, int]]:
    H, W = emb.image_shape
    if emb.tiles is None:
        return [(0, 0, int(W), int(H))]
    out = []
    for t in emb.tiles:
        (r0, c0), (r1, c1) = t.outer
        out.append((int(c0), int(r0), int(c1), int(r1)))
    return out


def _passes(iou: np.ndarray, stab: np.ndarray, pred_iou_thresh: float, stability_score_thresh: float) -> np.ndarray:
    """The reference's two score filters, float32 comparisons, each only when its threshold > 0."""
    keep = np.ones(len(iou), dtype=bool)
    if pred_iou_thresh > 0.0:
        keep &= np.asarray(iou, dtype=np.float32) > np.float32(pred_iou_thresh)
    if stability_score_thresh > 0.0:
        with np.errstate(invalid="ignore"):
            keep &= np.asarray(stab, dtype=np.float32) >= np.float32(stability_score_thresh)
    return keep


@torch.inference_mode()
def generate_mask_candidates(
    model: "PathoSAM",
    emb: "ImageEmbeddings",
    points_per_side: int = AMG_DEFAULTS.points_per_side,
    points_per_batch: int = AMG_DEFAULTS.points_per_batch,
    pred_iou_thresh: float = AMG_DEFAULTS.pred_iou_thresh,
    stability_score_thresh: float = AMG_DEFAULTS.stability_score_thresh,
    stability_score_offset: float = AMG_DEFAULTS.stability_score_offset,
    progress: bool = True,
    on_batch: Callable[[int, int], None] | None = None,
) -> MaskCandidates:
    """Run the point grid through SAM on every crop and keep the masks passing the pre-filters.

    This is the expensive stage (micro-sam's ``initialize``). Masks failing the predicted-IoU or
    stability pre-filter, or touching an interior crop edge (within 20 px), are dropped right
    away; pass lower pre-filter thresholds (down to 0 = keep all) to filter later with several
    settings via :func:`filter_masks`.

    Parameters
    ----------
    model : PathoSAM
        The model (its ``sam`` prompt encoder and mask decoder are used).
    emb : ImageEmbeddings
        Untiled (one crop = the image) or tiled (one crop per tile outer block) embeddings.
    points_per_side : int
        Grid points per side of each crop.
    points_per_batch : int
        Points per mask-decoder batch (the reference's 64 by default). The mask decoder's memory grows with
        it: on CPU about 21 MB per point (64 -> ~1.3 GB peak, 16 -> ~0.35 GB); upsampling and
        thresholding are chunked separately (~128 MB). The decoder's float results depend on the
        batch size at the 1e-6 level, so masks at a threshold's edge may differ between sizes.
    pred_iou_thresh : float
        Pre-filter: keep predicted IoU ``>`` this (0 disables it).
    stability_score_thresh : float
        Pre-filter: keep stability ``>=`` this (0 disables it).
    stability_score_offset : float
        Logit offset of the stability score.
    progress : bool
        Show a tqdm bar over point batches.
    on_batch : callable, optional
        Called after each point batch with (batches done, total batches); it may raise to stop
        (cooperative cancellation: time limits, clients gone).

    Returns
    -------
    MaskCandidates
        Per-crop records; points (x, y) and boxes (x0, y0, x1, y1 inclusive) in full-image pixels.
    """
    from tqdm.auto import tqdm

    from ..image import transform_coords
    from ..models.sam import IMG_SIZE, Sam

    if points_per_batch < 1:
        raise ValueError(f"points_per_batch must be >= 1, got {points_per_batch}")
    grid = point_grid(points_per_side)
    H, W = (int(s) for s in emb.image_shape)
    crop_boxes = _crop_boxes(emb)
    sam = model.sam
    dev = model.device
    size = getattr(sam, "img_size", IMG_SIZE)  # model input size (SAM's 1024; stand-ins may lack it)
    dense_pe = sam.prompt_encoder.get_dense_pe()
    n_batches = math.ceil(len(grid) / points_per_batch)
    bar = tqdm(total=n_batches * len(crop_boxes), desc="AMG point batches", disable=not progress)
    crops: list[list[MaskRecord]] = []
    for i, crop_box in enumerate(crop_boxes):
        cx0, cy0 = crop_box[0], crop_box[1]
        h, w = (int(s) for s in emb.original_sizes[i])
        in_size = tuple(int(s) for s in emb.input_sizes[i])
        per_mask = 4 * (size * size + in_size[0] * in_size[1] + 2 * h * w)
        chunk = max(1, _CHUNK_BYTES // per_mask)
        feats = torch.from_numpy(np.ascontiguousarray(emb.feature(i), dtype=np.float32)).to(dev)
        points = grid * np.array([[w, h]], dtype=np.float64)  # crop pixels (x, y)
        records: list[MaskRecord] = []
        for start in range(0, len(points), points_per_batch):
            pts = points[start : start + points_per_batch]
            coords = torch.as_tensor(transform_coords(pts, (h, w), size), dtype=torch.float32,
                                     device=dev)[:, None, :]
            labels = torch.ones((len(pts), 1), dtype=torch.int64, device=dev)
            sparse, dense = sam.prompt_encoder((coords, labels), None, None)
            low_res, iou = sam.mask_decoder(feats, dense_pe, sparse, dense, multimask_output=True)
            n_out = low_res.shape[1]
            low_res = low_res.reshape(-1, 1, *low_res.shape[-2:])  # point-major: p0m0, p0m1, ...
            iou_np = iou.reshape(-1).float().cpu().numpy()
            for c0 in range(0, low_res.shape[0], chunk):
                logits = Sam.postprocess_masks(low_res[c0 : c0 + chunk], in_size, (h, w), size)[:, 0]
                stab = stability_score(logits, 0.0, stability_score_offset).cpu().numpy()
                keep = _passes(iou_np[c0 : c0 + len(logits)], stab, pred_iou_thresh, stability_score_thresh)
                if not keep.any():
                    continue
                idx = np.nonzero(keep)[0]
                binary = logits[torch.as_tensor(idx, device=logits.device)] > 0.0
                del logits
                local = _masks_to_boxes_torch(binary).cpu().numpy()
                glob = local + np.array([cx0, cy0, cx0, cy0], dtype=np.int64)
                ok = ~is_box_near_crop_edge(glob, crop_box, (H, W))
                for j in np.nonzero(ok)[0]:
                    lx0, ly0, lx1, ly1 = (int(v) for v in local[j])
                    m = binary[j, ly0 : ly1 + 1, lx0 : lx1 + 1].cpu().numpy()
                    k = c0 + int(idx[j])
                    p = pts[k // n_out]
                    records.append(MaskRecord.from_crop(
                        m, glob[j], iou_np[k], stab[idx[j]], crop_box, (float(p[0] + cx0), float(p[1] + cy0))
                    ))
            bar.update(1)
            if on_batch is not None:
                on_batch(i * n_batches + start // points_per_batch + 1, n_batches * len(crop_boxes))
        crops.append(records)
    bar.close()
    return MaskCandidates(crops, crop_boxes, (H, W), float(pred_iou_thresh), float(stability_score_thresh),
                          float(stability_score_offset))


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


# --------------------------------------------------------------------------------------------------
# merging into a label image
# --------------------------------------------------------------------------------------------------


def masks_to_labels(
    masks: Iterable[MaskRecord] | Iterable[np.ndarray] | np.ndarray,
    shape: tuple[int, int] | None = None,
    with_background: bool = True,
    min_object_size: int = 0,
    max_object_size: int | None = None,
    merge_exclusively: bool = False,
    label_components: bool = True,
) -> np.ndarray:
    """Merge masks into one label image (micro-sam's ``mask_data_to_segmentation``).

    Masks are sorted by area, descending (stable: equal areas keep input order), and painted in
    that order, skipping masks with area ``< min_object_size`` or ``> max_object_size``. With
    ``merge_exclusively=False`` (what micro-sam's AMG uses) later, smaller masks overwrite larger
    ones; with ``True`` (micro-sam's function default) a mask only fills still-empty pixels, so
    larger masks win overlaps. With ``label_components`` the result is split into 4-connected
    components of equal id (a mask in two pieces becomes two objects; ids then follow raster
    order of first occurrence). Segments smaller than ``min_object_size`` are removed; with
    ``with_background`` the largest segment, background 0 included, is set to 0 (normally it
    already is the background; a mask larger than the background is removed). Finally ids are
    relabelled 1..N in increasing order.

    Parameters
    ----------
    masks : list of MaskRecord, list of numpy.ndarray, or numpy.ndarray
        :class:`MaskRecord` objects (painted through their boxes) or full-size bool masks
        ((N, H, W) array or a list of (H, W) arrays).
    shape : tuple of int, optional
        (H, W) of the output; required for records or an empty list, else taken from the masks.
    with_background : bool
        Set the largest segment to 0 (AMG: True).
    min_object_size : int
        Smallest mask / segment kept, in pixels.
    max_object_size : int, optional
        Largest mask painted, in pixels.
    merge_exclusively : bool
        Larger masks win overlaps instead of smaller ones.
    label_components : bool
        Split into 4-connected components before the size filter (micro-sam's ``label_masks``).

    Returns
    -------
    numpy.ndarray
        uint32 (H, W) labels, 0 = background, ids 1..N consecutive.
    """
    if isinstance(masks, np.ndarray):
        if masks.ndim == 2:
            raise ValueError("masks must be a list of masks or an (N, H, W) array, got one (H, W) mask")
        masks = list(masks)
    else:
        masks = list(masks)
    records = [m for m in masks if isinstance(m, MaskRecord)]
    if records and len(records) != len(masks):
        raise ValueError("masks must be all MaskRecord objects or all arrays")
    if shape is None:
        if records or not masks:
            raise ValueError("shape is required for MaskRecord input or an empty list")
        shape = np.asarray(masks[0]).shape
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2:
        raise ValueError(f"shape must be (H, W), got {shape}")
    if not records:
        arrays = [np.asarray(m, dtype=bool) for m in masks]
        for a in arrays:
            if a.shape != shape:
                raise ValueError(f"all masks must have shape {shape}, got {a.shape}")
        areas = [int(a.sum()) for a in arrays]
    else:
        areas = [r.area for r in records]
    order = sorted(range(len(masks)), key=lambda i: -areas[i])
    seg = np.zeros(shape, dtype=np.uint32)
    seg_id = 1
    for i in order:
        area = areas[i]
        if area < min_object_size or (max_object_size is not None and area > max_object_size):
            continue
        if records:
            view, m = seg[records[i].slices], records[i].mask
        else:
            view, m = seg, arrays[i]
        if merge_exclusively:
            m = m & (view == 0)
        view[m] = seg_id
        seg_id += 1
    if label_components:
        from skimage.measure import label

        seg = label(seg, background=0, connectivity=1)
    ids, sizes = np.unique(seg, return_counts=True)
    drop = ids[sizes < min_object_size]
    if with_background and ids.size:
        drop = np.concatenate([drop, ids[[int(np.argmax(sizes))]]])
    if drop.size:
        seg[np.isin(seg, drop)] = 0
    return relabel_consecutive(seg)


# --------------------------------------------------------------------------------------------------
# one call
# --------------------------------------------------------------------------------------------------


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
