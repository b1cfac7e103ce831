"""Image embeddings: untiled or tiled (tile + halo), batched, optionally cached in zarr.

An untiled embedding is one (1, C, h, w) array; a tiled one holds (n_tiles, C, h, w), one per
outer block of :func:`pathosam.tiling.tile_grid`, each computed from that block alone (resized to
the model input size on its longest side, normalised per tile in ``minmax`` mode). (C, h, w) is
the model's embedding shape: (256, 64, 64) for SAM's 1024 input, (256, 32, 32) for a 512 input;
it and the input size are part of a cache's signature, so caches of different models never mix.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .image import Normalization
from .inference import TileInputs, encode_blocks
from .tiling import Tile, tile_grid

CACHE_FORMAT = "pathosam-embeddings-1"
#: Embedding shape (C, h, w) and input size of SAM (and of caches written before they were recorded).
SAM_FEATURE_SHAPE = (256, 64, 64)
SAM_IMG_SIZE = 1024


@dataclass
class ImageEmbeddings:
    """Embeddings of one image.

    ``features``: (n, C, h, w) float32 (numpy or zarr array), (n, 256, 64, 64) for SAM; n = 1
    when untiled.
    ``input_sizes`` / ``original_sizes``: per entry, (H, W) after resizing / of the block.
    ``tiles``: the tile grid (None when untiled). ``image_shape``: (H, W) of the full image.
    """

    features: object
    input_sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]
    image_shape: tuple[int, int]
    tile_shape: tuple[int, int] | None = None
    halo: tuple[int, int] | None = None
    tiles: list[Tile] | None = None
    normalization: str = "none"
    signature: dict = field(default_factory=dict)

    @property
    def tiled(self) -> bool:
        return self.tiles is not None

    def __len__(self) -> int:
        return len(self.input_sizes)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """(C, h, w) of one entry's embedding ((256, 64, 64) for SAM)."""
        return tuple(int(s) for s in self.features.shape[1:])

    def feature(self, i: int) -> np.ndarray:
        """(1, C, h, w) embedding of entry ``i`` ((1, 256, 64, 64) for SAM)."""
        return np.asarray(self.features[i : i + 1])


def image_signature(rgb: np.ndarray) -> str:
    """sha1 of the image bytes and shape (what a cache is keyed by)."""
    h = hashlib.sha1(np.ascontiguousarray(rgb).tobytes())
    h.update(repr(rgb.shape).encode())
    return h.hexdigest()


def _signature(image: np.ndarray, model_id: str, tile_shape, halo, normalization: str,
               img_size: int = SAM_IMG_SIZE, feature_shape=SAM_FEATURE_SHAPE) -> dict:
    return {
        "format": CACHE_FORMAT,
        "image": image_signature(image),
        "image_shape": list(image.shape),
        "model": model_id,
        "tile_shape": list(tile_shape) if tile_shape else None,
        "halo": list(halo) if halo else None,
        "normalization": normalization,
        "img_size": int(img_size),
        "feature_shape": [int(s) for s in feature_shape],
    }


def compute_embeddings(
    encode,
    image: np.ndarray,
    model_id: str,
    tile_shape: tuple[int, int] | None = None,
    halo: tuple[int, int] | None = None,
    batch_size: int = 1,
    normalization: Normalization = "none",
    cache: str | os.PathLike | None = None,
    progress: bool = True,
    *,
    img_size: int = SAM_IMG_SIZE,
    feature_shape: tuple[int, int, int] = SAM_FEATURE_SHAPE,
) -> ImageEmbeddings:
    """Embed ``image`` with ``encode`` ((B, 3, h, w) 0..255 list -> (B, *feature_shape)).

    ``img_size`` is the model input size (blocks are resized to it on their longest side) and
    ``feature_shape`` the (C, h, w) the encoder returns: SAM's 1024 and (256, 64, 64) by default.
    With ``cache``, a zarr store is read if its signature matches (else a clear error) and
    written (to a temporary name, then renamed) if absent.
    """
    if tile_shape is None and halo is not None:
        raise ValueError("halo given without tile_shape")
    if tile_shape is not None and halo is None:
        halo = (0, 0)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    inputs = TileInputs(image, normalization, img_size)  # the one conversion rule (pathosam.inference)
    image = inputs.image
    H, W = inputs.shape
    tiles = tile_grid((H, W), tile_shape, halo) if tile_shape is not None else None
    feature_shape = tuple(int(s) for s in feature_shape)
    sig = _signature(image, model_id, tile_shape, halo, normalization, img_size, feature_shape)
    if cache is not None and Path(cache).exists():
        return load_cache(cache, sig)

    blocks = [t.outer for t in tiles] if tiles else [((0, 0), (H, W))]
    desc = "embedding tiles" if tiles else "embedding"
    # With a cache, batches stream straight into the zarr store (memory: one batch), which is
    # written under a temporary name and renamed into place only when complete; without one,
    # features are held in memory.
    if cache is None:
        features = np.empty((len(blocks), *feature_shape), dtype=np.float32)
        input_sizes, original_sizes = encode_blocks(encode, inputs, blocks, features, batch_size, progress, desc)
        return ImageEmbeddings(features, input_sizes, original_sizes, (H, W), tile_shape and tuple(tile_shape),
                               halo and tuple(halo), tiles, normalization, sig)
    from .io.atomic import atomic_write

    with atomic_write(cache) as tmp:
        store = _new_store(tmp, len(blocks), feature_shape)
        input_sizes, original_sizes = encode_blocks(encode, inputs, blocks, store["features"], batch_size, progress,
                                                    desc)
        store.attrs["signature"] = sig
        store.attrs["input_sizes"] = [list(x) for x in input_sizes]
        store.attrs["original_sizes"] = [list(x) for x in original_sizes]
    return load_cache(cache, sig)


def iter_block_inputs(image: np.ndarray, emb: ImageEmbeddings, img_size: int = SAM_IMG_SIZE):
    """Yield the prepared model input (:func:`~pathosam.image.prepare_input` tensor) of every entry
    of ``emb`` in order, rebuilt from the ``image`` it was computed from by the same rule
    (:class:`pathosam.inference.TileInputs`); decoders that read the image need them besides the
    embeddings. One tile in memory at a time."""
    image = np.asarray(image)
    if tuple(image.shape[:2]) != tuple(emb.image_shape):
        raise ValueError(f"image of shape {image.shape[:2]} is not the {tuple(emb.image_shape)} image of these embeddings")
    inputs = TileInputs(image, emb.normalization, img_size)
    for i in range(len(emb)):
        yield inputs.prepared(emb.tiles[i].outer if emb.tiles else None)[0]


def _new_store(path: str | os.PathLike, n: int, feature_shape=SAM_FEATURE_SHAPE):
    """A fresh zarr group at ``path`` with an (n, *feature_shape) float32 array."""
    import zarr

    feature_shape = tuple(int(s) for s in feature_shape)
    root = zarr.open_group(str(path), mode="w")
    root.create_array("features", shape=(n, *feature_shape), chunks=(1, *feature_shape), dtype="float32")
    return root


def load_cache(path: str | os.PathLike, expected: dict) -> ImageEmbeddings:
    """Open a zarr embedding cache, refusing one made for another image, model or tiling."""
    import zarr

    try:
        root = zarr.open_group(str(path), mode="r")
        sig = dict(root.attrs["signature"])
        stored_shape = [int(s) for s in root["features"].shape[1:]]
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"{path}: not a pathosam embedding cache ({err})") from None
    # caches written before the input size / embedding shape were recorded are SAM's (1024);
    # the shape of the stored array is what counts in any case
    sig.setdefault("img_size", SAM_IMG_SIZE)
    sig["feature_shape"] = stored_shape
    if sig != expected:
        diff = [k for k in expected if sig.get(k) != expected[k]]
        raise ValueError(
            f"{path}: this embedding cache was made for a different {', '.join(diff)} "
            f"(cache: {json.dumps({k: sig.get(k) for k in diff})}); delete it or choose another path"
        )
    tile_shape = tuple(sig["tile_shape"]) if sig["tile_shape"] else None
    halo = tuple(sig["halo"]) if sig["halo"] else None
    H, W = sig["image_shape"][:2]
    return ImageEmbeddings(
        root["features"],
        [tuple(s) for s in root.attrs["input_sizes"]],
        [tuple(s) for s in root.attrs["original_sizes"]],
        (H, W),
        tile_shape,
        halo,
        tile_grid((H, W), tile_shape, halo) if tile_shape else None,
        sig["normalization"],
        sig,
    )

