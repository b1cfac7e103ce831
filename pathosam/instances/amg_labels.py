"""Merging AMG masks into one instance label image (micro-sam's ``mask_data_to_segmentation``,
step 8 of :mod:`pathosam.instances.amg`)."""

from __future__ import annotations

from typing import Iterable

import numpy as np

from ..relabel import relabel_consecutive
from .amg_records import MaskRecord

__all__ = ["masks_to_labels"]


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
