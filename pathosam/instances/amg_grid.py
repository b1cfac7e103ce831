"""Where AMG (:mod:`pathosam.instances.amg`) prompts: the regular point grid of a crop and the
crops of an image (the whole image, or every tile's outer block)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from ..embeddings import ImageEmbeddings

__all__ = ["point_grid"]


def point_grid(points_per_side: int) -> np.ndarray:
    """Regular grid of ``n * n`` points at cell centres in [0, 1] x [0, 1].

    Parameters
    ----------
    points_per_side : int
        Points per side, ``n >= 1``.

    Returns
    -------
    numpy.ndarray
        float64 (n * n, 2) points (x, y) = ((i + 0.5) / n, (j + 0.5) / n), x varying fastest;
        computed with ``np.linspace`` exactly as segment-anything's ``build_point_grid``.
    """
    n = int(points_per_side)
    if n < 1:
        raise ValueError(f"points_per_side must be >= 1, got {points_per_side}")
    offset = 1 / (2 * n)
    side = np.linspace(offset, 1 - offset, n)
    xs = np.tile(side[None, :], (n, 1))
    ys = np.tile(side[:, None], (1, n))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def _crop_boxes(emb: "ImageEmbeddings") -> list[tuple[int, int, int, int]]:
    H, W = emb.image_shape
    if emb.tiles is None:
        return [(0, 0, int(W), int(H))]
    out = []
    for t in emb.tiles:
        (r0, c0), (r1, c1) = t.outer
        out.append((int(c0), int(r0), int(c1), int(r1)))
    return out
