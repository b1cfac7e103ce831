"""The overlap core of every object metric: one sparse (prediction, ground truth) overlap table
(:func:`contingency_table`), and the shared constants (IoU thresholds, PanNuke class ids)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

#: The reference's IoU thresholds ``np.arange(0.5, 1.0, 0.05)`` (0.5 ... 0.95, 10 values, with the
#: float rounding of ``arange``: e.g. index 5 is 0.7500000000000002).
DEFAULT_THRESHOLDS: np.ndarray = np.arange(0.5, 1.0, 0.05)
DEFAULT_THRESHOLDS.flags.writeable = False
#: Index of SA50 / SA75 in the per-threshold accuracies of :func:`mean_segmentation_accuracy`.
SA50_INDEX = 0
SA75_INDEX = 5
#: PanNuke nucleus classes (1 neoplastic, 2 inflammatory, 3 connective, 4 dead, 5 epithelial).
PANNUKE_CLASS_IDS: tuple[int, ...] = (1, 2, 3, 4, 5)

Criterion = Literal["iou", "iot", "iop"]

# Largest label value (and largest pair-key space) handled with a dense bincount / lookup table,
# unless the image itself is larger: bounds that path's memory to ~8 bytes per pixel.
_DENSE_MIN = 1 << 20



def _as_labels(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype == bool:
        return a.view(np.uint8)
    if a.dtype.kind in "ui":
        return a
    if a.dtype.kind == "f":
        if a.size and (not np.all(np.isfinite(a)) or np.any(a != np.round(a))):
            raise ValueError(f"{name}: a float label image must hold whole numbers only")
        return a.astype(np.int64)
    raise TypeError(f"{name}: expected an integer label image, got dtype {a.dtype}")


def _runs(flat: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start positions and lengths of the runs where ``flat`` (and every array in ``others``)
    stays constant."""
    n = flat.size
    change = flat[1:] != flat[:-1]
    for o in others:
        change |= o[1:] != o[:-1]
    starts = np.concatenate(([0], np.flatnonzero(change) + 1))
    lengths = np.diff(np.append(starts, n))
    return starts, lengths


def _reduce_by_key(keys: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique ``keys`` and the summed integer ``weights`` of each."""
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    first = np.concatenate(([0], np.flatnonzero(sk[1:] != sk[:-1]) + 1)) if sk.size else np.zeros(0, np.intp)
    return sk[first], np.add.reduceat(weights[order], first) if sk.size else np.zeros(0, np.int64)


class _Factor:
    """The non-zero ids of one flattened label image, their areas, and value -> index lookup."""

    __slots__ = ("ids", "areas", "_lut")

    def __init__(self, flat: np.ndarray):
        self._lut = None
        if flat.size == 0:
            self.ids = np.zeros(0, flat.dtype)
            self.areas = np.zeros(0, np.int64)
            return
        vmax = int(flat.max())
        dense = vmax < max(_DENSE_MIN, flat.size) and (flat.dtype.kind == "u" or int(flat.min()) >= 0)
        if dense:
            counts = np.bincount(flat.astype(np.intp, copy=False), minlength=1)
            counts[0] = 0
            ids = np.flatnonzero(counts)
            self.areas = counts[ids].astype(np.int64)
            self.ids = ids.astype(flat.dtype)
            lut = np.zeros(vmax + 1, np.intp)
            lut[ids] = np.arange(ids.size)
            self._lut = lut
        else:  # huge or negative ids: collapse runs, then sort the (few) run values
            starts, lengths = _runs(flat)
            vals, areas = _reduce_by_key(flat[starts], lengths)
            keep = vals != 0
            self.ids, self.areas = vals[keep], areas[keep].astype(np.int64)

    def index(self, values: np.ndarray) -> np.ndarray:
        """Positions in :attr:`ids` of ``values`` (all of which must be non-zero ids)."""
        if self._lut is not None:
            return self._lut[values.astype(np.intp, copy=False)]
        return np.searchsorted(self.ids, values)


@dataclass(frozen=True, eq=False)
class Contingency:
    """Sparse overlap table of a prediction and a ground-truth label image.

    Attributes
    ----------
    seg_ids, gt_ids : np.ndarray
        Sorted non-zero ids of each image (dtype of the input).
    seg_areas, gt_areas : np.ndarray
        int64 pixel count of each object, aligned with the ids.
    seg_index, gt_index : np.ndarray
        intp, one entry per overlapping (prediction, ground-truth) pair: positions in the id
        arrays. Pairs are sorted by ``(seg_index, gt_index)``; pairs without overlap are absent.
    intersection : np.ndarray
        int64 (> 0) number of pixels shared by each pair.
    """

    seg_ids: np.ndarray
    seg_areas: np.ndarray
    gt_ids: np.ndarray
    gt_areas: np.ndarray
    seg_index: np.ndarray
    gt_index: np.ndarray
    intersection: np.ndarray

    @property
    def n_seg(self) -> int:
        """Number of predicted objects."""
        return int(self.seg_ids.size)

    @property
    def n_gt(self) -> int:
        """Number of ground-truth objects."""
        return int(self.gt_ids.size)

    def union(self) -> np.ndarray:
        """int64 union area of each overlapping pair."""
        return self.seg_areas[self.seg_index] + self.gt_areas[self.gt_index] - self.intersection

    def scores(self, criterion: Criterion = "iou") -> np.ndarray:
        """float64 overlap score of each pair.

        Parameters
        ----------
        criterion : {"iou", "iot", "iop"}
            Intersection over union, over the ground-truth object's area ("true"), or over the
            predicted object's area. Non-overlapping pairs (absent) score 0 for all three.
        """
        if criterion == "iou":
            return self.intersection / self.union()
        if criterion == "iot":
            return self.intersection / self.gt_areas[self.gt_index]
        if criterion == "iop":
            return self.intersection / self.seg_areas[self.seg_index]
        raise ValueError(f"criterion must be 'iou', 'iot' or 'iop', got {criterion!r}")


def contingency_table(seg: np.ndarray, gt: np.ndarray) -> Contingency:
    """Object areas and the intersections of all overlapping object pairs of two label images.

    Parameters
    ----------
    seg, gt : np.ndarray
        Label images of equal shape (prediction, ground truth); 0 = background.

    Returns
    -------
    Contingency
        The sparse table. Cost: a few passes over the pixels plus a sort of the runs of
        jointly-foreground pixels; independent of the number of object pairs.
    """
    seg_a, gt_a = _as_labels(seg, "seg"), _as_labels(gt, "gt")
    if seg_a.shape != gt_a.shape:
        raise ValueError(f"seg and gt differ in shape: {seg_a.shape} vs {gt_a.shape}")
    s, g = seg_a.ravel(), gt_a.ravel()
    fs, fg = _Factor(s), _Factor(g)
    both = (s != 0) & (g != 0)
    sm, gm = s[both], g[both]
    if sm.size:
        starts, lengths = _runs(sm, gm)
        si = fs.index(sm[starts]).astype(np.int64)
        gi = fg.index(gm[starts]).astype(np.int64)
        n_gt = fg.ids.size
        keys = si * n_gt + gi
        n_keys = fs.ids.size * n_gt
        if n_keys <= max(_DENSE_MIN, 2 * keys.size):
            counts = np.bincount(keys, weights=lengths, minlength=n_keys)
            keys = np.flatnonzero(counts)
            inter = counts[keys].astype(np.int64)
        else:
            keys, inter = _reduce_by_key(keys, lengths.astype(np.int64))
        seg_index = (keys // n_gt).astype(np.intp)
        gt_index = (keys - seg_index * n_gt).astype(np.intp)
    else:
        seg_index = gt_index = np.zeros(0, np.intp)
        inter = np.zeros(0, np.int64)
    return Contingency(fs.ids, fs.areas, fg.ids, fg.areas, seg_index, gt_index, inter.astype(np.int64))


