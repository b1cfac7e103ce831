"""Tiled AIS post-processing that does not depend on tile borders, streams and can resume.

The image is cut into the blocks of the tile grid (``pathosam.tiling``). Each block is
post-processed on its *extended* region (block + ``halo``, clipped to the image) with exactly the
untiled algorithm (the watershed core of :mod:`pathosam.instances._watershed`, as
:func:`pathosam.instances.ais_from_maps`): smoothing, thresholds, 8-connected seeds, seeded
watershed. Only the block's own (inner) pixels are kept.

Seam-free stitching: every seed (connected component of the seed mask) is identified by its
*anchor*, the global raster index ``row * W + col`` of its first pixel in row-major order. A
seed lying within ``halo`` of a block is seen whole, with the same anchor, by every block whose
extended region contains it, so pixels that different blocks assign to the same nucleus get the
same id: no nucleus is split or duplicated at a border. Final ids are the ranks of the anchors,
which is also how ``skimage.measure.label`` numbers the seeds of the untiled algorithm: when the
tiled and untiled watersheds agree, the label images are identical, not merely the same partition.

Each block's result (:class:`BlockResult`: labels with block-local ids, the anchors of those ids,
per-nucleus pixel statistics and optional per-pixel feature sums) depends only on the maps, never
on the order in which blocks are processed. Blocks can therefore run in any order, on other
processes, or be saved and reloaded (resume); :meth:`TiledAIS.finish` merges the results by
anchor, applies ``min_size`` and writes the final ids.

Limits: within each block the result equals the untiled one except where the watershed's flooding
paths leave the extended region, i.e. for nuclei larger than ``halo``; such a nucleus may be cut.

Memory: the label image (the output array, which may be a memmap or a zarr array), a few numbers
per nucleus, and - when maps are streamed in with :meth:`TiledAIS.add` - the maps of the tiles
whose neighbouring blocks are not finished (about two rows of tiles in raster order).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from ..tiling import Block, Tile, tile_grid, tile_slices
from ._watershed import check_maps, seeded_watershed, smoothed_maps_and_seeds
from .params import AISParams

#: Columns of :attr:`BlockResult.stats` (pixel coordinates of the full image, rows and cols).
STATS = ("area", "sum_row", "sum_col", "min_row", "min_col", "max_row", "max_col")


@dataclass
class BlockResult:
    """Post-processing result of one block, independent of all other blocks' processing.

    ``labels``: uint32 (h, w) inner block, 0 = background, 1..k block-local ids; ``anchors``:
    int64 (k,) anchor of local id i + 1; ``stats``: float64 (k, 7) per local id, columns
    :data:`STATS` (area in pixels, sums and extremes of row / col indices); ``features``:
    float64 (k, m) sums over each nucleus' pixels of the ``features`` given to the block, or None.
    """

    index: int
    labels: np.ndarray
    anchors: np.ndarray
    stats: np.ndarray
    features: np.ndarray | None = None


@dataclass
class Nuclei:
    """Per-nucleus data of the final label image, indexed by final id - 1.

    ``anchor`` int64, ``area`` int64 pixels, ``centroid`` float64 (N, 2) (row, col) of the pixel
    centres' mean in pixel-index units (add 0.5 for pixel-corner coordinates), ``bbox`` int64
    (N, 4) (min_row, min_col, max_row + 1, max_col + 1), ``features`` float64 (N, m) or None.
    """

    anchor: np.ndarray
    area: np.ndarray
    centroid: np.ndarray
    bbox: np.ndarray
    features: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.anchor.size)


def _extended(block: Block, halo: tuple[int, int], shape: tuple[int, int]) -> Block:
    (r0, c0), (r1, c1) = block
    return (max(r0 - halo[0], 0), max(c0 - halo[1], 0)), (min(r1 + halo[0], shape[0]), min(c1 + halo[1], shape[1]))


@dataclass
class _Grid:
    shape: tuple[int, int]
    tile_shape: tuple[int, int]
    halo: tuple[int, int]
    tiles: list[Tile] = field(init=False)
    n_rows: int = field(init=False)
    n_cols: int = field(init=False)

    def __post_init__(self) -> None:
        th, tw = self.tile_shape
        if self.halo[0] > th or self.halo[1] > tw:
            raise ValueError(f"the post-processing halo {self.halo} must not exceed the tile shape {self.tile_shape}")
        self.tiles = tile_grid(self.shape, self.tile_shape, self.halo)
        self.n_rows = -(-self.shape[0] // th)
        self.n_cols = -(-self.shape[1] // tw)

    def neighbours(self, index: int) -> list[int]:
        """Indices of the block and its (up to 8) neighbours: the blocks an extended region touches."""
        i, j = divmod(index, self.n_cols)
        return [a * self.n_cols + b for a in range(max(i - 1, 0), min(i + 2, self.n_rows))
                for b in range(max(j - 1, 0), min(j + 2, self.n_cols))]

    def extended(self, index: int) -> Block:
        return _extended(self.tiles[index].inner, self.halo, self.shape)


def process_block(
    grid_shape: tuple[int, int], tile: Tile, halo: tuple[int, int], ext_maps: np.ndarray, params: AISParams,
    features: np.ndarray | None = None,
) -> BlockResult:
    """Post-process one block given the (3, h, w) maps of its extended region (inner + ``halo``,
    clipped to the image of shape ``grid_shape``) and optional (m, h_in, w_in) per-pixel
    ``features`` of its inner region to be summed per nucleus."""
    (e0, f0), (e1, f1) = _extended(tile.inner, halo, grid_shape)
    if ext_maps.shape != (3, e1 - e0, f1 - f0):
        raise ValueError(f"extended maps of block {tile.index}: shape {ext_maps.shape}, expected {(3, e1 - e0, f1 - f0)}")
    p = params
    (r0, c0), (r1, c1) = tile.inner
    if float(ext_maps[0].max()) <= p.foreground_threshold:
        # smoothing is an average, so no pixel can exceed the threshold: nothing to segment
        return BlockResult(tile.index, np.zeros((r1 - r0, c1 - c0), np.uint32), np.zeros(0, np.int64),
                           np.zeros((0, len(STATS))), None if features is None else np.zeros((0, features.shape[0])))
    _, _, boundary, fg_mask, seeds = smoothed_maps_and_seeds(ext_maps, p)
    h, w = r1 - r0, c1 - c0
    n_seeds = int(seeds.max())
    if n_seeds == 0:
        empty = np.zeros((0, len(STATS)))
        feats = np.zeros((0, features.shape[0])) if features is not None else None
        return BlockResult(tile.index, np.zeros((h, w), np.uint32), np.zeros(0, np.int64), empty, feats)
    local = seeded_watershed(boundary, seeds, fg_mask)[r0 - e0 : r1 - e0, c0 - f0 : c1 - f0]
    # anchors: first pixel (row-major) of each seed, as a global raster index
    flat = seeds.ravel()
    nz = np.flatnonzero(flat)
    ids, first = np.unique(flat[nz], return_index=True)
    rows, cols = np.divmod(nz[first], f1 - f0)
    seed_anchor = np.zeros(n_seeds + 1, np.int64)
    seed_anchor[ids] = (rows + e0) * grid_shape[1] + (cols + f0)
    # renumber the seeds present in the inner block to 1..k (ascending seed id = ascending anchor)
    present = np.unique(local)
    present = present[present > 0]
    lut = np.zeros(n_seeds + 1, np.uint32)
    lut[present] = np.arange(1, present.size + 1, dtype=np.uint32)
    labels = lut[local]
    k = present.size
    ids = labels.ravel().astype(np.int64)
    rr, cc = np.divmod(np.arange(h * w, dtype=np.int64), w)
    rr += r0
    cc += c0
    stats = np.empty((k, len(STATS)))
    stats[:, 0] = np.bincount(ids, minlength=k + 1)[1:]
    stats[:, 1] = np.bincount(ids, rr, minlength=k + 1)[1:]
    stats[:, 2] = np.bincount(ids, cc, minlength=k + 1)[1:]
    fg = ids > 0
    for col, values, red, init in ((3, rr, np.minimum, np.inf), (4, cc, np.minimum, np.inf),
                                   (5, rr, np.maximum, -np.inf), (6, cc, np.maximum, -np.inf)):
        out = np.full(k + 1, init)
        red.at(out, ids[fg], values[fg])
        stats[:, col] = out[1:]
    feats = None
    if features is not None:
        f = np.asarray(features, np.float64).reshape(features.shape[0], -1)
        feats = np.stack([np.bincount(ids, f[j], minlength=k + 1)[1:] for j in range(f.shape[0])], axis=1)
    return BlockResult(tile.index, labels, seed_anchor[present], stats, feats)


def _aggregate(anchors: np.ndarray, stats: np.ndarray, features: np.ndarray | None, min_size: int
               ) -> tuple[np.ndarray, np.ndarray, Nuclei]:
    """Sum the per-block entries of each anchor: (sorted unique anchors, 1-based rank among the
    kept nuclei or 0 for dropped ones, per-nucleus data of the kept nuclei)."""
    uniq, inv = np.unique(anchors, return_inverse=True)
    n = uniq.size
    area = np.bincount(inv, stats[:, 0], minlength=n)
    sums = np.stack([np.bincount(inv, stats[:, j], minlength=n) for j in (1, 2)], axis=1)
    mins = np.full((n, 2), np.inf)
    maxs = np.full((n, 2), -np.inf)
    np.minimum.at(mins, inv, stats[:, 3:5])
    np.maximum.at(maxs, inv, stats[:, 5:7])
    keep = area >= max(min_size, 1)
    rank = np.where(keep, np.cumsum(keep), 0).astype(np.int64)
    feats = None
    if features is not None:
        feats = np.stack([np.bincount(inv, features[:, j], minlength=n) for j in range(features.shape[1])],
                         axis=1)[keep].reshape(-1, features.shape[1])
    a = area[keep]
    nuclei = Nuclei(
        anchor=uniq[keep],
        area=a.astype(np.int64),
        centroid=(sums[keep] / np.maximum(a, 1)[:, None]).reshape(-1, 2),
        bbox=np.concatenate([mins[keep], maxs[keep] + 1], axis=1).astype(np.int64).reshape(-1, 4),
        features=feats,
    )
    return uniq, rank, nuclei


def concat_nuclei(parts: list[Nuclei], n_features: int | None = None) -> Nuclei:
    """Concatenate per-nucleus data (e.g. the chunks of :func:`iter_merged`)."""
    has_features = bool(parts) and parts[0].features is not None
    if not parts:
        has_features = n_features is not None
    return Nuclei(
        anchor=np.concatenate([np.zeros(0, np.int64)] + [p.anchor for p in parts]),
        area=np.concatenate([np.zeros(0, np.int64)] + [p.area for p in parts]),
        centroid=np.concatenate([np.zeros((0, 2))] + [p.centroid for p in parts]),
        bbox=np.concatenate([np.zeros((0, 4), np.int64)] + [p.bbox for p in parts]),
        features=np.concatenate([np.zeros((0, n_features or 0))] + [p.features for p in parts])
        if has_features else None,
    )


def iter_merged(
    shape: tuple[int, int],
    tile_shape: tuple[int, int],
    load_row: Callable[[int], list[BlockResult]],
    source,
    target,
    min_size: int = 0,
) -> Iterator[tuple[int, Nuclei]]:
    """Merge block results by anchor, one row of blocks at a time, in bounded memory.

    A nucleus' anchor lies in the extended region of every block holding some of its pixels
    (the halo is at most one tile), so a nucleus whose anchor is in block row ``a`` only occurs in
    block rows ``a - 1 .. a + 1``, and anchors grow with the block row. Nuclei are therefore
    completed row by row, their final ids (anchor ranks, as :func:`merge_blocks`) are known once
    the next row is loaded, and the labels of block row ``b`` are final once anchor rows up to
    ``b + 1`` are. At most four rows of block results are held.

    Parameters
    ----------
    shape, tile_shape : (int, int)
        Image shape and block shape (rows, cols) in pixels.
    load_row : callable
        ``load_row(i)`` -> the :class:`BlockResult` of every block of block row ``i`` (labels
        not needed).
    source, target : array-like
        (H, W) uint32 block-local labels as written by the blocks, and the array receiving the
        final ids (may be ``source`` itself).
    min_size : int
        Nuclei with fewer pixels are dropped (their pixels become 0).

    Yields
    ------
    (int, Nuclei)
        The first final id of the chunk and the per-nucleus data of ids ``first .. first + k - 1``,
        one chunk per block row of anchors, each once all labels of its nuclei are in ``target``.
    """
    th, tw = tile_shape
    n_rows, n_cols = -(-shape[0] // th), -(-shape[1] // tw)
    row_of = np.int64(th) * shape[1]  # anchors of block row a are in [a * row_of, (a + 1) * row_of)
    rows: dict[int, list[BlockResult]] = {}
    finals: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # anchor row -> (anchors, final ids or 0)
    ready: list[tuple[int, int, Nuclei]] = []  # (anchor row, first id, chunk) not yet yielded
    offset = 0
    rows[0] = load_row(0)
    for a in range(n_rows + 1):
        if a + 1 < n_rows:
            rows[a + 1] = load_row(a + 1)
        if a < n_rows:  # complete the nuclei anchored in block row a
            parts = [(r.anchors, r.stats, r.features) for i in (a - 1, a, a + 1) if i in rows for r in rows[i]]
            anchors = np.concatenate([np.zeros(0, np.int64)] + [p[0] for p in parts])
            sel = anchors // row_of == a
            stats = np.concatenate([np.zeros((0, len(STATS)))] + [p[1] for p in parts])[sel]
            features = None
            with_features = [p[2] for p in parts if p[2] is not None]
            if with_features:
                features = np.concatenate(with_features)[sel]
            uniq, rank, nuclei = _aggregate(anchors[sel], stats, features, min_size)
            finals[a] = (uniq, np.where(rank > 0, rank + offset, 0).astype(np.uint32))
            ready.append((a, offset + 1, nuclei))
            offset += len(nuclei)
        b = a - 1  # block row b: its anchors are in rows b - 1 .. b + 1, all final now
        if b >= 0:
            known = [finals[i] for i in (b - 1, b, b + 1) if i in finals]
            keys = np.concatenate([k for k, _ in known])
            ids = np.concatenate([v for _, v in known])
            for r in rows[b]:
                pos = np.searchsorted(keys, r.anchors)
                if r.anchors.size and (pos.max() >= keys.size or not np.array_equal(keys[pos], r.anchors)):
                    raise RuntimeError(f"block {r.index}: a nucleus' anchor lies more than one block row away")
                lut = np.concatenate([[0], ids[pos]]).astype(np.uint32)
                i, j = divmod(r.index, n_cols)
                sl = (slice(i * th, min((i + 1) * th, shape[0])), slice(j * tw, min((j + 1) * tw, shape[1])))
                target[sl] = lut[np.asarray(source[sl])]
            rows.pop(b - 1, None)
            finals.pop(b - 2, None)
        while ready and min(ready[0][0] + 1, n_rows - 1) <= b:
            _, first, chunk = ready.pop(0)
            yield first, chunk


def merge_blocks(results: list[BlockResult], min_size: int = 0) -> tuple[Nuclei, dict[int, np.ndarray]]:
    """Merge block results by anchor, all at once: per-nucleus data of the kept nuclei (area >=
    ``min_size``, ids = anchor ranks 1..N) and, per block index, the lookup table local id ->
    final id. (:func:`iter_merged` does the same row by row in bounded memory.)"""
    if not results:
        raise ValueError("no block results to merge")
    anchors = np.concatenate([r.anchors for r in results])
    stats = np.concatenate([r.stats for r in results]) if anchors.size else np.zeros((0, len(STATS)))
    features = np.concatenate([r.features for r in results]) if results[0].features is not None else None
    uniq, rank, nuclei = _aggregate(anchors, stats, features, min_size)
    final = rank.astype(np.uint32)
    inv = np.searchsorted(uniq, anchors)
    luts, offset = {}, 0
    for r in results:
        k = r.anchors.size
        luts[r.index] = np.concatenate([[0], final[inv[offset : offset + k]]]).astype(np.uint32)
        offset += k
    return nuclei, luts


class TiledAIS:
    """Streaming, seam-free tiled AIS.

    Feed the decoder maps of each tile's inner block in any order with :meth:`add`; a block is
    post-processed as soon as the maps of all its neighbours are there, and maps are dropped when
    no unfinished block needs them. Or post-process blocks directly (:meth:`process`) from maps
    you hold, or :meth:`put` results computed elsewhere (other processes, a previous run).
    :meth:`finish` writes the final ids 1..N.

    Parameters
    ----------
    shape : (int, int)
        Image shape (H, W) in pixels.
    tile_shape : (int, int)
        Block (inner tile) shape (rows, cols); the blocks are those of ``tile_grid``.
    halo : (int, int)
        Context (rows, cols) added on each side of a block for its post-processing; at most
        ``tile_shape``. Nuclei larger than the halo may be cut; 64 px is ample at 0.25 um/px.
    params : AISParams
        Post-processing parameters.
    out : array-like, optional
        Writable uint32 (H, W) array (numpy, memmap, zarr) receiving the labels (block-local ids
        until :meth:`finish`); a new numpy array if omitted.
    on_result : callable, optional
        Called with each new :class:`BlockResult` once its labels are in ``out`` (e.g. to save it
        for resuming).
    blocks : iterable of int, optional
        Post-process only these blocks (others are done elsewhere, e.g. by other workers);
        default all.
    keep_results : bool
        Keep each block's per-nucleus numbers for :meth:`finish`; False when ``on_result``
        saves them elsewhere (memory then does not grow with the number of blocks).
    """

    def __init__(
        self,
        shape: tuple[int, int],
        tile_shape: tuple[int, int],
        halo: tuple[int, int],
        params: AISParams = AISParams(),
        out=None,
        on_result=None,
        blocks=None,
        keep_results: bool = True,
    ) -> None:
        self.on_result = on_result
        self.keep_results = keep_results
        self.grid = _Grid((int(shape[0]), int(shape[1])), _pair(tile_shape), _pair(halo))
        self.params = params
        self.out = np.zeros(self.grid.shape, dtype=np.uint32) if out is None else out
        if tuple(self.out.shape) != self.grid.shape:
            raise ValueError(f"out has shape {tuple(self.out.shape)}, expected {self.grid.shape}")
        self._maps: dict[int, np.ndarray] = {}
        self._features: dict[int, np.ndarray | None] = {}
        self.results: dict[int, BlockResult] = {}  # labels are dropped once written to ``out``
        self.done: set[int] = set()
        self.mine = set(range(self.n_blocks)) if blocks is None else set(blocks)
        self.nuclei: Nuclei | None = None

    @property
    def n_blocks(self) -> int:
        return len(self.grid.tiles)

    def blocks(self) -> Iterator[Tile]:
        return iter(self.grid.tiles)

    # ------------------------------------------------------------------ streaming interface
    def add(self, index: int, inner_maps: np.ndarray, features: np.ndarray | None = None) -> list[int]:
        """Give the (C, h, w) maps of block ``index``'s inner region (C >= 3: foreground,
        centre distance, boundary distance first) and optional (m, h, w) per-pixel ``features``
        to be summed per nucleus. Returns the blocks post-processed now."""
        (r0, c0), (r1, c1) = self.grid.tiles[index].inner
        if inner_maps.shape[1:] != (r1 - r0, c1 - c0) or inner_maps.shape[0] < 3:
            raise ValueError(f"maps of block {index} have shape {inner_maps.shape}, expected (3, {r1 - r0}, {c1 - c0})")
        if all(self._settled(b) for b in self.grid.neighbours(index)):
            return []  # every block that needs these maps is done already (resumed run)
        self._maps[index] = np.array(inner_maps[:3], dtype=np.float32)  # a compact copy, not a view
        self._features[index] = features
        # a neighbour's maps are kept until all blocks around it are done, so presence suffices
        ready = [b for b in self.grid.neighbours(index)
                 if not self._settled(b) and all(n in self._maps for n in self.grid.neighbours(b))]
        for b in ready:
            self.process(b, self._assemble(b), self._features.pop(b))
        return ready

    def _assemble(self, index: int) -> np.ndarray:
        """The maps of block ``index``'s extended region, from its neighbours' inner maps."""
        (e0, f0), (e1, f1) = self.grid.extended(index)
        maps = np.empty((3, e1 - e0, f1 - f0), dtype=np.float32)
        for n in self.grid.neighbours(index):
            (r0, c0), (r1, c1) = self.grid.tiles[n].inner
            a0, b0, a1, b1 = max(r0, e0), max(c0, f0), min(r1, e1), min(c1, f1)
            if a0 < a1 and b0 < b1:
                maps[:, a0 - e0 : a1 - e0, b0 - f0 : b1 - f0] = self._maps[n][:, a0 - r0 : a1 - r0, b0 - c0 : b1 - c0]
        return maps

    def process(self, index: int, ext_maps: np.ndarray, features: np.ndarray | None = None) -> BlockResult:
        """Post-process block ``index`` from the (3, h, w) maps of its extended region."""
        result = process_block(self.grid.shape, self.grid.tiles[index], self.grid.halo, ext_maps, self.params,
                               features)
        self.put(result)
        return result

    def put(self, result: BlockResult, labels_written: bool = False) -> None:
        """Record a block result (computed here or elsewhere); writes its labels unless
        ``labels_written`` (e.g. reloaded from a previous run's output array)."""
        if not labels_written:
            (r0, c0), (r1, c1) = self.grid.tiles[result.index].inner
            self.out[r0:r1, c0:c1] = result.labels
            if self.on_result is not None:
                self.on_result(result)
        result.labels = None  # held in ``out`` now
        if self.keep_results:
            self.results[result.index] = result
        self.mark_done(result.index)

    def mark_done(self, index: int) -> None:
        """Record block ``index`` as finished (e.g. by a previous run) and free the maps no
        unfinished block needs any more."""
        self.done.add(index)
        for n in self.grid.neighbours(index):
            if all(self._settled(m) for m in self.grid.neighbours(n)):
                self._maps.pop(n, None)

    def _settled(self, index: int) -> bool:
        """Done here, or not this job's to do."""
        return index in self.done or index not in self.mine

    def needed_tiles(self) -> list[int]:
        """Tiles whose maps the unfinished blocks of this job need, in raster order."""
        return sorted({n for b in self.mine if b not in self.done for n in self.grid.neighbours(b)})

    # ------------------------------------------------------------------ result
    def finish(self, target=None) -> int:
        """Merge the blocks by anchor, drop nuclei below ``min_size`` and write the final ids
        1..N (ordered by anchor), row of blocks by row (:func:`iter_merged`), into ``target``
        (default: ``out`` itself, in place); returns N. ``self.nuclei`` then holds the
        per-nucleus data (:class:`Nuclei`)."""
        missing = self.n_blocks - len(self.done)
        if missing:
            raise RuntimeError(f"{missing} of {self.n_blocks} blocks have not been post-processed")
        if len(self.results) < self.n_blocks:
            raise RuntimeError("finish() needs the block results; this job was created with keep_results=False")
        n_cols = self.grid.n_cols
        target = self.out if target is None else target
        chunks = [chunk for _, chunk in iter_merged(
            self.grid.shape, self.grid.tile_shape,
            lambda i: [self.results[i * n_cols + j] for j in range(n_cols)], self.out, target, self.params.min_size)]
        first = self.results[0].features
        self.nuclei = concat_nuclei(chunks, None if first is None else first.shape[1])
        return len(self.nuclei)


def _pair(v) -> tuple[int, int]:
    if np.isscalar(v):
        return int(v), int(v)
    a, b = v
    return int(a), int(b)


def tiled_ais_from_maps(
    maps: np.ndarray, tile_shape: tuple[int, int], halo: tuple[int, int], params: AISParams = AISParams(),
    out=None,
) -> np.ndarray:
    """Tiled, seam-free AIS on full (3, H, W) maps held in memory (see :class:`TiledAIS`)."""
    maps = check_maps(maps)
    job = TiledAIS(maps.shape[1:], tile_shape, halo, params, out=out)
    for tile in job.blocks():
        job.process(tile.index, maps[(slice(None), *tile_slices(job.grid.extended(tile.index)))])
    job.finish()
    return job.out
