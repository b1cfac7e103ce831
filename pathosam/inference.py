"""The one tile driver: image -> tile inputs -> model -> decoder maps -> inner blocks.

Every path that runs pixels through the model calls this module: image embeddings
(:mod:`pathosam.embeddings`, ``PathoSAM.embed``), decoder maps of embeddings
(``PathoSAM.instance_maps`` / ``semantic_maps``), the decoder maps of a whole image
(:func:`decoder_maps`, used by evaluation), the streamed AIS of
:func:`pathosam.segment_nuclei` (and through it the server) and the model stage of the slide
pipeline (:mod:`pathosam.wsi.pipeline`). It owns

* tiling resolution: :func:`auto_tiling`, :func:`resolve_tiling`, :func:`image_tiles`;
* tile inputs: :class:`TileInputs`, the one rule from an image to the model input of a block;
* batching tiles through the model, with test-time augmentation: :func:`batched`,
  :func:`tile_maps`, :func:`run_tiles`, :func:`iter_tile_maps`, :func:`encode_blocks`,
  :func:`maps_from_embeddings`;
* the blocks and halo of the block-wise post-processing: :func:`postprocessing_block`,
  :func:`postprocessing_halo`, :class:`BlockOutputs`;
* pasting inner blocks: :func:`inner`, :func:`paste_inner`, :func:`tile_outputs`,
  :func:`background_outputs`.

Coordinates: blocks are ``((row0, col0), (row1, col1))`` in pixels of the full image, end
exclusive (:mod:`pathosam.tiling`); maps are float32 (C, rows, cols).

The conversion rule (:class:`TileInputs`): ``normalization="none"`` converts the *whole image*
to RGB uint8 once by :func:`pathosam.image.to_rgb_uint8`'s rule (RGB uint8 unchanged, 8-bit
values of other dtypes cast, anything else scaled by the whole image's range, so a pixel has the
same value in every tile and untiled) and cuts the blocks from it;
``"minmax"`` stretches every block on its own (the reference's per-tile normalisation).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

import numpy as np

from .image import LONG_SIDE, NORMALIZATIONS, Normalization, check_image, prepare_input, to_rgb_uint8
from .tiling import Block, Tile, tile_grid, tile_slices, tiles_within

#: Halo (rows, cols) of an explicit ``tile_shape`` given without one.
DEFAULT_HALO = (64, 64)
#: Smallest side, in pixels, of the blocks of the block-wise AIS post-processing (whole model
#: tiles), twice the 64 px context. Each block is post-processed with :func:`postprocessing_halo`
#: of context, so blocks of small tiles would redo most pixels: 96 px tiles + 64 px context are
#: 5.4x the pixels, 192 px blocks (2 x 2 tiles) 2.8x. The stitching is seam-free whatever the
#: block size; on real and reference maps the labels are the same for any block size (tests,
#: docs/benchmarks.md), on the noisy maps of untrained models they can differ slightly.
MIN_BLOCK = 128
#: Flips (tensor dims) averaged by the test-time augmentation: identity, columns, rows, both.
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))

T = TypeVar("T")
#: Maps of one batch: per decoder ("instance", "semantic") one float32 (C, h, w) array per tile.
TileMaps = dict[str, list[np.ndarray]]
Prepared = tuple  # (torch.Tensor (3, h, w) 0..255, input size (h, w), original size (H, W))


# ------------------------------------------------------------------------------------ tiling


def input_size(model) -> int:
    """Model input size in pixels (``PathoSAM.img_size``; SAM's 1024 for stand-ins without one)."""
    return int(getattr(model, "img_size", LONG_SIDE))


def auto_tiling(img_size: int = LONG_SIDE) -> tuple[int, tuple[int, int], tuple[int, int]]:
    """(largest untiled image side, tile shape, halo), in pixels, of ``tile_shape="auto"`` for a
    model with input size ``img_size``: the reference's geometry scaled to the model, i.e. outer
    tiles of half the input size, upsampled 2x (1024: 384 + 64 halo = 512 px tiles, images up to
    512 px untiled; 256: 96 + 16 = 128 px tiles, images up to 128 px untiled). Models are trained
    on patches at that 2x scale (PathoSAM: 512 px patches, 1024 input)."""
    t, h = img_size * 3 // 8, img_size // 16
    return img_size // 2, (t, t), (h, h)


def resolve_tiling(
    shape: tuple[int, int], tile_shape: tuple[int, int] | int | str | None, halo: tuple[int, int] | int | None,
    img_size: int = LONG_SIDE,
) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """Tile shape and halo (rows, cols), in pixels, to use for an image of ``shape`` (H, W).

    ``tile_shape="auto"``: see :func:`auto_tiling` (for the reference models, 384 + 64 halo for
    images larger than 512 px, else untiled); None: untiled, returns (None, None); an int or a
    pair: that tile shape with ``halo`` (default :data:`DEFAULT_HALO`).
    """
    if isinstance(tile_shape, str):
        if tile_shape != "auto":
            raise ValueError(f"tile_shape must be 'auto', None or (rows, cols), got {tile_shape!r}")
        untiled, auto_tile, auto_halo = auto_tiling(img_size)
        if max(shape) <= untiled:
            return None, None
        tile_shape = auto_tile
        halo = auto_halo if halo is None else halo
    if tile_shape is None:
        if halo is not None:
            raise ValueError("halo given without tile_shape")
        return None, None
    ts = tuple(int(t) for t in np.broadcast_to(tile_shape, 2))
    hl = tuple(int(h) for h in np.broadcast_to(DEFAULT_HALO if halo is None else halo, 2))
    if min(ts) <= 0 or min(hl) < 0:
        raise ValueError(f"tile_shape must be positive and halo non-negative, got {ts}, {hl}")
    return ts, hl


def image_tiles(shape: tuple[int, int], tile_shape: tuple[int, int] | None, halo: tuple[int, int] | None
                ) -> list[Tile]:
    """The tiles of an image of ``shape`` (H, W): :func:`pathosam.tiling.tile_grid`, or one tile
    whose inner and outer blocks are the whole image when ``tile_shape`` is None (untiled)."""
    if tile_shape is None:
        whole = ((0, 0), (int(shape[0]), int(shape[1])))
        return [Tile(0, whole, whole)]
    return tile_grid(shape, tile_shape, halo if halo is not None else (0, 0))


def postprocessing_halo(tile_shape: tuple[int, int], halo: tuple[int, int], seeds: str = "distance"
                        ) -> tuple[int, int]:
    """Context (rows, cols), in pixels, of the block-wise AIS post-processing: the tiling halo, at
    least 32 px (seam-free stitching needs context; 64 px for ``seeds="shape"``, whose distance
    transform sees whole clusters of touching nuclei) and at most the tile shape."""
    least = 64 if seeds == "shape" else 32
    return (min(max(halo[0], least), tile_shape[0]), min(max(halo[1], least), tile_shape[1]))


def postprocessing_block(tile_shape: tuple[int, int]) -> tuple[int, int]:
    """Shape (rows, cols), in pixels, of the post-processing blocks for model tiles of
    ``tile_shape``: k x k whole tiles, k the fewest reaching :data:`MIN_BLOCK` (1 for the
    reference's 384 px tiles, 2 for pathosam_small's 96 px tiles)."""
    return tuple(int(t) * max(1, -(-MIN_BLOCK // int(t))) for t in tile_shape)


class BlockOutputs:
    """The inner outputs of model tiles (:func:`tile_outputs`) put together per post-processing
    block: ``add`` each tile's as it comes (any order); it returns ``(block index, maps,
    features)`` once the block's last tile is in. Blocks are those of ``tile_grid(shape,
    block_shape, halo)``; ``block_shape``: whole tiles (:func:`postprocessing_block`)."""

    def __init__(self, shape: tuple[int, int], tile_shape: tuple[int, int], block_shape: tuple[int, int],
                 halo: tuple[int, int] = (0, 0)) -> None:
        self.shape, self.tile_shape, self.halo = shape, tile_shape, halo
        self.blocks = tile_grid(shape, block_shape, halo)
        self._block_shape = block_shape
        self._n_cols = -(-int(shape[1]) // int(block_shape[1]))
        self._open: dict[int, list] = {}  # block -> [maps, features, tiles still missing]

    def tiles(self, block: int) -> list[Tile]:
        """The model tiles of ``block`` (indices of the model tile grid)."""
        return tiles_within(self.blocks[block].inner, self.tile_shape, self.halo, self.shape)

    def add(self, tile: Tile, maps: np.ndarray, features: np.ndarray | None = None
            ) -> tuple[int, np.ndarray, np.ndarray | None] | None:
        (r0, c0), (r1, c1) = tile.inner
        b = (r0 // self._block_shape[0]) * self._n_cols + c0 // self._block_shape[1]
        (b0, d0), (b1, d1) = self.blocks[b].inner
        entry = self._open.get(b)
        if entry is None:
            feats = None if features is None else np.empty((features.shape[0], b1 - b0, d1 - d0), np.float32)
            entry = self._open[b] = [np.empty((maps.shape[0], b1 - b0, d1 - d0), np.float32), feats,
                                     len(self.tiles(b))]
        entry[0][:, r0 - b0 : r1 - b0, c0 - d0 : c1 - d0] = maps
        if features is not None:
            entry[1][:, r0 - b0 : r1 - b0, c0 - d0 : c1 - d0] = features
        entry[2] -= 1
        if entry[2]:
            return None
        del self._open[b]
        return b, entry[0], entry[1]


# ------------------------------------------------------------------------------------ tile inputs


class TileInputs:
    """Model inputs of the blocks of one image, by the one conversion rule (module docstring).

    Parameters
    ----------
    image : np.ndarray
        (H, W), (H, W, 3) or (H, W, 4) image, uint8/uint16/float (see :mod:`pathosam.image`).
    normalization : {"none", "minmax"}
        "none": the whole image converted once; "minmax": each block stretched on its own.
    img_size : int
        Model input size: blocks are resized to this longest side (:func:`input_size`).
    """

    def __init__(self, image: np.ndarray, normalization: Normalization = "none", img_size: int = LONG_SIDE) -> None:
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        image = np.asarray(image)
        check_image(image)
        self.image, self.normalization, self.img_size = image, normalization, int(img_size)
        self._rgb = to_rgb_uint8(image, "none") if normalization == "none" else None

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the image."""
        return int(self.image.shape[0]), int(self.image.shape[1])

    def rgb(self, block: Block | None = None) -> np.ndarray:
        """RGB uint8 (h, w, 3) of ``block`` ((row0, col0), (row1, col1)); None = the whole image."""
        sl = tile_slices(block) if block is not None else (slice(None), slice(None))
        return self._rgb[sl] if self._rgb is not None else to_rgb_uint8(self.image[sl], "minmax")

    def prepared(self, block: Block | None = None) -> Prepared:
        """:func:`pathosam.image.prepare_input` of :meth:`rgb` at the model input size:
        (tensor (3, h, w) 0..255, input size (h, w), original size (H, W))."""
        return prepare_input(self.rgb(block), self.img_size)


# ------------------------------------------------------------------------------------ batching


def batched(items: Sequence[T], batch_size: int, progress: bool = False, desc: str = "tiles",
            unit: str = "tile") -> Iterator[list[T]]:
    """``items`` in consecutive lists of up to ``batch_size``, with a progress bar (tqdm)
    advanced after each batch has been handled."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    items = list(items)
    with tqdm(total=len(items), desc=desc, unit=unit, disable=not progress) as bar:
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            yield batch
            bar.update(len(batch))


def tile_maps(model, inputs: Sequence[Prepared], whats: tuple[str, ...] = ("instance",), tta: bool = False
              ) -> TileMaps:
    """Decoder maps of one batch of tiles (``inputs`` from :meth:`TileInputs.prepared`): for each
    of ``whats`` ("instance", "semantic") a list of float32 (C, H, W) arrays at the tiles'
    original sizes. ``tta``: the mean of the maps of the tile and its three flips (rows,
    columns, both, :data:`TTA_FLIPS`), mapped back; 4x the time."""
    tensors, in_sizes, origs = zip(*inputs)
    out: TileMaps = {}
    flips = TTA_FLIPS if tta else ((),)
    for dims in flips:
        batch = [t.flip(dims) if dims else t for t in tensors]
        feats = model.encode(batch)
        for what in whats:
            maps = model.decode(feats, in_sizes, origs, what, inputs=batch)
            maps = [np.flip(m, dims) if dims else m for m in maps]
            out[what] = maps if what not in out else [a + m for a, m in zip(out[what], maps)]
    if tta:
        out = {w: [np.ascontiguousarray(m / len(flips), dtype=np.float32) for m in ms] for w, ms in out.items()}
    return out


def run_tiles(model, inputs: Sequence[Prepared], whats: tuple[str, ...] = ("instance",), tta: bool = False
              ) -> tuple[TileMaps, float]:
    """:func:`tile_maps` of one batch and the seconds spent in the model (every model call of
    the tile paths goes through here)."""
    t0 = time.perf_counter()
    maps = tile_maps(model, inputs, whats, tta)
    return maps, time.perf_counter() - t0


def iter_tile_maps(
    model, inputs: TileInputs, tiles: Sequence[Tile], whats: tuple[str, ...] = ("instance",), batch_size: int = 1,
    tta: bool = False, progress: bool = False, desc: str = "model",
) -> Iterator[tuple[list[Tile], TileMaps, float]]:
    """Yield ``(tiles, maps, seconds)`` per batch of ``tiles``: the maps of each tile's outer
    block (:func:`run_tiles`) and the seconds spent in the model. One batch in memory at a time."""
    for batch in batched(tiles, batch_size, progress, desc):
        maps, seconds = run_tiles(model, [inputs.prepared(t.outer) for t in batch], whats, tta)
        yield batch, maps, seconds


def encode_blocks(
    encode: Callable[[list], np.ndarray], inputs: TileInputs, blocks: Sequence[Block], out, batch_size: int = 1,
    progress: bool = True, desc: str = "embedding",
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Encode the image ``blocks`` in batches into ``out`` ((n, C, h, w), numpy or zarr);
    ``encode``: list of prepared tensors -> (B, C, h, w). Returns the input sizes and the
    original sizes (h, w) of the blocks."""
    input_sizes, original_sizes = [], []
    start = 0
    for batch in batched(blocks, batch_size, progress and len(blocks) > 1, desc, "it"):
        prepared = [inputs.prepared(b) for b in batch]
        input_sizes += [p[1] for p in prepared]
        original_sizes += [p[2] for p in prepared]
        features = encode([p[0] for p in prepared])
        if tuple(features.shape[1:]) != tuple(out.shape[1:]):
            raise ValueError(f"the encoder returned embeddings of shape {tuple(features.shape[1:])}, "
                             f"expected {tuple(out.shape[1:])}")
        out[start : start + len(batch)] = features
        start += len(batch)
    return input_sizes, original_sizes


# ------------------------------------------------------------------------------------ pasting


def inner(tile: Tile, maps: np.ndarray) -> np.ndarray:
    """The inner block of a tile's (C, h, w) maps of its outer block (a view)."""
    return maps[(slice(None), *tile_slices(tile.inner_local))]


def paste_inner(out: np.ndarray, tile: Tile, maps: np.ndarray) -> None:
    """Paste the inner block of a tile's (C, h, w) maps into ``out`` (C, H, W) of the full image."""
    out[(slice(None), *tile_slices(tile.inner))] = inner(tile, maps)


def tile_outputs(tile: Tile, inst: np.ndarray, sem: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """What the block-wise AIS post-processing (:class:`pathosam.instances.TiledAIS`) takes of a
    tile: its inner instance maps (float32 (3, h, w), compact) and, with semantic maps, its inner
    per-pixel class features (:func:`pathosam.semantic.class_features`)."""
    from .semantic import class_features

    maps = np.ascontiguousarray(inner(tile, inst)[:3], dtype=np.float32)
    return maps, None if sem is None else class_features(inner(tile, sem))


def background_outputs(tile: Tile, n_features: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`tile_outputs` of a tile left out of the model (no tissue): no foreground,
    distances 1 (their background value); features: all of the background class."""
    (r0, c0), (r1, c1) = tile.inner
    maps = np.ones((3, r1 - r0, c1 - c0), np.float32)
    maps[0] = 0
    feats = None
    if n_features is not None:
        feats = np.zeros((n_features, r1 - r0, c1 - c0), np.float32)
        feats[0] = 1  # background class: no votes, no shares
    return maps, feats


def decoder_maps(
    model, image: np.ndarray, tile_shape: tuple[int, int] | str | None = "auto", halo: tuple[int, int] | None = None,
    what: str = "instance", batch_size: int = 1, normalization: Normalization = "none", tta: bool = False,
) -> np.ndarray:
    """The decoder maps of a whole image, float32 (C, H, W): untiled, or the inner blocks of the
    tiles' maps pasted together (the reference's stitching); tiling as :func:`resolve_tiling`,
    ``tta``: see :func:`tile_maps`. For images that fit in memory (evaluation, grid search);
    :func:`pathosam.segment_nuclei` streams instead."""
    inputs = TileInputs(image, normalization, input_size(model))
    ts, hl = resolve_tiling(inputs.shape, tile_shape, halo, inputs.img_size)
    out = None
    for batch, maps, _ in iter_tile_maps(model, inputs, image_tiles(inputs.shape, ts, hl), (what,), batch_size, tta):
        for tile, m in zip(batch, maps[what]):
            if out is None:
                out = np.zeros((m.shape[0], *inputs.shape), np.float32)
            paste_inner(out, tile, m)
    return out


def maps_from_embeddings(
    model, emb, what: str = "instance", bn_mode: str = "per_tile", batch_size: int = 1, progress: bool = True,
    block_inputs: Iterable | None = None,
) -> np.ndarray:
    """Decoder maps float32 (C, H, W) of the image of ``emb`` (an
    :class:`~pathosam.embeddings.ImageEmbeddings`), decoded in batches of entries and their inner
    blocks pasted together; ``block_inputs``: the prepared input tensor of every entry in order,
    for decoders that read the image (``PathoSAM.needs_image``)."""
    from itertools import islice

    shape = tuple(emb.image_shape)
    tiles = emb.tiles if emb.tiles is not None else image_tiles(shape, None, None)
    block_inputs = iter(block_inputs) if block_inputs is not None else None
    out, start = None, 0
    for batch in batched(tiles, batch_size, progress and len(tiles) > 1, f"{what} maps", "it"):
        stop = start + len(batch)
        inputs = list(islice(block_inputs, len(batch))) if block_inputs is not None else None
        maps = model.decode(emb.features[start:stop], emb.input_sizes[start:stop], emb.original_sizes[start:stop],
                            what, bn_mode, inputs)
        for tile, m in zip(batch, maps):
            if out is None:
                out = np.zeros((m.shape[0], *shape), np.float32)
            paste_inner(out, tile, m)
        start = stop
    return out
