"""Consecutive relabelling of label images: the one helper every producer and reader of label
images uses (AIS, AMG, the dataset readers, the evaluation's ground truth)."""

from __future__ import annotations

import numpy as np


def integer_ids(labels: np.ndarray) -> np.ndarray:
    """``labels`` as a non-negative integer array (bool, whole-valued floats and uint64 allowed).

    Raises
    ------
    ValueError
        For negative, non-integer (fractional, NaN, infinite) or non-numeric values.
    """
    if labels.dtype == bool:
        return labels.astype(np.uint8)
    if labels.dtype.kind == "f":
        if not np.isfinite(labels).all() or not np.array_equal(labels, np.round(labels)):
            raise ValueError(f"labels of dtype {labels.dtype} have non-integer values")
    elif labels.dtype.kind not in "ui":
        raise ValueError(f"unsupported label dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError("labels have negative values")
    if labels.dtype.kind == "f" or labels.dtype == np.uint64:
        return labels.astype(np.int64) if not labels.size or labels.max() < 2**63 else labels
    return labels


def relabel_consecutive(labels: np.ndarray, min_size: int = 0) -> np.ndarray:
    """Renumber the non-zero ids of ``labels`` to 1..N in increasing order of the old ids,
    after removing the objects with fewer than ``min_size`` pixels.

    Parameters
    ----------
    labels : np.ndarray
        Label image of any shape: non-negative integer ids (bool and whole-valued floats are
        accepted), 0 = background.
    min_size : int
        Objects (ids) with fewer pixels are set to background first; 0 keeps all.

    Returns
    -------
    np.ndarray
        uint32 array of the same shape; the partition into the kept objects is unchanged (same
        pixels per object), 0 stays background.

    Raises
    ------
    ValueError
        For negative, non-integer or non-numeric labels.
    """
    lab = integer_ids(np.asarray(labels))
    if lab.size == 0:
        return lab.astype(np.uint32)
    top = int(lab.max())
    if top == 0:
        return np.zeros(lab.shape, np.uint32)
    if top <= 4 * lab.size + 65536:
        counts = np.bincount(lab.ravel(), minlength=top + 1)
        present = counts >= max(min_size, 1)
        present[0] = False
        lut = np.where(present, np.cumsum(present), 0).astype(np.uint32)
        if int(lut[-1]) == top:  # already 1..N
            return lab.astype(np.uint32)
        return lut[lab]
    ids, inverse, counts = np.unique(lab, return_inverse=True, return_counts=True)
    keep = (counts >= max(min_size, 1)) & (ids != 0)
    new = np.where(keep, np.cumsum(keep), 0).astype(np.uint32)
    return new[inverse.reshape(lab.shape)]
