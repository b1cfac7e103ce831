"""Regular tiling with halo: the tile grid of the reference (blocks from (0, 0), row-major).

Blocks are ``((row0, col0), (row1, col1))``, end exclusive, in pixels of the full image.
"""

from __future__ import annotations

from dataclasses import dataclass

Block = tuple[tuple[int, int], tuple[int, int]]


@dataclass(frozen=True)
class Tile:
    """One tile: ``inner`` block (owned pixels) and ``outer`` block (inner + halo, clipped)."""

    index: int
    inner: Block
    outer: Block

    @property
    def inner_local(self) -> Block:
        """The inner block in coordinates of the outer block."""
        (r0, c0), (r1, c1) = self.inner
        (o0, p0), _ = self.outer
        return (r0 - o0, c0 - p0), (r1 - o0, c1 - p0)

    @property
    def outer_shape(self) -> tuple[int, int]:
        (r0, c0), (r1, c1) = self.outer
        return r1 - r0, c1 - c0


def tile_grid(shape: tuple[int, int], tile_shape: tuple[int, int], halo: tuple[int, int]) -> list[Tile]:
    """All tiles of an image of ``shape`` (H, W), row-major, as the reference's blocking."""
    H, W = int(shape[0]), int(shape[1])
    th, tw = int(tile_shape[0]), int(tile_shape[1])
    hh, hw = int(halo[0]), int(halo[1])
    if th <= 0 or tw <= 0 or hh < 0 or hw < 0:
        raise ValueError(f"tile_shape must be positive and halo non-negative, got {tile_shape}, {halo}")
    return tiles_within(((0, 0), (H, W)), (th, tw), (hh, hw), (H, W))


def tile_slices(block: Block) -> tuple[slice, slice]:
    """numpy slices of a block."""
    (r0, c0), (r1, c1) = block
    return slice(r0, r1), slice(c0, c1)


def tiles_within(block: Block, tile_shape: tuple[int, int], halo: tuple[int, int], shape: tuple[int, int]
                 ) -> list[Tile]:
    """The tiles of ``tile_grid(shape, tile_shape, halo)`` whose inner blocks lie in ``block`` (a
    block of whole tiles: its start a multiple of ``tile_shape``), row-major, with their indices
    in that grid."""
    (b0, d0), (b1, d1) = block
    H, W = int(shape[0]), int(shape[1])
    th, tw = int(tile_shape[0]), int(tile_shape[1])
    hh, hw = int(halo[0]), int(halo[1])
    if b0 % th or d0 % tw:
        raise ValueError(f"block {block} does not start on the {tile_shape} tile grid")
    n_cols = -(-W // tw)
    tiles = []
    for r0 in range(b0, min(b1, H), th):
        for c0 in range(d0, min(d1, W), tw):
            r1, c1 = min(r0 + th, H), min(c0 + tw, W)
            outer = ((max(r0 - hh, 0), max(c0 - hw, 0)), (min(r1 + hh, H), min(c1 + hw, W)))
            tiles.append(Tile((r0 // th) * n_cols + c0 // tw, ((r0, c0), (r1, c1)), outer))
    return tiles
