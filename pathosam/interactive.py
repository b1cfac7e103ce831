"""Interactive segmentation from points, boxes and masks, on untiled and tiled embeddings.

Coordinates: prompts are SAM's, in pixels of the **full image** the embeddings were made of:
points ``(x, y)``, boxes ``(x0, y0, x1, y1)``; arrays (masks, images) are indexed ``[row, col]``.

:func:`segment_prompt` reproduces micro-sam's ``prompt_based_segmentation`` (v1.8.14):

* a single positive point and nothing else predicts SAM's three masks and keeps the one with the
  highest predicted IoU (``segment_from_points``), unless ``multimask`` says otherwise;
* a binary ``mask`` prompt becomes a box (its bounding box, exclusive max) and low-res logits
  (``segment_from_mask``: mask resized to 256 on its long side, ``> 0.5``, zero padded to
  256 x 256, ``logit(1 - 1e-3)`` inside, ``logit(1e-3)`` outside; 256 is the model's
  ``mask_input_size``, 4 x the embedding grid, e.g. 128 for a model of input size 512);
* on tiled embeddings a prompt goes to the single tile whose inner block contains the (rounded)
  mask centroid / box centre / mean point, is shifted into that tile's outer block (points
  outside it are dropped with a warning, the box is clipped), predicted there and pasted into a
  full-size zero mask.

Click-by-click sessions on one image are :class:`pathosam.interactive_session.InteractiveSession`;
embeddings kept between requests, :class:`pathosam.embedding_cache.EmbeddingCache`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike

from .image import preprocess_shape
from .tiling import Block, Tile, tile_slices

if TYPE_CHECKING:  # pragma: no cover
    from .embeddings import ImageEmbeddings
    from .predictor import PathoSAM

__all__ = [
    "PromptResult",
    "box_from_mask",
    "logits_from_mask",
    "segment_prompt",
    "select_tile",
]

#: Side of SAM's mask prompts / low-res logits at the 1024 input (``PathoSAM.mask_input_size``).
LOW_RES = 256
MASK_EPS = 1e-3


def _low_res(model) -> int:
    """Side of the model's mask prompts / low-res logits (256 for SAM)."""
    return int(getattr(model, "mask_input_size", (LOW_RES, LOW_RES))[0])


# ---------------------------------------------------------------------------- mask prompt helpers
def box_from_mask(mask: np.ndarray, box_extension: float = 0.0) -> np.ndarray:
    """Bounding box of a binary mask as SAM's ``(x0, y0, x1, y1)``, max exclusive (int64).

    As micro-sam's ``_compute_box_from_mask``: ``box_extension`` >= 1 enlarges each side by that
    many pixels, 0 < ``box_extension`` < 1 by that fraction of the box's height/width; the box is
    clipped to the mask's shape (H, W) and rounded (half to even).

    Parameters
    ----------
    mask : np.ndarray
        (H, W) array, indexed [row, col]; non-zero = object. Must not be empty.
    box_extension : float
        Enlargement, see above.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        raise ValueError("the mask is empty: no box can be derived from it")
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    if box_extension == 0:
        ey = ex = 0.0
    elif box_extension >= 1:
        ey = ex = float(box_extension)
    else:
        ey, ex = box_extension * (y1 - y0), box_extension * (x1 - x0)
    H, W = mask.shape
    box = np.array([max(x0 - ex, 0), max(y0 - ey, 0), min(x1 + ex, W), min(y1 + ey, H)], dtype=np.float64)
    return np.round(box).astype(np.int64)


def logits_from_mask(mask: np.ndarray, eps: float = MASK_EPS, size: int = LOW_RES) -> np.ndarray:
    """SAM mask prompt (1, 256, 256) float32 from a binary (H, W) mask, as micro-sam.

    ``size``: side of the model's mask prompts (``PathoSAM.mask_input_size``; 256 for SAM): the
    result is (1, size, size) and "256" below reads ``size``.

    Non-zero pixels are the object. The mask is resized so that its long side is 256 (bilinear with antialiasing, SAM's
    ``ResizeLongestSide.apply_image_torch``), thresholded at 0.5, zero padded bottom/right to
    256 x 256 (the padding is background) and mapped to ``logit(1 - eps)`` inside and
    ``logit(eps)`` outside. The mask must be in the pixels of the image (or tile) the embedding
    was computed from: the low-res grid is aligned with SAM's padded model input.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.shape[0] == 0 or mask.shape[1] == 0:
        raise ValueError(f"mask must be a non-empty 2-D (H, W) array, got shape {mask.shape}")
    binary = (mask != 0).astype(np.float32)
    if binary.shape != (size, size):
        shape = preprocess_shape(binary.shape[0], binary.shape[1], size)
        t = F.interpolate(torch.from_numpy(binary)[None, None], shape, mode="bilinear", align_corners=False,
                          antialias=True)
        small = t[0, 0].numpy()
        binary = np.zeros((size, size), dtype=np.float32)
        binary[: small.shape[0], : small.shape[1]] = small
    inside = np.log((1 - eps) / (1 - (1 - eps)))  # float64, then rounded once to float32
    outside = np.log(eps / (1 - eps))
    return np.where(binary > 0.5, inside, outside).astype(np.float32)[None]


# ---------------------------------------------------------------------------- tiles
def _tile_at(emb: ImageEmbeddings, row: int, col: int) -> Tile:
    """The tile whose inner block holds pixel (row, col) (clipped into the image)."""
    H, W = emb.image_shape
    row = min(max(int(row), 0), H - 1)
    col = min(max(int(col), 0), W - 1)
    th, tw = emb.tile_shape
    n_cols = -(-W // tw)
    tile = emb.tiles[(row // th) * n_cols + col // tw]
    (r0, c0), (r1, c1) = tile.inner
    assert r0 <= row < r1 and c0 <= col < c1, "tile grid is not row-major from (0, 0)"
    return tile


def _centre_rc(points_xy: np.ndarray | None, box_xyxy: np.ndarray | None, mask: np.ndarray | None):
    """Rounded (row, col) anchors of each prompt kind (None where absent), as the reference."""
    out = {}
    if mask is not None:
        rows, cols = np.nonzero(mask)
        out["mask"] = np.round([rows.mean(), cols.mean()]).astype(int)
    if box_xyxy is not None:
        x0, y0, x1, y1 = box_xyxy
        out["box"] = np.round([(y0 + y1) / 2, (x0 + x1) / 2]).astype(int)
    if points_xy is not None and len(points_xy):
        out["points"] = np.round(points_xy.mean(axis=0)[::-1]).astype(int)
    return out


def select_tile(
    emb: ImageEmbeddings,
    points: ArrayLike | None = None,
    box: ArrayLike | None = None,
    mask: np.ndarray | None = None,
) -> int | None:
    """Index of the tile a prompt is sent to (None for untiled embeddings).

    The anchor is the rounded (half to even) centroid of ``mask``, else the centre of ``box``,
    else the mean of ``points``; the tile is the one whose inner block contains the anchor.

    Parameters
    ----------
    emb : ImageEmbeddings
        Tiled or untiled embeddings of the full image.
    points : array-like, optional
        (N, 2) points ``(x, y)`` in full-image pixels.
    box : array-like, optional
        ``(x0, y0, x1, y1)`` in full-image pixels.
    mask : np.ndarray, optional
        (H, W) binary mask of the full image, indexed [row, col].
    """
    if emb.tiles is None:
        return None
    pts = None if points is None else np.asarray(points, dtype=np.float64).reshape(-1, 2)
    bx = None if box is None else np.asarray(box, dtype=np.float64).reshape(4)
    m = None if mask is None else np.asarray(mask).astype(bool, copy=False)
    anchors = _centre_rc(pts, bx, m)
    for kind in ("mask", "box", "points"):
        if kind in anchors:
            return _tile_at(emb, *anchors[kind]).index
    raise ValueError("no prompt to select a tile from: give points, a box or a mask")


# ---------------------------------------------------------------------------- result
@dataclass
class PromptResult:
    """Output of :func:`segment_prompt`.

    Attributes
    ----------
    masks : np.ndarray
        (C, H, W) bool masks of the full image, indexed [row, col]; C = 3 for multimask output,
        else 1 (also when the best of 3 was kept automatically).
    ious : np.ndarray
        (C,) float32 predicted IoU of each mask.
    logits : np.ndarray
        (C, 256, 256) float32 low-res logits (the model's ``mask_input_size``) in the model space
        of the tile (or image) that was used; feed ``result.mask_input`` back with ``tile=result.tile``.
    tile : int or None
        Index of the tile the prompt went to (None for untiled embeddings).
    block : Block
        ((r0, c0), (r1, c1)) region of the full image the masks were predicted in (the tile's
        outer block; the whole image when untiled). Pixels outside it are False.
    best_index : int or None
        Which of SAM's three outputs was kept when the single-point rule applied.
    """

    masks: np.ndarray
    ious: np.ndarray
    logits: np.ndarray
    tile: int | None
    block: Block
    best_index: int | None = None

    @property
    def best(self) -> int:
        """Index (into ``masks``) of the mask with the highest predicted IoU."""
        return int(np.argmax(self.ious))

    @property
    def mask(self) -> np.ndarray:
        """(H, W) bool: the mask with the highest predicted IoU."""
        return self.masks[self.best]

    @property
    def iou(self) -> float:
        return float(self.ious[self.best])

    @property
    def mask_input(self) -> np.ndarray:
        """(1, 256, 256) logits of the best mask, to pass as ``mask_input`` (with ``tile``)."""
        return self.logits[self.best][None]


# ---------------------------------------------------------------------------- prompting
def as_points(points: ArrayLike | None, point_labels: ArrayLike | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Checked ``(points (N, 2) float64 (x, y), labels (N,) int64)``; labels default to 1, and
    no (or zero) points give ``(None, None)``."""
    if points is None:
        if point_labels is not None:
            raise ValueError("point_labels given without points")
        return None, None
    pts = np.asarray(points, dtype=np.float64)
    if pts.size == 0:
        return None, None
    pts = pts.reshape(-1, 2)
    labels = np.ones(len(pts), dtype=np.int64) if point_labels is None else np.asarray(point_labels).reshape(-1)
    if len(labels) != len(pts):
        raise ValueError(f"{len(pts)} points but {len(labels)} point_labels")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"point_labels must be 1 (object) or 0 (background), got {np.unique(labels).tolist()}")
    if not np.isfinite(pts).all():
        raise ValueError("points contain NaN or infinite coordinates")
    return pts, labels.astype(np.int64)


def _as_mask_input(mask_input: ArrayLike | None, size: int = LOW_RES) -> np.ndarray | None:
    if mask_input is None:
        return None
    m = np.asarray(mask_input, dtype=np.float32)
    if m.size != size * size:
        raise ValueError(f"mask_input must be (1, {size}, {size}) low-res logits, got shape {m.shape}")
    return m.reshape(1, size, size)


def segment_prompt(
    model: PathoSAM,
    emb: ImageEmbeddings,
    points: ArrayLike | None = None,
    point_labels: ArrayLike | None = None,
    box: ArrayLike | None = None,
    mask: np.ndarray | None = None,
    mask_input: np.ndarray | None = None,
    multimask: bool | None = None,
    *,
    use_box: bool = True,
    use_mask: bool = True,
    box_extension: float = 0.0,
    tile: int | None = None,
) -> PromptResult:
    """Segment one object from prompts in full-image coordinates (untiled or tiled embeddings).

    Parameters
    ----------
    model : PathoSAM
        The model whose ``predict`` runs the prompt encoder and mask decoder.
    emb : ImageEmbeddings
        Embeddings of the image (``model.embed``), untiled or tiled.
    points : array-like, optional
        (N, 2) points ``(x, y)`` in pixels of the full image (float allowed).
    point_labels : array-like, optional
        (N,) 1 = object, 0 = background; all 1 when omitted.
    box : array-like, optional
        ``(x0, y0, x1, y1)`` in pixels of the full image (passed to SAM as given, not rounded).
    mask : np.ndarray, optional
        (H, W) binary mask of the full image, indexed [row, col] (micro-sam's
        ``segment_from_mask``): with ``use_box`` its bounding box (exclusive max, grown by
        ``box_extension``) becomes the box prompt unless ``box`` is given, with ``use_mask``
        it becomes the low-res mask prompt (:func:`logits_from_mask`).
    mask_input : np.ndarray, optional
        (1, 256, 256) low-res logits (the model's ``mask_input_size``) of a previous result
        (``result.mask_input``); on tiled
        embeddings they belong to ``result.tile``, so pass ``tile=result.tile`` as well.
    multimask : bool, optional
        None: the reference rule, i.e. a single positive point and no other prompt predicts
        three masks and keeps the one with the highest predicted IoU, everything else predicts
        one mask. True: return all three masks. False: SAM's single-mask output.
    use_box, use_mask, box_extension
        How ``mask`` is turned into prompts, see above.
    tile : int, optional
        Force this tile (tiled embeddings); by default it is chosen from the prompts
        (:func:`select_tile`).

    Returns
    -------
    PromptResult
        Full-size bool masks (C, H, W), predicted IoUs (C,), low-res logits (C, 256, 256), the
        tile used and the block predicted in.

    Notes
    -----
    On tiled embeddings the prompts go to one tile: the anchor is the mask centroid, else the
    box centre, else the mean point (:func:`select_tile`). Points outside that tile's outer
    block are dropped with a warning and the box is clipped to it. When the other prompts would
    select another tile the reference raises; here a warning is given and the anchor's tile is
    used. Objects larger than one outer block are cut at its border.
    """
    pts, labels = as_points(points, point_labels)
    bx = None if box is None else np.asarray(box, dtype=np.float64).reshape(-1)
    if bx is not None and (bx.shape != (4,) or not np.isfinite(bx).all()):
        raise ValueError(f"box must be 4 finite numbers (x0, y0, x1, y1), got {box!r}")
    low_res = _low_res(model)
    mi = _as_mask_input(mask_input, low_res)
    H, W = emb.image_shape
    m = None
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != (H, W):
            raise ValueError(f"mask has shape {m.shape}, the embedded image is {(H, W)} (rows, cols)")
        m = m.astype(bool, copy=False)
        if not m.any():
            raise ValueError("the mask prompt is empty")
        if use_mask and mi is not None:
            raise ValueError("give either a mask prompt with use_mask=True or mask_input, not both")
    if pts is None and bx is None and m is None and mi is None:
        raise ValueError("give at least one prompt: points, box, mask or mask_input")

    # ---- tile selection: shift everything into the chosen tile's outer block
    if emb.tiles is None:
        index, block = 0, ((0, 0), (H, W))
        if tile not in (None, 0):
            raise ValueError(f"tile={tile} given for untiled embeddings")
    else:
        anchors = _centre_rc(pts, bx, m)
        tiles = {k: _tile_at(emb, *rc).index for k, rc in anchors.items()}
        if tile is None:
            primary = next((k for k in ("mask", "box", "points") if k in tiles), None)
            if primary is None:
                raise ValueError("mask_input alone on tiled embeddings: pass tile=result.tile")
            tile = tiles[primary]
        elif not 0 <= tile < len(emb.tiles):
            raise ValueError(f"tile={tile} out of range: the embeddings have {len(emb.tiles)} tiles")
        others = {k: v for k, v in tiles.items() if v != tile}
        if others:
            warnings.warn(f"prompts fall into different tiles ({others}); using tile {tile}", stacklevel=2)
        index, block = tile, emb.tiles[tile].outer
    (o_r, o_c), (o_r1, o_c1) = block
    oh, ow = o_r1 - o_r, o_c1 - o_c
    if emb.tiles is not None:
        if pts is not None:
            local = pts - np.array([o_c, o_r], dtype=np.float64)
            keep = (local >= 0).all(axis=1) & (local[:, 0] < ow) & (local[:, 1] < oh)
            if not keep.all():
                warnings.warn(
                    f"{int((~keep).sum())} of {len(keep)} points lie outside tile {index}'s block {block} "
                    "and are dropped", stacklevel=2,
                )
            pts, labels = (local[keep], labels[keep]) if keep.any() else (None, None)
        if bx is not None:
            x0, y0, x1, y1 = bx
            bx = np.array([max(x0 - o_c, 0), max(y0 - o_r, 0), min(x1 - o_c, ow), min(y1 - o_r, oh)])
        if m is not None:
            m = m[tile_slices(block)]

    # ---- mask prompt -> box + logits (in the tile's pixels)
    if m is not None:
        if use_box and bx is None and m.any():
            bx = box_from_mask(m, box_extension).astype(np.float64)
        if use_mask:
            mi = logits_from_mask(m, size=low_res)
    if pts is None and bx is None and mi is None:
        raise ValueError("no prompt left to segment from (all points dropped, or mask used with "
                         "use_box=False and use_mask=False)")

    auto = bool(multimask is None and pts is not None and len(pts) == 1 and labels[0] == 1 and bx is None
                and mi is None)
    masks, ious, logits = model.predict(
        emb, points=pts, point_labels=labels, box=bx, mask_input=mi, multimask=bool(multimask) or auto, index=index
    )
    best_index = None
    if auto:
        best_index = int(np.argmax(ious))
        masks, ious, logits = masks[best_index : best_index + 1], ious[best_index : best_index + 1], \
            logits[best_index : best_index + 1]
    if emb.tiles is not None:
        full = np.zeros((masks.shape[0], H, W), dtype=bool)
        full[(slice(None), *tile_slices(block))] = masks
        masks = full
    return PromptResult(masks, ious, logits, None if emb.tiles is None else index, block, best_index)
