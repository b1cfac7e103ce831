"""Prompt sampling for SAM training: the prompt schedule and the initial prompts of each object.

Conventions: masks and label images are indexed (row, col) = (y, x); **points are returned in
SAM's (x, y) order**, integer pixel coordinates of the input (label) image, not yet scaled to the
1024 frame (use :func:`pathosam.image.transform_coords` for that). Boxes are returned as
(x0, y0, x1, y1) with exclusive max, in pixels. Every random draw comes from the
``numpy.random.Generator`` passed in, so a seed reproduces the prompts (the reference draws from
numpy's global generator, so its exact values are not reproduced, only their distribution).

Training schedule (micro-sam ``SamTrainer``): even iterations prompt every sampled object with one
positive point uniformly inside it and multimask output; odd iterations with its bounding box,
each side pushed outward by U(0, 0.025) x side length, single-mask output. Between the 8
sub-iterations :func:`pathosam.prompt_sampling.sample_correction_points` adds one positive and one
negative point per object.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..prompt_sampling import bounding_boxes, sample_pixels

__all__ = [
    "BOX_DISTORTION_FACTOR",
    "DILATION_STRENGTH",
    "PromptChoice",
    "TrainingPrompts",
    "distort_boxes",
    "object_masks",
    "sample_object_ids",
    "sample_points",
    "sample_training_prompts",
    "training_prompt_choice",
    "validation_prompt_choice",
]

#: Reference default of ``box_distortion_factor`` in training.
BOX_DISTORTION_FACTOR = 0.025
#: Reference default of ``dilation_strength`` (safety border before negative points), pixels.
DILATION_STRENGTH = 10


@dataclass(frozen=True)
class PromptChoice:
    """Which prompts an iteration uses: numbers of positive/negative points, box, multimask output."""

    n_positive: int
    n_negative: int
    use_box: bool
    multimask: bool


def training_prompt_choice(iteration: int) -> PromptChoice:
    """Prompt type of a training iteration: even = 1 positive point + multimask; odd = box, single mask.

    Parameters
    ----------
    iteration : int
        The trainer's global iteration counter (0-based).

    Returns
    -------
    PromptChoice
    """
    if iteration % 2 == 0:
        return PromptChoice(1, 0, False, True)
    return PromptChoice(0, 0, True, False)


def validation_prompt_choice(iteration: int, rng: np.random.Generator) -> PromptChoice:
    """Prompt type of a validation iteration (cycle of 4), all single-mask except the point start.

    ``i % 4 == 0``: 1 positive point, multimask; ``1``: box; ``2``: 1-4 positive and 0-4 negative
    points, never (1, 0) (with one positive there are 1-4 negatives); ``3``: box + 1-4 positive and
    0-4 negative points.

    Parameters
    ----------
    iteration : int
        The validation batch counter (0-based).
    rng : numpy.random.Generator
        Source of the random point counts.

    Returns
    -------
    PromptChoice
    """
    k = iteration % 4
    if k == 0:
        return PromptChoice(1, 0, False, True)
    if k == 1:
        return PromptChoice(0, 0, True, False)
    n_pos = int(rng.integers(1, 5))
    if k == 2:
        n_neg = int(rng.integers(1, 5)) if n_pos == 1 else int(rng.integers(0, 5))
        return PromptChoice(n_pos, n_neg, False, False)
    return PromptChoice(n_pos, int(rng.integers(0, 5)), True, False)


def sample_object_ids(labels: np.ndarray, n_objects: int | None, rng: np.random.Generator) -> np.ndarray:
    """The objects prompted in one image: all ids > 0, or ``n_objects`` of them without replacement.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer instance labels (H, W).
    n_objects : int or None
        Maximal number of objects (reference: ``n_objects_per_batch``, 25-40); None = all.
    rng : numpy.random.Generator

    Returns
    -------
    numpy.ndarray
        int64 ids in increasing order. The trainer then truncates every image of the batch to the
        smallest count in the batch (keeping the first ids).
    """
    ids = np.unique(np.asarray(labels))
    ids = ids[ids > 0].astype(np.int64)
    if n_objects is None or n_objects >= ids.size:
        return ids
    return np.sort(rng.choice(ids, size=n_objects, replace=False))


def object_masks(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Binary masks (n_objects, H, W) of ``labels == id`` for each id (the one-hot training target)."""
    labels = np.asarray(labels)
    return np.stack([labels == i for i in ids]) if len(ids) else np.zeros((0,) + labels.shape, dtype=bool)


def distort_boxes(boxes_yxyx: np.ndarray, shape: tuple[int, int], factor: float,
                  rng: np.random.Generator) -> np.ndarray:
    """Push each side of each box outward by ``U(0, factor) * side length``, round, clip to the image.

    Parameters
    ----------
    boxes_yxyx : numpy.ndarray
        (n, 4) boxes (y0, x0, y1, x1), max exclusive, pixels.
    shape : tuple of int
        Image (H, W).
    factor : float
        Maximal relative extension per side (reference: 0.025).
    rng : numpy.random.Generator
        Draws per box in the order y0, y1, x0, x1.

    Returns
    -------
    numpy.ndarray
        int64 (n, 4) boxes (y0, x0, y1, x1); values rounded half-to-even like Python's ``round``.
    """
    out = np.zeros((len(boxes_yxyx), 4), dtype=np.int64)
    for k, (y0, x0, y1, x1) in enumerate(np.asarray(boxes_yxyx, dtype=np.float64)):
        ly, lx = y1 - y0, x1 - x0
        ny0 = round(max(0.0, y0 - rng.uniform(0, factor) * ly))
        ny1 = round(min(float(shape[0]), y1 + rng.uniform(0, factor) * ly))
        nx0 = round(max(0.0, x0 - rng.uniform(0, factor) * lx))
        nx1 = round(min(float(shape[1]), x1 + rng.uniform(0, factor) * lx))
        out[k] = ny0, nx0, ny1, nx1
    return out


def sample_points(mask: np.ndarray, box_yxyx: np.ndarray, n_positive: int, n_negative: int,
                  rng: np.random.Generator, dilation_strength: int = DILATION_STRENGTH
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Random positive / negative points for one object (micro-sam ``PointAndBoxPromptGenerator``, no centre).

    Positives: ``n_positive`` pixels drawn uniformly from the object (without replacement unless
    the object is smaller than ``n_positive``). Negatives: the object dilated ``dilation_strength``
    times with a 3x3 square, the bounding box enlarged by ``dilation_strength`` (clipped), negatives
    drawn without replacement from (enlarged box minus dilated object); if that region has too few
    pixels, the rest comes from anywhere outside the (undilated) object.

    Parameters
    ----------
    mask : numpy.ndarray
        bool (H, W) object mask, non-empty.
    box_yxyx : numpy.ndarray
        The object's undistorted bounding box (y0, x0, y1, x1), max exclusive.
    n_positive, n_negative : int
        Numbers of points.
    rng : numpy.random.Generator
    dilation_strength : int
        Safety border in pixels.

    Returns
    -------
    points_xy : numpy.ndarray
        int64 (n_positive + n_negative, 2) in (x, y) order, positives first.
    labels : numpy.ndarray
        int64 (n_positive + n_negative,), 1 = positive, 0 = negative.
    """
    mask = np.asarray(mask, dtype=bool)
    points = []
    if n_positive > 0:
        n_px = int(mask.sum())
        points.append(sample_pixels(mask, n_positive, n_positive > n_px, rng))
    n_neg_found = 0
    if n_negative > 0:
        ds = dilation_strength
        dilated = ndimage.binary_dilation(mask, np.ones((3, 3), bool), iterations=ds) if ds > 0 else mask
        region = np.zeros_like(mask)
        y0, x0, y1, x1 = (int(v) for v in box_yxyx)
        region[max(y0 - ds, 0):min(y1 + ds, mask.shape[0]), max(x0 - ds, 0):min(x1 + ds, mask.shape[1])] = True
        region ^= dilated  # |box - dilated|, as the reference (dilated lies inside the enlarged box)
        n_neg_found = min(n_negative, int(region.sum()))
        if n_neg_found:
            points.append(sample_pixels(region, n_neg_found, False, rng))
        if n_neg_found < n_negative:
            points.append(sample_pixels(~mask, n_negative - n_neg_found, False, rng))
    coords = np.concatenate(points) if points else np.zeros((0, 2), dtype=np.int64)
    labels = np.array([1] * n_positive + [0] * n_negative, dtype=np.int64)
    return coords[:, ::-1].astype(np.int64), labels


@dataclass
class TrainingPrompts:
    """Prompts for the objects of one training image (coordinates in the label image's pixels).

    Attributes
    ----------
    object_ids : numpy.ndarray
        int64 (n,) the prompted ids, increasing.
    masks : numpy.ndarray
        bool (n, H, W) the target masks (``labels == id``).
    points_xy : numpy.ndarray or None
        int64 (n, P, 2) in (x, y) order, or None without point prompts.
    point_labels : numpy.ndarray or None
        int64 (n, P), 1 positive / 0 negative.
    boxes_xyxy : numpy.ndarray or None
        int64 (n, 4) (x0, y0, x1, y1), max exclusive, or None without boxes.
    multimask : bool
        Whether the first sub-iteration asks for 3 masks.
    """

    object_ids: np.ndarray
    masks: np.ndarray
    points_xy: np.ndarray | None
    point_labels: np.ndarray | None
    boxes_xyxy: np.ndarray | None
    multimask: bool

    def truncate(self, n: int) -> "TrainingPrompts":
        """Keep the first ``n`` objects (the trainer's per-batch truncation to the smallest count)."""
        cut = (lambda a: None if a is None else a[:n])
        return TrainingPrompts(self.object_ids[:n], self.masks[:n], cut(self.points_xy), cut(self.point_labels),
                               cut(self.boxes_xyxy), self.multimask)


def sample_training_prompts(labels: np.ndarray, choice: PromptChoice, rng: np.random.Generator,
                            n_objects: int | None = None,
                            box_distortion_factor: float | None = BOX_DISTORTION_FACTOR,
                            dilation_strength: int = DILATION_STRENGTH) -> TrainingPrompts:
    """Initial prompts for one image (micro-sam ``ConvertToSamInputs``).

    Draw order: object subset, then box distortions (all boxes, even when boxes are not used, as
    the reference does), then per object positive and negative points.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer instance labels (H, W) (channel 0 of :func:`pathosam.training.targets.ais_targets`).
    choice : PromptChoice
        From :func:`training_prompt_choice` / :func:`validation_prompt_choice`.
    rng : numpy.random.Generator
    n_objects : int or None
        Objects per image (see :func:`sample_object_ids`).
    box_distortion_factor : float or None
        Relative box jitter (None = exact boxes).
    dilation_strength : int
        Safety border for negative points, pixels.

    Returns
    -------
    TrainingPrompts
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D (H, W), got shape {labels.shape}")
    ids = sample_object_ids(labels, n_objects, rng)
    masks = object_masks(labels, ids)
    boxes = bounding_boxes(masks)
    jittered = boxes
    if box_distortion_factor is not None:
        jittered = distort_boxes(boxes, labels.shape, box_distortion_factor, rng)
    points_xy = point_labels = None
    if choice.n_positive + choice.n_negative > 0:
        sampled = [sample_points(m, b, choice.n_positive, choice.n_negative, rng, dilation_strength)
                   for m, b in zip(masks, jittered)]
        n_pts = choice.n_positive + choice.n_negative
        points_xy = np.stack([p for p, _ in sampled]) if sampled else np.zeros((0, n_pts, 2), np.int64)
        point_labels = np.stack([lab for _, lab in sampled]) if sampled else np.zeros((0, n_pts), np.int64)
    boxes_xyxy = jittered[:, [1, 0, 3, 2]] if choice.use_box else None
    return TrainingPrompts(ids, masks, points_xy, point_labels, boxes_xyxy, choice.multimask)
