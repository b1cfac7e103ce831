"""What AMG (:mod:`pathosam.instances.amg`) keeps of a mask: :class:`MaskRecord` (its box and a
bit-packed copy of the mask inside the box, global image coordinates) and :class:`MaskCandidates`
(the records of every crop after the pre-filters)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .amg_boxes import mask_to_box
from .params import AMG_DEFAULTS

__all__ = ["MaskCandidates", "MaskRecord"]


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
