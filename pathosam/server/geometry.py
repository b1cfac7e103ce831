"""Masks -> the GeoJSON Features SAM-API returns, with samapi's exact geometry conventions.

samapi's ``mask_to_geometry`` (``src/samapi/utils.py``), reproduced:

1. zero-pad the bool mask by 1 px and run ``skimage.measure.find_contours(mask, 0.5)``
   (marching squares);
2. keep the contour with the **most vertices** (the first one on ties); other components and
   all holes are dropped, so every mask gives one simple ``Polygon`` with one ring;
3. subtract the padding and swap (row, col) -> (x, y): x = column, y = row, in pixels of the sent
   image, **pixel centres at integer coordinates** (pixel (col c, row r) spans [c - 0.5, c + 0.5]),
   so every coordinate is ``k`` or ``k + 0.5`` and a mask touching the border reaches -0.5;
4. the ring is closed (first == last), has >= 5 positions (one pixel -> a 5-point diamond) and
   is not simplified.

The only change is speed, with identical coordinates (``tests/test_server.py`` compares with
``find_contours``): the contour is traced on the mask's bounding box plus a 1 px margin instead
of the whole image, and for large masks :func:`longest_contour_numpy` chains the
marching-squares segments with numpy instead of skimage's per-segment Python loop (~8x faster
on ragged masks).

Feature layout (key order ``type``, ``geometry``, ``properties``; no ``id``)::

    {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
     "properties": {"object_idx": i - 1, "label": "object", "quality": q, "sam_model": type}}

``object_idx`` is the position minus one (-1, 0, 1, ...), as samapi; QuPath's extension turns it
into the class name. ``quality`` is the mask's own score (samapi rotates the three multimask
scores by one; fixed here), left out when not finite (JSON has no NaN).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["feature", "longest_contour", "longest_contour_numpy", "mask_features", "mask_to_ring"]

Ring = list[list[float]]


# Marching squares on a binary image at level 0.5, as skimage's ``find_contours`` (default
# ``fully_connected="low"``): a cell's corners are bit 1 = (r, c), 2 = (r, c + 1), 4 = (r + 1, c),
# 8 = (r + 1, c + 1); its crossing points are the midpoints of its sides T(op), B(ottom), L(eft),
# R(ight). _FROM/_TO give skimage's segments per code (the second one for the two saddles), in
# the order skimage emits them; _SIDE gives each side's midpoint in doubled coordinates.
_T, _B, _L, _R = 0, 1, 2, 3
_SIDE = np.array([[0, 1], [2, 1], [1, 0], [1, 2]], dtype=np.int64)  # (2 * dy, 2 * dx)
_SEGMENTS = {1: [(_T, _L)], 2: [(_R, _T)], 3: [(_R, _L)], 4: [(_L, _B)], 5: [(_T, _B)],
             6: [(_R, _T), (_L, _B)], 7: [(_R, _B)], 8: [(_B, _R)], 9: [(_T, _L), (_B, _R)],
             10: [(_B, _T)], 11: [(_B, _L)], 12: [(_L, _R)], 13: [(_T, _R)], 14: [(_L, _T)]}
_NSEG = np.zeros(16, np.int64)
_FROM = np.zeros((16, 2), np.int64)
_TO = np.zeros((16, 2), np.int64)
for _code, _segs in _SEGMENTS.items():
    _NSEG[_code] = len(_segs)
    for _k, (_a, _b) in enumerate(_segs):
        _FROM[_code, _k], _TO[_code, _k] = _a, _b
del _code, _segs, _k, _a, _b


#: Masks (bounding box + margin) up to this many pixels go through skimage itself (faster there).
SMALL = 64 * 64


def longest_contour(padded: np.ndarray) -> np.ndarray:
    """``max(find_contours(padded, 0.5), key=len)`` (the first on ties).

    Parameters
    ----------
    padded : np.ndarray
        bool (H, W), indexed [row, col], with an all-False border.

    Returns
    -------
    np.ndarray
        float64 (k, 2) closed contour (row, col), exactly as skimage returns it.
    """
    if padded.size > SMALL:
        return longest_contour_numpy(padded)
    from skimage.measure import find_contours

    contours = find_contours(padded, 0.5)
    return contours[int(np.argmax([len(c) for c in contours]))]


def longest_contour_numpy(padded: np.ndarray) -> np.ndarray:
    """:func:`longest_contour` without skimage's per-segment Python loop (for large masks).

    Notes
    -----
    skimage emits segments cell by cell in row-major order and chains them; a closed contour
    starts at the end point of its segment emitted *last* (the segment that closes it), and
    contours are listed in the order of their first segment. Here every segment's successor is
    found by matching end and start points, cycles by connected components, and only the
    winning cycle is walked. Equality with ``find_contours`` is tested.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    m = padded.view(np.uint8)
    code = (m[:-1, :-1] | (m[:-1, 1:] << 1) | (m[1:, :-1] << 2) | (m[1:, 1:] << 3)).ravel()
    cells = np.flatnonzero(_NSEG[code])
    codes = code[cells]
    per_cell = _NSEG[codes]
    cell_of = np.repeat(np.arange(cells.size), per_cell)
    k = np.arange(cell_of.size) - np.repeat(np.cumsum(per_cell) - per_cell, per_cell)
    r, c = np.divmod(cells[cell_of], padded.shape[1] - 1)
    base = np.column_stack([2 * r, 2 * c])
    start = base + _SIDE[_FROM[codes[cell_of], k]]
    end = base + _SIDE[_TO[codes[cell_of], k]]
    width = 2 * padded.shape[1] + 1
    start_key, end_key = start[:, 0] * width + start[:, 1], end[:, 0] * width + end[:, 1]
    order = np.argsort(start_key)
    nxt = order[np.searchsorted(start_key[order], end_key)]
    n = nxt.size
    _, labels = connected_components(coo_matrix((np.ones(n, np.int8), (np.arange(n), nxt)), shape=(n, n)),
                                     directed=True, connection="weak")
    lengths = np.bincount(labels)
    _, first = np.unique(labels, return_index=True)  # contours are listed by their first segment
    longest = np.flatnonzero(lengths == lengths.max())
    best = longest[np.argmin(first[longest])]
    last = n - 1 - np.flatnonzero(labels[::-1] == best)[0]  # the closing segment
    nxt_list = nxt.tolist()
    walk = [last]
    s = nxt_list[last]
    while s != last:
        walk.append(s)
        s = nxt_list[s]
    walk.append(last)
    return end[walk].astype(np.float64) / 2.0


def mask_to_ring(mask: np.ndarray, offset: tuple[int, int] = (0, 0)) -> Ring | None:
    """samapi's outline of a bool mask: the closed ring of its longest marching-squares contour.

    Parameters
    ----------
    mask : np.ndarray
        bool (H, W), indexed [row, col].
    offset : (int, int)
        ``(row0, col0)`` of ``mask`` in the sent image (added to y and x).

    Returns
    -------
    list of [x, y] or None
        Closed ring (first == last) of float pixel coordinates, pixel centres at integers;
        None for an empty mask.
    """
    mask = np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    contour = longest_contour(np.pad(mask[r0:r1, c0:c1], 1))
    xy = np.empty_like(contour)
    xy[:, 0] = contour[:, 1] + (c0 - 1 + offset[1])
    xy[:, 1] = contour[:, 0] + (r0 - 1 + offset[0])
    return xy.tolist()


def feature(ring: Ring, object_idx: int, quality: float | None, sam_model: str) -> dict:
    """One SAM-API Feature (see the module docstring for the layout)."""
    props: dict = {"object_idx": int(object_idx), "label": "object"}
    if quality is not None and math.isfinite(float(quality)):
        props["quality"] = float(quality)
    props["sam_model"] = sam_model
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": props}


def mask_features(
    masks: Iterable[np.ndarray] | np.ndarray,
    qualities: Sequence[float] | np.ndarray,
    sam_model: str,
    offsets: Sequence[tuple[int, int]] | None = None,
) -> list[dict]:
    """Features of masks in order, ``object_idx`` = position - 1.

    Parameters
    ----------
    masks : iterable of np.ndarray
        bool (h, w) masks, indexed [row, col] (full images, or crops placed by ``offsets``).
    qualities : sequence of float
        One score per mask (SAM's predicted IoU, or the automask score).
    sam_model : str
        Echoed as ``properties.sam_model`` (the request's ``type``).
    offsets : sequence of (row0, col0), optional
        Position of each mask in the sent image.

    Returns
    -------
    list of dict
        One Feature per non-empty mask (samapi also emits an empty ``Polygon`` for an empty mask;
        it is left out here, so ``object_idx`` may skip a value).
    """
    out = []
    for i, (mask, q) in enumerate(zip(masks, qualities)):
        ring = mask_to_ring(mask, offsets[i] if offsets is not None else (0, 0))
        if ring is not None:
            out.append(feature(ring, i - 1, float(q), sam_model))
    return out
