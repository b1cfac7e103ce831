"""In-memory LRU cache of image embeddings, shared by interactive sessions and the SAM-API server.

:class:`EmbeddingCache` keys an embedding by the image (a content hash, or a caller's own
``image_hash`` such as the server's SHA-256 of the base64 payload), the model's ``model_id``
(one cache can hold embeddings of several models), the tiling and the normalisation. It is
thread-safe and computes each missing key once, however many threads ask for it at a time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Hashable, Union

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .embeddings import ImageEmbeddings
    from .image import Normalization
    from .predictor import PathoSAM

__all__ = ["EmbeddingCache", "hash_image"]

#: An image (H, W[, C]) or a function returning it, called only when the embedding must be computed.
ImageSource = Union[np.ndarray, Callable[[], np.ndarray]]


def hash_image(image: np.ndarray) -> str:
    """128-bit xxh3 hex digest of an image's bytes, shape and dtype (the cache's image key)."""
    import xxhash

    h = xxhash.xxh3_128()
    h.update(repr((image.shape, image.dtype.str)).encode())
    h.update(np.ascontiguousarray(image).data)
    return h.hexdigest()


class EmbeddingCache:
    """Least-recently-used cache of image embeddings in memory (thread-safe).

    Keyed by the image content (a 128-bit xxh3 hash of its bytes, shape and dtype, or the
    caller's ``image_hash``), the model id, the tiling (``tile_shape``, ``halo``, rows/cols) and
    the normalisation. Concurrent requests for the same key compute the embedding once.

    Parameters
    ----------
    model : PathoSAM, optional
        The default model, whose ``embed`` computes missing entries; :meth:`get` and :meth:`key`
        also take a ``model`` (one cache holds the embeddings of several models, keyed by ``model_id``).
    max_entries : int
        How many embeddings are kept (the least recently used is dropped first).
    progress : bool
        Show the embedding progress bar for misses.

    Examples
    --------
    >>> cache = EmbeddingCache(model, max_entries=4)
    >>> emb = cache.get(image, tile_shape=(384, 384), halo=(64, 64))   # computed
    >>> emb = cache.get(image, tile_shape=(384, 384), halo=(64, 64))   # from memory
    >>> emb = cache.get(lambda: decode(payload), image_hash=sha256(payload), model=other)  # decoded on a miss
    >>> cache.peek(cache.key(image_hash=sha256(payload), model=other)) is emb           # no computing
    """

    def __init__(self, model: PathoSAM | None = None, max_entries: int = 4, progress: bool = False) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.model = model
        self.max_entries = int(max_entries)
        self.progress = progress
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Hashable, ImageEmbeddings] = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict[Hashable, threading.Lock] = {}

    def _model(self, model: PathoSAM | None) -> PathoSAM:
        model = self.model if model is None else model
        if model is None:
            raise ValueError("no model: give model= (this cache has no default model)")
        return model

    def key(self, image: ImageSource | None = None, tile_shape: tuple[int, int] | None = None,
            halo: tuple[int, int] | None = None, normalization: Normalization = "none",
            image_hash: str | None = None, *, model: PathoSAM | None = None) -> tuple:
        """The cache key of an image (or of its precomputed ``image_hash``), model and settings."""
        if image_hash is None:
            if image is None:
                raise ValueError("give image or image_hash")
            image_hash = hash_image(np.asarray(image() if callable(image) else image))
        if tile_shape is None:
            if halo is not None:
                raise ValueError("halo given without tile_shape")
            tiling = None
        else:
            tiling = (tuple(int(v) for v in tile_shape), tuple(int(v) for v in (halo or (0, 0))))
        return (image_hash, getattr(self._model(model), "model_id", None), tiling, normalization)

    def get(
        self,
        image: ImageSource,
        tile_shape: tuple[int, int] | None = None,
        halo: tuple[int, int] | None = None,
        normalization: Normalization = "none",
        image_hash: str | None = None,
        *,
        model: PathoSAM | None = None,
    ) -> ImageEmbeddings:
        """Embeddings of ``image`` (H, W[, C], indexed [row, col]) by ``model``, computed on a miss.

        ``tile_shape`` / ``halo`` are (rows, cols) as in ``model.embed``; ``image_hash`` skips
        hashing when the caller already identifies the image (it must change with the pixels);
        ``image`` may then be a function returning the image, called only on a miss.
        """
        model = self._model(model)
        if callable(image) and image_hash is None:
            image = image()
        key = self.key(image, tile_shape, halo, normalization, image_hash, model=model)
        with self._lock:
            hit = self._lookup(key)
            if hit is not None:
                return hit
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        try:
            with key_lock:
                with self._lock:
                    hit = self._lookup(key)
                    if hit is not None:
                        return hit
                pixels = np.asarray(image() if callable(image) else image)
                emb = model.embed(pixels, tile_shape=tile_shape, halo=halo, normalization=normalization,
                                  progress=self.progress)
                with self._lock:
                    self.misses += 1
                    self._insert(key, emb)
                return emb
        finally:
            with self._lock:
                if self._key_locks.get(key) is key_lock:
                    del self._key_locks[key]

    def peek(self, key: Hashable) -> ImageEmbeddings | None:
        """The embeddings cached under ``key`` (:meth:`key`), or None; computes nothing. A hit
        is counted and makes the entry the most recently used."""
        with self._lock:
            return self._lookup(key)

    def put(self, key: Hashable, emb: ImageEmbeddings) -> None:
        """Keep embeddings computed elsewhere under ``key`` (:meth:`key` of their image, model,
        tiling and normalisation), evicting the least recently used beyond ``max_entries``."""
        with self._lock:
            self._insert(key, emb)

    def _lookup(self, key) -> ImageEmbeddings | None:
        emb = self._entries.get(key)
        if emb is not None:
            self._entries.move_to_end(key)
            self.hits += 1
        return emb

    def _insert(self, key, emb: ImageEmbeddings) -> None:
        self._entries[key] = emb
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def keys(self) -> list[Hashable]:
        """Keys from least to most recently used."""
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
