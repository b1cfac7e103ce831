"""Exact outlines of label objects along pixel edges (for QuPath GeoJSON and other vectors).

Coordinates are pixel corners: x = column, y = row, pixel (row r, col c) covering
[c, c + 1] x [r, r + 1], so a polygon's area equals its object's pixel count exactly.

Algorithm, per object on its bounding-box crop padded by one background pixel:

1. Corners, vectorised: every pixel corner gets a 4-bit code from the 2 x 2 pixels around it;
   the outline's vertices are the corners with 1 or 3 object pixels, or 2 diagonal ones
   (*saddles*, e.g. ``[[1, 0], [0, 1]]``). Straight-through corners are never vertices, so no
   collinear vertex is produced.
2. Links, vectorised: the code gives the direction in which the outline leaves a corner (the
   object kept on the left in the x/y plane: shoelace area > 0 for outer rings, < 0 for holes,
   the GeoJSON right-hand rule in x/y numbers; on screen, with y pointing down, outer rings look
   clockwise). No corner lies along a side, so the next vertex is the neighbouring corner in
   row-major order (x steps) or column-major order (y steps).
3. A saddle is passed twice. The outline turns around its own pixel there, so object pixels
   are 4-connected and diagonal neighbours are kept apart. A ring that still passes one saddle
   twice (a background pocket touching the outside at a corner) is split there into a simple
   outer ring and a hole touching it at that single point.
4. Rings are walked in a Python loop over the *vertices* (not pixels). Each 4-connected part
   gives one shell and its holes; several parts give a MultiPolygon whose polygons touch at
   most at isolated corners. Every result is valid in the OGC / shapely sense (simple rings,
   connected interiors).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from scipy import ndimage

from .labels import as_label_image

Ring = np.ndarray  # (k, 2) vertices (x, y), not closed (first vertex not repeated)
Part = tuple[Ring, list[Ring]]  # shell and its holes
_BATCH = 512  # objects per call of shapely's vectorised constructors


# Corner codes: the 2 x 2 pixels around a corner, bit 1 = up-left, 2 = up-right, 4 = down-left,
# 8 = down-right. Directions: 0 = +x, 1 = +y, 2 = -x, 3 = -y; the outline keeps the object on
# its left in the x/y plane (on the +y side of a +x step).
_IS_CORNER = np.zeros(16, bool)
_IS_CORNER[[1, 2, 4, 8, 7, 11, 13, 14, 6, 9]] = True
_IS_SADDLE = np.zeros(16, bool)
_IS_SADDLE[[6, 9]] = True
#: Direction leaving a corner (for saddles: the first of its two ways out).
_OUT = np.zeros(16, np.intp)
_OUT[[8, 13, 4, 7, 1, 11, 2, 14]] = [0, 0, 1, 1, 2, 2, 3, 3]
_OUT[[9, 6]] = [0, 1]
#: The second way out of a saddle corner.
_OUT2 = np.zeros(16, np.intp)
_OUT2[[9, 6]] = [2, 3]


def _corners(mask: np.ndarray) -> tuple[np.ndarray, ...]:
    """Corners of the outline of a padded bool mask.

    Returns x, y (corner coordinates, in row-major order), code (see ``_IS_CORNER``),
    ``by_col`` (the corner indices in column-major order) and ``rank`` (its inverse).
    """
    m = mask.view(np.uint8)
    code = m[:-1, :-1] | (m[:-1, 1:] << 1) | (m[1:, :-1] << 2) | (m[1:, 1:] << 3)
    corner = _IS_CORNER[code]
    y, x = np.nonzero(corner)
    n = y.size
    index = np.empty(code.shape, np.intp)
    index[y, x] = np.arange(n)
    xt, yt = np.nonzero(corner.T)
    by_col = index[yt, xt]  # corner ids in column-major order
    rank = np.empty(n, np.intp)
    rank[by_col] = np.arange(n)
    return x + 1, y + 1, code[y, x], by_col, rank


def _next_corner(k: np.ndarray, out: np.ndarray, by_col: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Index of the corner reached from corners ``k`` leaving in directions ``out``.

    Along an outline side there is no other corner, so the next corner is the neighbour in
    row-major order (x steps: +1 for +x, -1 for -x) or column-major order (y steps).
    """
    return np.where(out & 1, by_col[(rank[k] + 2 - out) % rank.size], k + 1 - out)


def _split_at_repeats(ring: list[int], corner_of: list[int]) -> list[list[int]]:
    """Split a closed chain of nodes at every corner it visits twice into simple chains."""
    out, stack = [], [ring]
    while stack:
        r = stack.pop()
        seen: dict[int, int] = {}
        for k, s in enumerate(r):
            v = corner_of[s]
            i = seen.get(v)
            if i is not None:
                stack.append(r[i:k])
                stack.append(r[k:] + r[:i])
                break
            seen[v] = k
        else:
            out.append(r)
    return out


def _pixel_inside(hole: Ring) -> tuple[float, float]:
    """Centre of the background pixel inside a hole next to the hole's first side."""
    (x0, y0), (x1, y1) = hole[0], hole[1]
    dx, dy = np.sign(x1 - x0), np.sign(y1 - y0)
    # the object is on the left of each side (the (-dy, dx) side), the hole on the right
    return x0 + 0.5 * (dx + dy), y0 + 0.5 * (dy - dx)


def _inside(px: float, py: float, ring: Ring) -> bool:
    """Even-odd test of a pixel centre against a rectilinear ring (crossings of its y-sides)."""
    x, y = ring[:, 0], ring[:, 1]
    y1 = np.roll(y, -1)
    crossing = (x == np.roll(x, -1)) & (x > px) & (np.minimum(y, y1) < py) & (np.maximum(y, y1) > py)
    return bool(np.count_nonzero(crossing) % 2)


def trace_mask(mask: np.ndarray) -> list[Part]:
    """Outline of the True pixels of a bool mask whose border row/column are all False.

    Parameters
    ----------
    mask : np.ndarray
        bool (H, W), indexed [row, col], with ``mask[0]``, ``mask[-1]``, ``mask[:, 0]`` and
        ``mask[:, -1]`` False (pad by one pixel first).

    Returns
    -------
    list of (shell, holes)
        One entry per 4-connected part: ``shell`` an int64 (k, 2) array of corner (x, y)
        coordinates in mask pixels (x = col, y = row), positive shoelace area, not closed;
        ``holes`` a list of such arrays with negative area. See the module docstring.
    """
    x, y, code, by_col, rank = _corners(mask)
    n = x.size
    if n == 0:
        return []
    out = _OUT[code]
    saddles = np.flatnonzero(_IS_SADDLE[code])
    if saddles.size:
        # a saddle corner is passed twice: one extra node per saddle for its second way out
        node_corner = np.concatenate([np.arange(n), saddles])
        node_out = np.concatenate([out, _OUT2[code[saddles]]])
        target = _next_corner(node_corner, node_out, by_col, rank)
        extra = np.full(n, -1, np.intp)
        extra[saddles] = n + np.arange(saddles.size)
        # arriving at a saddle, turn around the arriving side's own pixel: out = in + 1
        second = (extra[target] >= 0) & (((node_out + 1) & 3) != out[target])
        nxt = np.where(second, extra[target], target).tolist()
    else:
        node_corner = None
        nxt = _next_corner(np.arange(n), out, by_col, rank).tolist()

    seen = bytearray(len(nxt))
    rings: list[list[int]] = []
    for s0 in range(len(nxt)):
        if seen[s0]:
            continue
        ring = []
        s = s0
        while not seen[s]:
            seen[s] = 1
            ring.append(s)
            s = nxt[s]
        rings.append(ring)
    if node_corner is not None:  # split rings that pass one saddle corner twice
        corner_of = node_corner.tolist()
        rings = [[corner_of[s] for s in part] for ring in rings for part in _split_at_repeats(ring, corner_of)]
    if len(rings) == 1:
        return [(np.column_stack([x[rings[0]], y[rings[0]]]), [])]

    lengths = np.array([len(r) for r in rings])
    order = np.fromiter((s for r in rings for s in r), np.intp, count=int(lengths.sum()))
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    xo, yo = x[order], y[order]
    nxt_o = np.arange(1, order.size + 1)
    nxt_o[bounds[1:] - 1] = bounds[:-1]  # next vertex within the same ring
    area2 = np.add.reduceat(xo * yo[nxt_o] - xo[nxt_o] * yo, bounds[:-1])
    xy = np.column_stack([xo, yo])
    coords = [xy[bounds[i] : bounds[i + 1]] for i in range(len(rings))]
    shells = [i for i in range(len(rings)) if area2[i] > 0]
    holes = [i for i in range(len(rings)) if area2[i] < 0]
    if len(shells) == 1:
        return [(coords[shells[0]], [coords[i] for i in holes])]

    # several parts: give each hole to the smallest shell around it
    parts: dict[int, list[Ring]] = {i: [] for i in shells}
    by_size = sorted(shells, key=lambda i: area2[i])
    for h in holes:
        px, py = _pixel_inside(coords[h])
        for i in by_size:
            if _inside(px, py, coords[i]):
                parts[i].append(coords[h])
                break
        else:  # pragma: no cover - impossible for a consistent outline
            raise RuntimeError("hole outside every outer ring")
    return [(coords[i], parts[i]) for i in shells]


def label_outlines(labels: np.ndarray, offset: tuple[float, float] = (0, 0)) -> Iterator[tuple[int, list[Part]]]:
    """Exact pixel-edge outlines of every object, as coordinate arrays.

    Parameters
    ----------
    labels : np.ndarray
        (H, W) integer label image indexed [row, col], 0 = background.
    offset : (float, float)
        ``(row0, col0)``: added to y and x (position of ``labels`` in a larger image).

    Yields
    ------
    (int, list of (shell, holes))
        Object id (ascending; ids without pixels are skipped) and one (shell, holes) per
        4-connected part, as in :func:`trace_mask` but in image pixel-corner coordinates
        ``(x, y) = (col, row) + (col0, row0)``: int64 when the offset is integral, else float64.
    """
    labels = as_label_image(labels)
    row0, col0 = offset
    integral = float(row0).is_integer() and float(col0).is_integer()
    if integral:
        row0, col0 = int(row0), int(col0)
    for index, sl in enumerate(ndimage.find_objects(labels)):
        if sl is not None:
            yield index + 1, object_outline(labels[sl], index + 1, (sl[1].start, sl[0].start), (col0, row0))


def object_outline(crop: np.ndarray, lid: int, origin: tuple[int, int] = (0, 0),
                   offset: tuple[float, float] = (0, 0)) -> list[Part]:
    """Exact pixel-edge outline of the pixels of ``crop`` equal to ``lid``.

    ``crop``: (h, w) label array indexed [row, col] (e.g. an object's bounding box);
    ``origin``: ``(x, y)`` = (col, row) of ``crop``'s top-left pixel in its label image;
    ``offset``: ``(x, y)`` added on top (the label image's position in a larger image). Returns
    one (shell, holes) per 4-connected part as :func:`trace_mask`, in (x, y) pixel corners.
    """
    mask = np.zeros((crop.shape[0] + 2, crop.shape[1] + 2), bool)
    mask[1:-1, 1:-1] = crop == lid
    shift = np.array([origin[0] - 1 + offset[0], origin[1] - 1 + offset[1]])
    return [(shell + shift, [h + shift for h in holes]) for shell, holes in trace_mask(mask)]


def label_polygons(labels: np.ndarray, offset: tuple[float, float] = (0, 0)) -> Iterator[tuple[int, object]]:
    """Exact pixel-edge outline of every object as a shapely geometry.

    Parameters
    ----------
    labels : np.ndarray
        (H, W) integer label image indexed [row, col], 0 = background.
    offset : (float, float)
        ``(row0, col0)``: added to y and x (position of ``labels`` in a larger image).

    Yields
    ------
    (int, shapely.Polygon or shapely.MultiPolygon)
        Object id (ascending; absent ids skipped) and its outline in pixel-corner coordinates
        (x = col + col0, y = row + row0): a Polygon (holes as interior rings) when the object's
        pixels are 4-connected, else a MultiPolygon with one polygon per 4-connected part
        (parts that touch diagonally share a single corner point). The area equals the pixel
        count, there are no collinear vertices and ``is_valid`` holds. See the module docstring.
    """
    batch: list[tuple[int, list[Part]]] = []
    for item in label_outlines(labels, offset):
        batch.append(item)
        if len(batch) == _BATCH:
            yield from _to_shapely(batch)
            batch = []
    if batch:
        yield from _to_shapely(batch)


def _to_shapely(batch: list[tuple[int, list[Part]]]) -> Iterator[tuple[int, object]]:
    """Build the geometries of a batch of outlines with shapely's vectorised constructors."""
    import shapely

    rings = [r for _, parts in batch for shell, holes in parts for r in (shell, *holes)]
    ring_of_vertex = np.repeat(np.arange(len(rings)), [len(r) for r in rings])
    ring_arr = shapely.linearrings(np.concatenate(rings), indices=ring_of_vertex)
    rings_per_poly = [1 + len(holes) for _, parts in batch for _, holes in parts]
    polys = shapely.polygons(ring_arr, indices=np.repeat(np.arange(len(rings_per_poly)), rings_per_poly))
    k = 0
    for lid, parts in batch:
        if len(parts) == 1:
            yield lid, polys[k]
        else:
            yield lid, shapely.MultiPolygon(list(polys[k : k + len(parts)]))
        k += len(parts)
