"""Tiled AIS post-processing that does not depend on tile borders, and streams.

The image is cut into the blocks of the tile grid (``pathosam.tiling``). Each block is
post-processed on its *extended* region (block + ``halo``, clipped to the image) with exactly the
untiled algorithm (:func:`pathosam.instances.ais.ais_from_maps`): smoothing, thresholds,
8-connected seeds, seeded watershed. Only the block's own (inner) pixels are written.

Seam-free stitching: every seed (connected component of the seed mask) is identified by its
*anchor*, the global raster index ``row * W + col`` of its first pixel in row-major order. A
seed lying within ``halo`` of a block is seen whole, with the same anchor, by every block whose
extended region contains it, so pixels that different blocks assign to the same nucleus get the
same id: no nucleus is split or duplicated at a border. Final ids are the anchors' ranks, which is
also how ``skimage.measure.label`` numbers the seeds of the untiled algorithm: when the tiled and
untiled watersheds agree, the label images are identical, not merely the same partition.

Limits: within each block the result equals the untiled one except where the watershed's flooding
paths leave the extended region, i.e. for nuclei larger than ``halo``; such a nucleus may be cut.

Memory: the provisional label image (the output array, which may be a ``numpy.memmap`` or a zarr
array), two integers per nucleus, and a map of anchors to ids only for blocks whose neighbours are
not finished yet. Maps are consumed block by block (:class:`TiledAIS`), so they never need to be
held for the whole image.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from ..tiling import Block, Tile, tile_grid, tile_slices
from .ais import _smoothed_maps_and_seeds, check_maps, check_params, seeded_watershed

ROWS_PER_RELABEL = 1024


@dataclass(frozen=True)
class AISParams:
    """Post-processing parameters of AIS; defaults are the reference's (micro-sam ``generate``)."""

    center_distance_threshold: float = 0.5
    boundary_distance_threshold: float = 0.5
    foreground_threshold: float = 0.5
    foreground_smoothing: float = 1.0
    distance_smoothing: float = 1.6
    min_size: int = 0

    def __post_init__(self) -> None:
        check_params(self.foreground_smoothing, self.distance_smoothing, self.min_size)


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

    def owner(self, anchor: int) -> int:
        r, c = divmod(anchor, self.shape[1])
        return (r // self.tile_shape[0]) * self.n_cols + c // self.tile_shape[1]


class TiledAIS:
    """Streaming, seam-free tiled AIS.

    Feed the decoder maps of each tile's inner block in any order with :meth:`add`; a block is
    post-processed as soon as the maps of all its neighbours are there, and maps are dropped when
    no unfinished block needs them. :meth:`finish` relabels the output to ids 1..N.

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
        Writable uint32 (H, W) array (numpy, memmap, zarr) receiving the labels; a new numpy
        array if omitted.
    """

    def __init__(
        self,
        shape: tuple[int, int],
        tile_shape: tuple[int, int],
        halo: tuple[int, int],
        params: AISParams = AISParams(),
        out=None,
    ) -> None:
        self.grid = _Grid((int(shape[0]), int(shape[1])), _pair(tile_shape), _pair(halo))
        self.params = params
        self.out = np.zeros(self.grid.shape, dtype=np.uint32) if out is None else out
        if tuple(self.out.shape) != self.grid.shape:
            raise ValueError(f"out has shape {tuple(self.out.shape)}, expected {self.grid.shape}")
        self._maps: dict[int, np.ndarray] = {}
        self._extra: dict[int, object] = {}
        self._done: set[int] = set()
        self._pids: dict[int, dict[int, int]] = {}  # owner block -> {anchor: provisional id}
        self._anchor = np.zeros(1024, dtype=np.int64)  # provisional id -> anchor (index 0 unused)
        self._area = np.zeros(1024, dtype=np.int64)  # provisional id -> pixels written
        self._n = 0
        self.lut: np.ndarray | None = None

    @property
    def n_blocks(self) -> int:
        return len(self.grid.tiles)

    # ------------------------------------------------------------------ streaming interface
    def add(self, index: int, inner_maps: np.ndarray, extra=None) -> list[tuple[int, np.ndarray, object]]:
        """Give the (C, h, w) maps of block ``index``'s inner region (C >= 3: foreground,
        centre distance, boundary distance first) and optional ``extra`` data of that block.

        Returns ``(index, labels, extra)`` for each block post-processed now; ``labels`` are its
        provisional ids (final ids after :meth:`finish` through ``self.lut``)."""
        tile = self.grid.tiles[index]
        (r0, c0), (r1, c1) = tile.inner
        if inner_maps.shape[1:] != (r1 - r0, c1 - c0) or inner_maps.shape[0] < 3:
            raise ValueError(f"maps of block {index} have shape {inner_maps.shape}, expected (3, {r1 - r0}, {c1 - c0})")
        self._maps[index] = np.asarray(inner_maps[:3], dtype=np.float32)
        self._extra[index] = extra
        # a neighbour's maps are kept until all blocks around it are done, so presence suffices
        ready = [b for b in self.grid.neighbours(index)
                 if b not in self._done and all(n in self._maps for n in self.grid.neighbours(b))]
        return [(b, self.process_block(b, self._assemble(b)), self._extra.pop(b)) for b in ready]

    def _assemble(self, index: int) -> np.ndarray:
        """The maps of block ``index``'s extended region, from its neighbours' inner maps."""
        ext = _extended(self.grid.tiles[index].inner, self.grid.halo, self.grid.shape)
        (e0, f0), (e1, f1) = ext
        maps = np.empty((3, e1 - e0, f1 - f0), dtype=np.float32)
        for n in self.grid.neighbours(index):
            (r0, c0), (r1, c1) = self.grid.tiles[n].inner
            a0, b0, a1, b1 = max(r0, e0), max(c0, f0), min(r1, e1), min(c1, f1)
            if a0 < a1 and b0 < b1:
                maps[:, a0 - e0 : a1 - e0, b0 - f0 : b1 - f0] = self._maps[n][:, a0 - r0 : a1 - r0, b0 - c0 : b1 - c0]
        return maps

    # ------------------------------------------------------------------ one block
    def process_block(self, index: int, ext_maps: np.ndarray) -> np.ndarray:
        """Post-process block ``index`` given the maps (3, h, w) of its extended region; returns
        the block's provisional labels (also written to ``out``)."""
        tile = self.grid.tiles[index]
        ext = _extended(tile.inner, self.grid.halo, self.grid.shape)
        (e0, f0), (e1, f1) = ext
        if ext_maps.shape != (3, e1 - e0, f1 - f0):
            raise ValueError(f"extended maps of block {index}: shape {ext_maps.shape}, expected {(3, e1 - e0, f1 - f0)}")
        p = self.params
        _, _, boundary, fg_mask, seeds = _smoothed_maps_and_seeds(
            ext_maps, p.center_distance_threshold, p.boundary_distance_threshold, p.foreground_threshold,
            p.foreground_smoothing, p.distance_smoothing,
        )
        (r0, c0), (r1, c1) = tile.inner
        inner = (slice(r0 - e0, r1 - e0), slice(c0 - f0, c1 - f0))
        n_seeds = int(seeds.max())
        if n_seeds == 0:
            local = np.zeros((r1 - r0, c1 - c0), dtype=np.int64)
        else:
            local = seeded_watershed(boundary, seeds, fg_mask)[inner]
        # anchors: first pixel (row-major) of each seed, as a global raster index
        flat = seeds.ravel()
        nz = np.flatnonzero(flat)
        ids, first = np.unique(flat[nz], return_index=True)
        pos = nz[first]
        rows, cols = np.divmod(pos, f1 - f0)
        anchors = (rows + e0) * self.grid.shape[1] + (cols + f0)
        lut = np.zeros(n_seeds + 1, dtype=np.uint32)
        present = np.unique(local)
        for sid in present[present > 0].tolist():
            lut[sid] = self._pid(int(anchors[np.searchsorted(ids, sid)]))
        block = lut[local]
        self.out[r0:r1, c0:c1] = block
        counts = np.bincount(block.ravel(), minlength=self._n + 1)
        self._area[: counts.size] += counts
        self._finished(index)
        return block

    def _pid(self, anchor: int) -> int:
        owner = self.grid.owner(anchor)
        table = self._pids.setdefault(owner, {})
        pid = table.get(anchor)
        if pid is None:
            self._n += 1
            pid = self._n
            if pid >= self._anchor.size:
                self._anchor = np.concatenate([self._anchor, np.zeros_like(self._anchor)])
                self._area = np.concatenate([self._area, np.zeros_like(self._area)])
            self._anchor[pid] = anchor
            table[anchor] = pid
        return pid

    def _finished(self, index: int) -> None:
        self._done.add(index)
        for n in self.grid.neighbours(index):
            if all(m in self._done for m in self.grid.neighbours(n)):
                self._pids.pop(n, None)
                self._maps.pop(n, None)

    # ------------------------------------------------------------------ result
    def finish(self) -> int:
        """Size-filter and relabel the output in place to ids 1..N (ordered by anchor); returns N.

        ``self.lut`` then maps provisional ids to final ids (0 = removed by ``min_size``)."""
        missing = self.n_blocks - len(self._done)
        if missing:
            raise RuntimeError(f"{missing} of {self.n_blocks} blocks have not been post-processed")
        n = self._n
        anchor, area = self._anchor[1 : n + 1], self._area[1 : n + 1]
        keep = area >= max(self.params.min_size, 1)
        order = np.argsort(anchor, kind="stable")
        order = order[keep[order]]
        lut = np.zeros(n + 1, dtype=np.uint32)
        lut[order + 1] = np.arange(1, order.size + 1, dtype=np.uint32)
        self.lut = lut
        H = self.grid.shape[0]
        for r in range(0, H, ROWS_PER_RELABEL):
            rows = slice(r, min(r + ROWS_PER_RELABEL, H))
            self.out[rows] = lut[np.asarray(self.out[rows])]
        return int(order.size)

    def blocks(self) -> Iterator[Tile]:
        return iter(self.grid.tiles)


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
        ext = _extended(tile.inner, job.grid.halo, job.grid.shape)
        job.process_block(tile.index, maps[(slice(None), *tile_slices(ext))])
    job.finish()
    return job.out
