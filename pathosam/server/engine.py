"""Inference behind the endpoints: loaded models, the embedding cache, prompts and automask.

One :class:`Engine` per server process. All model work (loading, embedding, decoding) runs under
one :class:`~pathosam.server.jobs.ModelLock`: prompts go before waiting automasks, and a running
automask hands the lock to waiting prompts between its chunks (tiles or point batches) and stops
at its time limit or when its client is gone (see :mod:`pathosam.server.jobs`). ``progress/``,
``weights/`` and ``weights/cancel/`` never wait for it. Nothing of a request survives it except
two bounded LRU caches:

* models: up to ``max_loaded_models`` :class:`~pathosam.PathoSAM` (default 1, i.e. one model
  in memory; switching reloads from disk, as samapi does);
* image embeddings: an :class:`~pathosam.embedding_cache.EmbeddingCache` of up to
  ``embedding_cache`` untiled embeddings keyed by (SHA-256 of the ``b64img`` string, the model's
  ``model_id``), each ~4 MiB; samapi keeps only the last image string of each worker.

Prompt coordinates are pixels of the sent image: points (x, y), boxes (x0, y0, x1, y1),
x = column, y = row.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..embedding_cache import EmbeddingCache
from .errors import RequestError
from .geometry import mask_features
from .images import decode_image, image_key
from .jobs import Job, ModelLock
from .weights import ModelSource, WeightsStore

__all__ = ["Engine", "Prompt", "parse_prompt"]

log = logging.getLogger("pathosam.server")
#: Most points in one prompt (SAM's prompt encoder memory grows with them; QuPath sends a few).
MAX_POINTS = 1024


@dataclass(frozen=True)
class Prompt:
    """A validated prompt: ``points`` (N, 2) float (x, y) or None, ``labels`` (N,) int or None,
    ``box`` (x0, y0, x1, y1) float or None, in pixels of the sent image."""

    points: np.ndarray | None
    labels: np.ndarray | None
    box: tuple[float, float, float, float] | None


def parse_prompt(bbox, point_coords, point_labels) -> Prompt:
    """Check the prompt fields of ``POST /sam/`` without the image (400 on any problem).

    An empty ``bbox`` / ``point_coords`` list counts as absent; ``point_labels`` must have one
    entry per point, each 1 (object) or 0 (background), at most :data:`MAX_POINTS` points;
    ``bbox`` is [x0, y0, x1, y1] with x0 <= x1 and y0 <= y1.
    """
    box = None
    if bbox:
        if len(bbox) != 4:
            raise RequestError(400, f"bbox must be [x0, y0, x1, y1], got {len(bbox)} numbers")
        x0, y0, x1, y1 = (float(v) for v in bbox)
        if x1 < x0 or y1 < y0:
            raise RequestError(400, f"bbox {list(bbox)} must be [x0, y0, x1, y1] with x0 <= x1 and y0 <= y1")
        box = (x0, y0, x1, y1)
    points = labels = None
    if point_coords and len(point_coords) > MAX_POINTS:
        raise RequestError(400, f"{len(point_coords)} points; at most {MAX_POINTS} per prompt")
    if point_coords:
        if point_labels is None:
            raise RequestError(400, "point_coords given without point_labels")
        if len(point_labels) != len(point_coords):
            raise RequestError(400, f"{len(point_coords)} point_coords but {len(point_labels)} point_labels")
        labels = np.asarray(point_labels, dtype=np.int64)
        if not np.isin(labels, (0, 1)).all():
            raise RequestError(400, "point_labels must be 1 (object) or 0 (background)")
        points = np.asarray(point_coords, dtype=np.float64).reshape(-1, 2)
    elif point_labels:
        raise RequestError(400, "point_labels given without point_coords")
    if box is None and points is None:
        raise RequestError(400, "empty prompt: give a bbox and/or point_coords")
    return Prompt(points, labels, box)


def fit_prompt(prompt: Prompt, shape: tuple[int, int]) -> Prompt:
    """Check ``prompt`` against an (H, W) image: points must lie in it, a box must overlap it
    (it is clipped to [0, W] x [0, H]); 400 otherwise."""
    H, W = shape
    if prompt.points is not None:
        x, y = prompt.points[:, 0], prompt.points[:, 1]
        bad = (x < 0) | (x >= W) | (y < 0) | (y >= H)
        if bad.any():
            p = prompt.points[int(np.argmax(bad))]
            raise RequestError(400, f"point [{p[0]:g}, {p[1]:g}] is outside the {W}x{H} image")
    box = prompt.box
    if box is not None:
        x0, y0, x1, y1 = box
        if x0 >= W or y0 >= H or x1 <= 0 or y1 <= 0:
            raise RequestError(400, f"bbox [{x0:g}, {y0:g}, {x1:g}, {y1:g}] is outside the {W}x{H} image")
        box = (max(x0, 0.0), max(y0, 0.0), min(x1, float(W)), min(y1, float(H)))
    return Prompt(prompt.points, prompt.labels, box)


class Engine:
    """Models, embedding cache and inference of one server process.

    Parameters
    ----------
    store : WeightsStore
        Resolves weights to files.
    device : str
        Torch device for :func:`pathosam.load_model`.
    embedding_cache : int
        Embeddings kept (LRU; 0: none).
    max_loaded_models : int
        Models kept in memory (LRU).
    max_image_pixels : int
        Largest decoded image.
    precision : str
        Arithmetic of the loaded models (:mod:`pathosam.precision`).
    """

    def __init__(self, store: WeightsStore, device: str = "auto", embedding_cache: int = 4,
                 max_loaded_models: int = 1, max_image_pixels: int = 4096 * 4096, precision: str = "fp32") -> None:
        self.store = store
        self.device = device
        self.precision = precision
        self.embedding_cache = max(0, int(embedding_cache))
        self.max_loaded_models = max(1, int(max_loaded_models))
        self.max_image_pixels = int(max_image_pixels)
        self.lock = ModelLock()
        self._models: OrderedDict[str, object] = OrderedDict()
        #: untiled embeddings of all models, keyed by (SHA-256 of ``b64img``, ``model_id``); None: no caching
        self.embeddings = EmbeddingCache(max_entries=self.embedding_cache) if self.embedding_cache else None
        self.stats = {"requests": 0, "embedding_hits": 0, "embeddings": 0, "model_loads": 0, "chunks": 0}

    # ------------------------------------------------------------------ models
    def model(self, source: ModelSource):
        """The loaded model of ``source`` (call with :attr:`lock` held)."""
        m = self._models.get(source.key)
        if m is not None:
            self._models.move_to_end(source.key)
            return m
        from ..predictor import load_model

        sam, decoder = self.store.local_files(source)
        while len(self._models) >= self.max_loaded_models:
            self._models.popitem(last=False)  # its cached embeddings stay valid (keyed by model)
        log.info("loading %s%s", sam, f" + decoder {decoder}" if decoder else "")
        try:
            # a registered model's file brings the registry's recommended AIS parameters along
            # (recognised by its hash in load_model: registry.entry_of_file)
            m = load_model(sam, decoder=decoder, device=self.device, progress=False, precision=self.precision)
        except (ValueError, OSError, RuntimeError) as err:  # CheckpointError is a ValueError
            what = str(err) if str(sam) in str(err) else f"{sam}: {err}"
            raise RequestError(503, f"could not load the weights {what}") from None
        self._models[source.key] = m
        self.stats["model_loads"] += 1
        return m

    def embedding(self, source: ModelSource, b64img: str, model=None):
        """``(model, ImageEmbeddings)`` of the image (untiled), from the cache when possible
        (call with :attr:`lock` held); the image is decoded only when it must be embedded."""
        model = model or self.model(source)

        def decoded():
            return decode_image(b64img, self.max_image_pixels)

        cache, image_hash = self.embeddings, image_key(b64img)
        emb = None if cache is None else cache.peek(cache.key(image_hash=image_hash, model=model))
        if emb is not None:
            self.stats["embedding_hits"] += 1
            return model, emb
        if cache is None:  # --embedding-cache 0
            emb = model.embed(decoded(), progress=False)
        else:
            emb = cache.get(decoded, image_hash=image_hash, model=model)
        self.stats["embeddings"] += 1
        return model, emb

    # ------------------------------------------------------------------ endpoints
    def prompt(self, source: ModelSource, b64img: str, prompt: Prompt, multimask: bool, sam_model: str,
               job: Job | None = None) -> list[dict]:
        """Features of ``POST /sam/``: 1 mask, or 3 with ``multimask``, in SAM's order (the lock is
        taken before any waiting automask)."""
        with self.lock.hold(job, priority=True):
            self.stats["requests"] += 1
            model, emb = self.embedding(source, b64img)
            p = fit_prompt(prompt, emb.image_shape)
            masks, ious, _ = model.predict(emb, points=p.points, point_labels=p.labels, box=p.box,
                                           multimask=multimask)
        return mask_features(masks, ious, sam_model)

    def automask(self, source: ModelSource, b64img: str, run: Callable, job: Job | None = None) -> list[dict]:
        """Features of ``POST /sam/automask/``: ``run(engine, model, source, b64img, job)`` does the
        work under the lock, calling ``job.checkpoint`` between chunks (see
        :mod:`pathosam.server.automask`)."""
        job = job or Job("automask")
        with self.lock.hold(job):
            self.stats["requests"] += 1
            model = self.model(source)
            job.check()
            try:
                return run(self, model, source, b64img, job)
            except RequestError as err:
                if err.status in (499, 503):
                    log.info("automask stopped after %d chunks: %s", job.chunks, err.detail)
                raise
