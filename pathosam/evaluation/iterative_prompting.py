"""Iterative-prompting evaluation of interactive segmentation (micro-sam's protocol).

What is reproduced (micro-sam ``run_inference_with_iterative_prompting`` + ``run_evaluation``,
as patho-sam evaluates its models):

* The ground truth is cast to uint32 and relabelled sequentially (ids 1..N, order kept); **every**
  object is prompted, ``batch_size`` objects per mask-decoder call, on one untiled embedding.
* Initial prompt per object (:func:`object_prompts`, :func:`initial_point_prompts`,
  :func:`initial_box_prompts`):

  - point start: one positive point at the object's centre = the object pixel farthest from the
    object's inner boundary (micro-sam ``get_centers_and_bounding_boxes`` mode ``"v"``), truncated
    to int, in (x, y) order; SAM's three masks are predicted and the one with the highest
    predicted IoU is kept;
  - box start: the object's bounding box ``(x0, y0, x1, y1)``, max exclusive, no jitter;
    single-mask output.

* ``n_iterations - 1`` corrections: per object one positive and one negative point drawn by
  :func:`pathosam.prompt_sampling.sample_correction_points` from the previous prediction are
  **appended** to all earlier points; the box (box start) is kept in every iteration; with
  ``use_masks`` the previous low-res logits (1, 256, 256) of the kept mask are the mask prompt.
  Corrections are single-mask.
* Every iteration's object masks are merged into one label image exactly like micro-sam 1.8.14's
  evaluation writer (``mask_data_to_segmentation`` with its defaults: larger masks win overlaps,
  4-connected components, no background removal) and scored against the connected-components
  relabelled GT (``skimage.measure.label``) with mean segmentation accuracy: mSA, SA50
  (IoU >= 0.5) and SA75 (IoU >= 0.75).

Coordinates: images, masks and label images are indexed ``[row, col]`` = ``[y, x]``; centres and
GT boxes from :func:`object_prompts` are (y, x) / (y0, x0, y1, x1) like ``regionprops``; SAM
prompts are (x, y) points and (x0, y0, x1, y1) boxes, in pixels of the full image.

Randomness: the correction points come from ``numpy.random.default_rng(seed)`` (the reference
draws from numpy's global generator, so its exact points and scores are not reproducible; the
protocol and its statistics are). Draws do not depend on ``batch_size``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from ..relabel import relabel_consecutive

if TYPE_CHECKING:  # pragma: no cover
    from ..embeddings import ImageEmbeddings
    from ..image import Normalization
    from ..predictor import PathoSAM

__all__ = [
    "InteractiveResult",
    "evaluate_interactive",
    "initial_box_prompts",
    "initial_point_prompts",
    "object_prompts",
    "run_interactive",
    "write_interactive_report",
]

Start = Literal["point", "box"]


# ---------------------------------------------------------------------------- initial prompts
def object_prompts(gt: np.ndarray, mode: Literal["v", "p"] = "v") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Object ids, centres and bounding boxes of a label image (micro-sam ``get_centers_and_bounding_boxes``).

    Centre (``mode="v"``, the evaluation default): the image is padded by one pixel of background
    (so objects touching the image border get a boundary there), the inner boundaries of all
    objects are found (``skimage.segmentation.find_boundaries(mode="inner")``: object pixels with a
    4-neighbour of another value), and one Euclidean distance transform to the nearest boundary
    pixel is computed; the centre is the object pixel of maximal distance, ties broken by the
    first pixel in row-major order. It always lies inside the object. ``mode="p"``: the
    centroid (float, may lie outside a concave object).

    Parameters
    ----------
    gt : numpy.ndarray
        (H, W) integer label image, 0 = background.
    mode : {"v", "p"}
        Centre definition, see above.

    Returns
    -------
    ids : numpy.ndarray
        int64 (N,) object ids, increasing.
    centers_yx : numpy.ndarray
        (N, 2) centres as (row, col) = (y, x); int64 for ``"v"``, float64 for ``"p"``.
    bboxes_yxyx : numpy.ndarray
        int64 (N, 4) bounding boxes (y0, x0, y1, x1), max exclusive (``regionprops``' bbox).
    """
    from scipy.ndimage import distance_transform_edt
    from skimage.measure import regionprops
    from skimage.segmentation import find_boundaries

    gt = np.asarray(gt)
    if gt.ndim != 2:
        raise ValueError(f"gt must be a 2-D (H, W) label image, got shape {gt.shape}")
    if gt.dtype == bool or gt.dtype.kind not in "iu":
        raise ValueError(f"gt must be an integer label image, got dtype {gt.dtype}")
    if mode not in ("v", "p"):
        raise ValueError(f"mode must be 'v' or 'p', got {mode!r}")
    props = regionprops(gt)
    ids = np.array([p.label for p in props], dtype=np.int64)
    bboxes = np.array([p.bbox for p in props], dtype=np.int64).reshape(-1, 4)
    if mode == "p":
        centers = np.array([p.centroid for p in props], dtype=np.float64).reshape(-1, 2)
        return ids, centers, bboxes
    padded = np.pad(gt, 1)
    dist = distance_transform_edt(~find_boundaries(padded, mode="inner"))[1:-1, 1:-1]
    centers = np.zeros((len(props), 2), dtype=np.int64)
    for k, p in enumerate(props):
        y0, x0, y1, x1 = p.bbox
        local = np.where(p.image, dist[y0:y1, x0:x1], -1.0)
        r, c = np.unravel_index(int(np.argmax(local)), local.shape)  # argmax: first maximum, row-major
        centers[k] = (y0 + r, x0 + c)
    return ids, centers, bboxes


def initial_point_prompts(centers_yx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Point-start prompts: one positive point per object at its centre.

    Parameters
    ----------
    centers_yx : numpy.ndarray
        (N, 2) centres (y, x) from :func:`object_prompts`; fractional centres are truncated to int.

    Returns
    -------
    points_xy : numpy.ndarray
        int64 (N, 1, 2) points in SAM's (x, y) order.
    labels : numpy.ndarray
        int64 (N, 1), all 1.
    """
    c = np.asarray(centers_yx).reshape(-1, 2)
    points = np.trunc(c).astype(np.int64)[:, None, ::-1]
    return np.ascontiguousarray(points), np.ones((len(c), 1), dtype=np.int64)


def initial_box_prompts(bboxes_yxyx: np.ndarray) -> np.ndarray:
    """Box-start prompts: the GT bounding boxes reordered to SAM's (x0, y0, x1, y1) (max exclusive).

    Parameters
    ----------
    bboxes_yxyx : numpy.ndarray
        (N, 4) boxes (y0, x0, y1, x1) from :func:`object_prompts`.

    Returns
    -------
    numpy.ndarray
        int64 (N, 4) boxes (x0, y0, x1, y1); no jitter or extension (evaluation).
    """
    b = np.asarray(bboxes_yxyx, dtype=np.int64).reshape(-1, 4)
    return np.ascontiguousarray(b[:, [1, 0, 3, 2]])


# ---------------------------------------------------------------------------- result
@dataclass
class InteractiveResult:
    """Scores (and optionally label images) of one image's iterative-prompting run.

    Attributes
    ----------
    start : {"point", "box"}
        Initial prompt type.
    object_ids : numpy.ndarray
        int64 (N,) prompted objects, ids of the sequentially relabelled GT.
    msa, sa50, sa75 : numpy.ndarray
        float64 (n_iterations,) per iteration (0 = initial prompt, k = after k corrections).
    accuracies : numpy.ndarray
        float64 (n_iterations, 10) segmentation accuracy at IoU 0.50, 0.55, ..., 0.95.
    n_points : numpy.ndarray
        int64 (n_iterations,) points per object in each iteration's prompt.
    labels : list of numpy.ndarray or None
        Per iteration the merged uint32 (H, W) label image (``keep_labels=True``), else None.
    points_xy : numpy.ndarray or None
        (N, P, 2) all points (x, y) of the last iteration's prompt (None without points).
    point_labels : numpy.ndarray or None
        int64 (N, P), 1 = positive, 0 = negative.
    boxes_xyxy : numpy.ndarray or None
        int64 (N, 4) boxes (x0, y0, x1, y1) (box start), else None.
    use_masks, seed : bool, int
        Settings of the run.
    gt : numpy.ndarray
        uint32 (H, W) the GT the scores refer to (connected components of the relabelled GT,
        restricted to ``object_ids`` when ``max_objects`` subsampled).
    """

    start: str
    object_ids: np.ndarray
    msa: np.ndarray
    sa50: np.ndarray
    sa75: np.ndarray
    accuracies: np.ndarray
    n_points: np.ndarray
    labels: list[np.ndarray] | None = None
    points_xy: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    boxes_xyxy: np.ndarray | None = None
    use_masks: bool = False
    seed: int = 0
    gt: np.ndarray | None = field(default=None, repr=False)

    @property
    def n_iterations(self) -> int:
        return len(self.msa)

    def rows(self) -> list[dict[str, float]]:
        """One dict per iteration: ``iteration``, ``mSA``, ``SA50``, ``SA75``."""
        return [{"iteration": i, "mSA": float(self.msa[i]), "SA50": float(self.sa50[i]), "SA75": float(self.sa75[i])}
                for i in range(self.n_iterations)]


# ---------------------------------------------------------------------------- protocol
#: uint32 ids mapped to 1..N in increasing order, 0 kept (``relabel_sequential``): the one helper.
_relabel_sequential = relabel_consecutive


def _predict_chunk(model, emb, points, point_labels, boxes, mask_input, multimask):
    """(B, C, H, W) masks, (B, C) ious, (B, C, 256, 256) logits (``mask_input_size``); batched when
    the model can."""
    if hasattr(model, "predict_batch"):
        return model.predict_batch(emb, points=points, point_labels=point_labels, boxes=boxes,
                                   mask_input=mask_input, multimask=multimask)
    outs = []
    for j in range(len(points if points is not None else boxes)):
        outs.append(model.predict(
            emb,
            points=None if points is None else points[j],
            point_labels=None if point_labels is None else point_labels[j],
            box=None if boxes is None else boxes[j],
            mask_input=None if mask_input is None else mask_input[j],
            multimask=multimask,
        ))
    return tuple(np.stack([o[i] for o in outs]) for i in range(3))


def _score(seg: np.ndarray, gt_eval: np.ndarray) -> np.ndarray:
    from .metrics import mean_segmentation_accuracy

    msa, accs = mean_segmentation_accuracy(seg, gt_eval, return_accuracies=True)  # SA50 = [0], SA75 = [5]
    accs = np.asarray(accs, dtype=np.float64)
    if accs.shape != (10,):
        raise RuntimeError(f"mean_segmentation_accuracy returned {accs.shape[0]} accuracies, expected 10")
    return np.concatenate([[float(msa)], accs])


def run_interactive(
    model: PathoSAM,
    image: np.ndarray | None,
    gt: np.ndarray,
    start: Start = "point",
    n_iterations: int = 8,
    use_masks: bool = False,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = False,
    *,
    embeddings: ImageEmbeddings | None = None,
    normalization: Normalization = "none",
    max_objects: int | None = None,
    keep_labels: bool = True,
) -> InteractiveResult:
    """Evaluate interactive segmentation of one image by iterative prompting (see the module docstring).

    Parameters
    ----------
    model : PathoSAM
        The model; needs ``embed`` (unless ``embeddings`` is given) and ``predict_batch`` (or
        ``predict``, used object by object).
    image : numpy.ndarray or None
        (H, W) or (H, W, C) image; embedded untiled. May be None when ``embeddings`` is given.
    gt : numpy.ndarray
        (H, W) integer ground-truth labels, 0 = background (relabelled sequentially here).
    start : {"point", "box"}
        Initial prompt: object centre point (multimask, best predicted IoU kept) or bounding box.
    n_iterations : int
        Predictions per object: the initial one and ``n_iterations - 1`` corrections (reference 8).
    use_masks : bool
        Feed the previous iteration's low-res logits as mask prompt (reference default False).
    seed : int
        Seed of the correction-point generator (and of the ``max_objects`` subset).
    batch_size : int
        Objects per mask-decoder call (reference 32); does not change the results beyond float
        rounding.
    progress : bool
        Show progress bars.
    embeddings : ImageEmbeddings, optional
        Precomputed **untiled** embeddings of ``image`` (then the image is not embedded again).
    normalization : {"none", "minmax"}
        Input normalisation for embedding (see :mod:`pathosam.image`).
    max_objects : int, optional
        Prompt only a random subset (``seed``) of this many objects and score against the GT
        restricted to them. **Not the reference protocol** (which prompts all objects); for
        quick checks.
    keep_labels : bool
        Keep every iteration's merged label image in the result (uint32 (H, W) each); False keeps
        only the scores.

    Notes
    -----
    Memory: the GT object masks and the current prediction are held as two bool (N, H, W) arrays
    (N prompted objects; the correction sampler draws for all objects at once, as the
    reference), plus (N, 1, 256, 256) float32 logits with ``use_masks``.

    Returns
    -------
    InteractiveResult
        Per-iteration mSA, SA50, SA75 (and label images).
    """
    from tqdm.auto import tqdm

    from ..instances.amg import masks_to_labels
    from ..prompt_sampling import sample_correction_points

    if start not in ("point", "box"):
        raise ValueError(f"start must be 'point' or 'box', got {start!r}")
    if n_iterations < 1:
        raise ValueError(f"n_iterations must be >= 1, got {n_iterations}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    gt = np.asarray(gt)
    if gt.ndim != 2 or gt.dtype == bool or gt.dtype.kind not in "iu":
        raise ValueError(f"gt must be a 2-D integer label image, got shape {gt.shape} dtype {gt.dtype}")
    if image is None and embeddings is None:
        raise ValueError("give the image or its embeddings")
    shape = tuple(gt.shape)
    if image is not None and tuple(np.asarray(image).shape[:2]) != shape:
        raise ValueError(f"image shape {np.asarray(image).shape[:2]} and gt shape {shape} differ")

    gt_seq = _relabel_sequential(gt.astype(np.uint32))
    ids, centers, bboxes = object_prompts(gt_seq)
    if ids.size == 0:
        raise ValueError("gt has no objects to prompt")
    rng = np.random.default_rng(seed)
    if max_objects is not None and max_objects < ids.size:
        if max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {max_objects}")
        keep = np.sort(np.random.default_rng([seed, 1]).choice(ids.size, max_objects, replace=False))
        ids, centers, bboxes = ids[keep], centers[keep], bboxes[keep]
        gt_seq = np.where(np.isin(gt_seq, ids), gt_seq, 0).astype(np.uint32)
    from skimage.measure import label

    gt_eval = label(gt_seq).astype(np.uint32)

    if embeddings is None:
        embeddings = model.embed(image, tile_shape=None, normalization=normalization, progress=progress)
    if getattr(embeddings, "tiled", False):
        raise ValueError("iterative-prompting evaluation runs on untiled embeddings")
    emb_shape = tuple(getattr(embeddings, "image_shape", shape))
    if emb_shape != shape:
        raise ValueError(f"embeddings are of an image of shape {emb_shape}, gt has shape {shape}")

    n = ids.size
    gt_masks = gt_seq[None] == ids.astype(np.uint32)[:, None, None]  # (N, H, W) bool
    if start == "point":
        points, point_labels = initial_point_prompts(centers)
        points = points.astype(np.float64)
        boxes = None
    else:
        points = point_labels = None
        boxes = initial_box_prompts(bboxes)
    logits = None  # (N, 1, 256, 256) of the kept masks, only with use_masks
    scores = np.zeros((n_iterations, 11))
    n_points = np.zeros(n_iterations, dtype=np.int64)
    labels_out: list[np.ndarray] | None = [] if keep_labels else None
    pred = np.zeros((n, *shape), dtype=bool)

    for it in tqdm(range(n_iterations), desc=f"iterative prompting ({start})", disable=not progress):
        if it > 0:
            new_pts, new_lab = sample_correction_points(pred, gt_masks, rng)
            new_pts = np.asarray(new_pts, dtype=np.float64)
            new_lab = np.asarray(new_lab, dtype=np.int64)
            points = new_pts if points is None else np.concatenate([points, new_pts], axis=1)
            point_labels = new_lab if point_labels is None else np.concatenate([point_labels, new_lab], axis=1)
        multimask = it == 0 and start == "point"
        new_logits = None  # (N, 1, 256, 256) (the model's mask_input_size), allocated on first use
        for s in range(0, n, batch_size):
            sl = slice(s, min(n, s + batch_size))
            masks, iou, low = _predict_chunk(
                model, embeddings,
                None if points is None else points[sl],
                None if point_labels is None else point_labels[sl],
                None if boxes is None else boxes[sl],
                None if logits is None else logits[sl],
                multimask,
            )
            best = np.argmax(iou, axis=1) if multimask else np.zeros(len(masks), dtype=np.int64)
            rows = np.arange(len(masks))
            pred[sl] = masks[rows, best]
            if use_masks:
                if new_logits is None:
                    new_logits = np.zeros((n, 1, *low.shape[-2:]), dtype=np.float32)
                new_logits[sl, 0] = low[rows, best]
        logits = new_logits
        seg = masks_to_labels(pred, shape, with_background=False, merge_exclusively=True)
        scores[it] = _score(seg, gt_eval)
        n_points[it] = 0 if points is None else points.shape[1]
        if labels_out is not None:
            labels_out.append(seg)

    return InteractiveResult(
        start=start,
        object_ids=ids,
        msa=scores[:, 0].copy(),
        sa50=scores[:, 1].copy(),
        sa75=scores[:, 6].copy(),
        accuracies=scores[:, 1:].copy(),
        n_points=n_points,
        labels=labels_out,
        points_xy=points,
        point_labels=point_labels,
        boxes_xyxy=boxes,
        use_masks=use_masks,
        seed=seed,
        gt=gt_eval,
    )


# ---------------------------------------------------------------------------- dataset and report
def evaluate_interactive(
    model: PathoSAM,
    dataset,
    start: Start = "point",
    n_iterations: int = 8,
    use_masks: bool = False,
    seed: int = 0,
    batch_size: int = 32,
    normalization: Normalization = "none",
    max_objects: int | None = None,
    progress: bool = True,
):
    """Run :func:`run_interactive` on every sample (``.name``, ``.image``, ``.labels``) of a
    dataset; returns (per-image DataFrame: name, iteration, mSA, SA50, SA75, n_objects; per-
    iteration mean over the images, as the reference's CSV)."""
    import pandas as pd
    from tqdm.auto import tqdm

    rows = []
    for sample in tqdm(dataset, desc=f"interactive ({start})", unit="image", disable=not progress):
        if not (np.asarray(sample.labels) > 0).any():
            continue  # the reference drops images without objects
        res = run_interactive(model, sample.image, sample.labels, start, n_iterations, use_masks, seed, batch_size,
                              normalization=normalization, max_objects=max_objects, keep_labels=False)
        rows += [{"name": sample.name, **r, "n_objects": len(res.object_ids)} for r in res.rows()]
    per_image = pd.DataFrame(rows, columns=["name", "iteration", "mSA", "SA50", "SA75", "n_objects"])
    means = per_image.groupby("iteration", as_index=False)[["mSA", "SA50", "SA75"]].mean()
    return per_image, means


def write_interactive_report(result: InteractiveResult, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write one run's scores as micro-sam's ``iterative_prompts_start_<start>.csv`` (iteration,
    mSA, SA50, SA75; 0 = initial prompt) and a PNG plot of them
    (:func:`pathosam.evaluation.report.write_iteration_report`)."""
    from .report import write_iteration_report as write

    title = (f"iterative prompting, {result.start} start{', with mask input' if result.use_masks else ''}"
             f" ({len(result.object_ids)} objects)")
    return write(result.rows(), out_dir, result.start, result.use_masks, title)
