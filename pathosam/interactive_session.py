"""Click-by-click interactive segmentation of one image: :class:`InteractiveSession`.

The session keeps one image's embeddings (computed once, or taken from an
:class:`~pathosam.embedding_cache.EmbeddingCache`) and accumulates prompts with undo, so every
further click costs only the prompt encoder and mask decoder (:func:`pathosam.interactive.segment_prompt`).
Points are ``(x, y)``, boxes ``(x0, y0, x1, y1)``, in full-image pixels; masks are (H, W)
indexed [row, col].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from .interactive import PromptResult, as_points, segment_prompt, select_tile

if TYPE_CHECKING:  # pragma: no cover
    from .embedding_cache import EmbeddingCache
    from .embeddings import ImageEmbeddings
    from .image import Normalization
    from .predictor import PathoSAM

__all__ = ["InteractiveSession"]


@dataclass
class _State:
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    box: np.ndarray | None = None
    mask: np.ndarray | None = None
    result: PromptResult | None = None


class InteractiveSession:
    """Click-by-click segmentation of one object at a time on one image.

    The embeddings are computed once (or taken from ``embeddings`` / an :class:`EmbeddingCache`);
    every prompt change re-runs only the prompt encoder and mask decoder on all accumulated
    prompts. Points are ``(x, y)``, boxes ``(x0, y0, x1, y1)``, in full-image pixels; masks are
    (H, W) indexed [row, col].

    Parameters
    ----------
    model : PathoSAM
        The model.
    image : np.ndarray, optional
        The image (H, W[, C]); embedded with ``tile_shape``/``halo``/``normalization``.
    embeddings : ImageEmbeddings, optional
        Precomputed embeddings instead of ``image``.
    tile_shape, halo : tuple of int, optional
        Tiling (rows, cols) for embedding ``image``; None = untiled.
    normalization : {"none", "minmax"}
        Input normalisation for embedding ``image``.
    cache : EmbeddingCache, optional
        Take the embeddings (of ``model``) from (and leave them in) this cache.
    feed_logits : bool
        Pass the previous result's low-res logits as ``mask_input`` with the next prediction
        (SAM's iterative refinement; micro-sam's evaluation default is off). They are only
        fed when the prompts stay in the same tile; they replace a mask prompt's own logits.

    Examples
    --------
    >>> s = InteractiveSession(model, image)
    >>> s.add_point(120, 80)                 # best of 3 masks
    >>> s.add_point(131, 95, positive=False) # refine: costs only the mask decoder
    >>> s.undo(); mask = s.mask
    """

    def __init__(
        self,
        model: PathoSAM,
        image: np.ndarray | None = None,
        *,
        embeddings: ImageEmbeddings | None = None,
        tile_shape: tuple[int, int] | None = None,
        halo: tuple[int, int] | None = None,
        normalization: Normalization = "none",
        cache: EmbeddingCache | None = None,
        feed_logits: bool = False,
    ) -> None:
        if (image is None) == (embeddings is None):
            raise ValueError("give exactly one of image or embeddings")
        if embeddings is None:
            if cache is not None:
                embeddings = cache.get(image, tile_shape, halo, normalization, model=model)
            else:
                embeddings = model.embed(image, tile_shape=tile_shape, halo=halo, normalization=normalization,
                                         progress=False)
        self.model = model
        self.embeddings = embeddings
        self.feed_logits = feed_logits
        self._state = _State()
        self._history: list[_State] = []

    # -------------------------------------------------------------- state
    @property
    def points(self) -> np.ndarray:
        """(N, 2) accumulated points (x, y)."""
        return self._state.points.copy()

    @property
    def labels(self) -> np.ndarray:
        """(N,) their labels (1 object, 0 background)."""
        return self._state.labels.copy()

    @property
    def box(self) -> np.ndarray | None:
        return None if self._state.box is None else self._state.box.copy()

    @property
    def result(self) -> PromptResult | None:
        """The latest prediction (None before the first prompt or after ``reset``)."""
        return self._state.result

    @property
    def mask(self) -> np.ndarray | None:
        """(H, W) bool current mask, or None."""
        return None if self._state.result is None else self._state.result.mask

    # -------------------------------------------------------------- prompts
    def add_point(self, x: float, y: float, positive: bool = True) -> PromptResult:
        """Add one point (x, y) (object if ``positive``) and predict."""
        return self.add_points([(x, y)], [1 if positive else 0])

    def add_points(self, points: ArrayLike, labels: ArrayLike) -> PromptResult:
        """Add (N, 2) points (x, y) with (N,) labels at once (one prediction)."""
        pts, lab = as_points(points, labels)
        if pts is None:
            raise ValueError("no points given")
        s = self._state
        return self._apply(_State(np.concatenate([s.points, pts]), np.concatenate([s.labels, lab]), s.box, s.mask))

    def set_box(self, box: ArrayLike) -> PromptResult:
        """Set (replace) the box (x0, y0, x1, y1) and predict."""
        s = self._state
        b = np.asarray(box, dtype=np.float64).reshape(4)
        return self._apply(_State(s.points, s.labels, b, s.mask))

    def set_mask(self, mask: np.ndarray) -> PromptResult:
        """Set (replace) a binary mask prompt (H, W) and predict (box + logits from it)."""
        s = self._state
        return self._apply(_State(s.points, s.labels, s.box, np.asarray(mask).astype(bool)))

    def predict(self) -> PromptResult:
        """Predict again from the current prompts (e.g. after changing ``feed_logits``)."""
        if self._state.result is None:
            raise ValueError("no prompts yet")
        s = self._state
        return self._apply(_State(s.points, s.labels, s.box, s.mask), record=False)

    def undo(self) -> PromptResult | None:
        """Go back to the state before the last prompt change; returns its result."""
        if self._history:
            self._state = self._history.pop()
        return self._state.result

    def reset(self) -> None:
        """Forget all prompts, results and history (start a new object)."""
        self._state = _State()
        self._history.clear()

    def _apply(self, new: _State, record: bool = True) -> PromptResult:
        emb = self.embeddings
        pts = new.points if len(new.points) else None
        lab = new.labels if len(new.labels) else None
        prev = self._state.result
        mask_input, tile = None, None
        if self.feed_logits and prev is not None:
            tile = select_tile(emb, pts, new.box, new.mask)
            if tile == prev.tile:
                mask_input = prev.mask_input
        new.result = segment_prompt(
            self.model, emb, pts, lab, new.box, new.mask, mask_input, None,
            use_mask=mask_input is None, tile=tile if mask_input is not None else None,
        )
        if record:
            self._history.append(self._state)
        self._state = new
        return new.result
