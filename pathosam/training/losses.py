"""Training losses of the reference (micro-sam ``train_sam`` / patho-sam semantic training).

All functions are pure torch functions of their inputs (no module state) and differentiable in
the prediction arguments unless stated otherwise.

Dice (torch_em ``DiceLoss``), for a prediction ``x`` and target ``y`` of shape (N, C, *spatial)::

    dice_c = 2 * sum(x_c * y_c) / max(sum(x_c ** 2) + sum(y_c ** 2), eps)     eps = 1e-7
    loss_c = 1 - dice_c

where the sums run over the batch and all spatial positions of channel ``c`` (squared terms in
the denominator, ``eps`` as a lower clamp of the denominator, not added). The channel losses are
**summed** by default (torch_em's default ``reduce_channel="sum"``).
"""

from __future__ import annotations

from typing import Literal, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DICE_EPS",
    "IOU_EPS",
    "DistanceLossParts",
    "SamLoss",
    "dice_loss",
    "dice_based_distance_loss",
    "mask_iou",
    "sam_batch_loss",
    "sam_loss",
    "semantic_class_weights",
    "semantic_dice_loss",
    "semantic_loss",
    "weighted_cross_entropy",
]

DICE_EPS = 1e-7
IOU_EPS = 1e-7

Reduction = Literal["sum", "mean", "max", "min"] | None


def dice_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = DICE_EPS,
              reduce_channel: Reduction = "sum") -> torch.Tensor:
    """Channel-wise soft dice loss, as torch_em ``DiceLoss``.

    Parameters
    ----------
    pred : torch.Tensor
        Predictions in [0, 1] (probabilities, not logits), shape (N, C, *spatial).
    target : torch.Tensor
        Targets of the same shape (binary masks or values in [0, 1]).
    eps : float
        Lower clamp of each channel's denominator.
    reduce_channel : {"sum", "mean", "max", "min", None}
        How the C per-channel losses are combined; ``None`` returns them, shape (C,).

    Returns
    -------
    torch.Tensor
        ``1 - 2 * sum(x*y) / max(sum(x^2) + sum(y^2), eps)`` per channel, sums over the batch axis
        and all spatial axes, reduced over channels as requested.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    if pred.dim() < 2:
        raise ValueError(f"expected at least 2 dimensions (N, C, ...), got shape {tuple(pred.shape)}")
    target = target.to(pred.dtype)
    c = pred.shape[1]
    x = pred.transpose(0, 1).reshape(c, -1)
    y = target.transpose(0, 1).reshape(c, -1)
    numerator = (x * y).sum(-1)
    denominator = (x * x).sum(-1) + (y * y).sum(-1)
    per_channel = 1.0 - 2.0 * (numerator / denominator.clamp(min=eps))
    if reduce_channel is None:
        return per_channel
    if reduce_channel == "sum":
        return per_channel.sum()
    if reduce_channel == "mean":
        return per_channel.mean()
    if reduce_channel == "max":
        return per_channel.max()
    if reduce_channel == "min":
        return per_channel.min()
    raise ValueError(f"unsupported reduce_channel {reduce_channel!r}")


# --------------------------------------------------------------------------------------------
# SAM (interactive branch)
# --------------------------------------------------------------------------------------------

class SamLoss(NamedTuple):
    """Loss of one sub-iteration: ``total = mask_loss + iou_loss`` (0-d tensors)."""

    mask_loss: torch.Tensor
    iou_loss: torch.Tensor
    total: torch.Tensor


def mask_iou(probs: torch.Tensor, targets: torch.Tensor, threshold: float = 0.5,
             eps: float = IOU_EPS) -> torch.Tensor:
    """IoU of binarised predicted masks with their targets (no gradient).

    Parameters
    ----------
    probs : torch.Tensor
        Mask probabilities, shape (n_objects, n_masks, H, W).
    targets : torch.Tensor
        Binary target masks, shape (n_objects, 1, H, W) or (n_objects, H, W).
    threshold : float
        A predicted pixel is foreground where ``probs > threshold``.
    eps : float
        Added to the union.

    Returns
    -------
    torch.Tensor
        float (n_objects, n_masks): ``|P & G| / (|P | G| + eps)``.
    """
    with torch.no_grad():
        t = _targets_4d(targets, probs).bool()
        p = probs > threshold
        overlap = (p & t).sum(dim=(-2, -1))
        union = (p | t).sum(dim=(-2, -1))
        return overlap.to(probs.dtype) / (union.to(probs.dtype) + eps)


def _targets_4d(targets: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    if targets.dim() == 3:
        targets = targets[:, None]
    if targets.dim() != 4 or targets.shape[1] != 1 or targets.shape[0] != masks.shape[0] \
            or targets.shape[-2:] != masks.shape[-2:]:
        raise ValueError(f"targets must have shape (n_objects, 1, H, W) matching masks {tuple(masks.shape)}, "
                         f"got {tuple(targets.shape)}")
    return targets


def sam_loss(masks: torch.Tensor, targets: torch.Tensor, iou_predictions: torch.Tensor,
             masks_are_logits: bool = True, eps: float = DICE_EPS) -> SamLoss:
    """Mask (dice) + IoU-regression loss of SAM for the objects of one image.

    Parameters
    ----------
    masks : torch.Tensor
        Predicted masks at the target resolution, shape (n_objects, n_masks, H, W) with
        n_masks = 1 or 3 (multimask output); logits (reference: the upsampled mask logits) unless
        ``masks_are_logits=False``, then probabilities.
    targets : torch.Tensor
        Binary object masks, shape (n_objects, 1, H, W) or (n_objects, H, W).
    iou_predictions : torch.Tensor
        The model's IoU predictions, shape (n_objects, n_masks).
    masks_are_logits : bool
        Apply a sigmoid to ``masks`` first.
    eps : float
        Dice denominator clamp.

    Returns
    -------
    SamLoss
        ``mask_loss = mean_o min_m (1 - 2 sum(p_om t_o) / max(sum(p_om^2) + sum(t_o^2), eps))``
        (dice per object and mask, the best of the n_masks per object, averaged over objects);
        ``iou_loss = mean_{o,m} (iou_pred_om - IoU(p_om > 0.5, t_o))^2`` (the true IoU carries no
        gradient); ``total = mask_loss + iou_loss``.
    """
    if masks.dim() != 4:
        raise ValueError(f"masks must have shape (n_objects, n_masks, H, W), got {tuple(masks.shape)}")
    if iou_predictions.shape != masks.shape[:2]:
        raise ValueError(f"iou_predictions must have shape {tuple(masks.shape[:2])}, "
                         f"got {tuple(iou_predictions.shape)}")
    targets = _targets_4d(targets, masks).to(masks.dtype)
    probs = torch.sigmoid(masks) if masks_are_logits else masks
    # Objects as channels: each object's dice is computed on its own; one row per predicted mask.
    per_mask = torch.stack([
        dice_loss(probs[:, m:m + 1].transpose(0, 1), targets.transpose(0, 1), eps=eps, reduce_channel=None)
        for m in range(probs.shape[1])
    ])  # (n_masks, n_objects)
    mask_loss = per_mask.min(dim=0).values.mean()
    true_iou = mask_iou(probs, targets)
    iou_loss = F.mse_loss(iou_predictions, true_iou.to(iou_predictions.dtype))
    return SamLoss(mask_loss, iou_loss, mask_loss + iou_loss)


def sam_batch_loss(masks: Sequence[torch.Tensor] | torch.Tensor, targets: Sequence[torch.Tensor] | torch.Tensor,
                   iou_predictions: Sequence[torch.Tensor] | torch.Tensor,
                   masks_are_logits: bool = True) -> SamLoss:
    """:func:`sam_loss` **summed** over the images of a batch (as the reference does).

    Parameters
    ----------
    masks, targets, iou_predictions : sequence of torch.Tensor or torch.Tensor
        Per image the arguments of :func:`sam_loss` (a tensor is iterated over its first axis).
    masks_are_logits : bool
        See :func:`sam_loss`.

    Returns
    -------
    SamLoss
        Sums over images of the per-image mask, IoU and total losses.
    """
    parts = [sam_loss(m, t, i, masks_are_logits=masks_are_logits)
             for m, t, i in zip(masks, targets, iou_predictions, strict=True)]
    if not parts:
        raise ValueError("empty batch")
    mask_loss = torch.stack([p.mask_loss for p in parts]).sum()
    iou_loss = torch.stack([p.iou_loss for p in parts]).sum()
    return SamLoss(mask_loss, iou_loss, mask_loss + iou_loss)


# --------------------------------------------------------------------------------------------
# UNETR (AIS decoder)
# --------------------------------------------------------------------------------------------

class DistanceLossParts(NamedTuple):
    """``total = foreground + center + boundary`` (0-d tensors)."""

    total: torch.Tensor
    foreground: torch.Tensor
    center: torch.Tensor
    boundary: torch.Tensor


def dice_based_distance_loss(pred: torch.Tensor, target: torch.Tensor,
                             mask_distances_in_bg: bool = True, eps: float = DICE_EPS) -> DistanceLossParts:
    """torch_em ``DiceBasedDistanceLoss``: the AIS decoder loss.

    Parameters
    ----------
    pred : torch.Tensor
        Decoder output after its sigmoid, shape (N, 3, H, W): foreground, centre distance,
        boundary distance.
    target : torch.Tensor
        Target channels 1-3 of :func:`pathosam.training.targets.ais_targets`, shape (N, 3, H, W).
    mask_distances_in_bg : bool
        Multiply both distance channels (prediction and target) by the foreground target, so that
        only pixels inside GT objects count (reference: True).
    eps : float
        Dice denominator clamp.

    Returns
    -------
    DistanceLossParts
        ``foreground = dice_loss(p0, t0)``, ``center = dice_loss(p1*t0, t1*t0)``,
        ``boundary = dice_loss(p2*t0, t2*t0)``, each over the whole batch as one channel,
        ``total`` = their sum.
    """
    if pred.shape != target.shape or pred.dim() < 3 or pred.shape[1] != 3:
        raise ValueError(f"pred and target must both have shape (N, 3, ...), "
                         f"got {tuple(pred.shape)}, {tuple(target.shape)}")
    target = target.to(pred.dtype)
    fg_t = target[:, 0:1]
    fg = dice_loss(pred[:, 0:1], fg_t, eps=eps)
    mask = fg_t if mask_distances_in_bg else torch.ones_like(fg_t)
    center = dice_loss(pred[:, 1:2] * mask, target[:, 1:2] * mask, eps=eps)
    boundary = dice_loss(pred[:, 2:3] * mask, target[:, 2:3] * mask, eps=eps)
    return DistanceLossParts(fg + center + boundary, fg, center, boundary)


# --------------------------------------------------------------------------------------------
# Semantic head
# --------------------------------------------------------------------------------------------

def semantic_class_weights(class_frequencies: Sequence[float] | np.ndarray, background_weight: int = 1,
                           max_weight: int = 10) -> list[int]:
    """Integer cross-entropy class weights from foreground class frequencies (patho-sam).

    The frequencies are mapped linearly and inverted onto ``[1, max_weight]``: the rarest class gets
    ``max_weight``, the most frequent class is forced to ``background_weight``; values are rounded
    half-to-even; the background class (weight ``background_weight``) is prepended. The mapping only
    uses min and max, so counts and fractions give the same result. patho-sam's default input
    ``[0.4702, 0.1797, 0.2229, 0.0159, 0.1113]`` (neoplastic, inflammatory, connective, dead,
    epithelial) gives ``[1, 1, 7, 6, 10, 8]``.

    Parameters
    ----------
    class_frequencies : sequence of float
        Frequency (pixel or instance counts, or fractions) of each foreground class 1..K, in class-id
        order. Background is not included.
    background_weight : int
        Weight of the background class and of the most frequent class.
    max_weight : int
        Weight of the rarest class.

    Returns
    -------
    list of int
        K + 1 weights, index = class id (0 = background).
    """
    f = np.asarray(class_frequencies, dtype=np.float64)
    if f.ndim != 1 or f.size == 0:
        raise ValueError("class_frequencies must be a non-empty 1-D sequence")
    if not np.isfinite(f).all() or (f < 0).any():
        raise ValueError("class_frequencies must be finite and non-negative")
    lo, hi = f.min(), f.max()
    if hi == lo:  # all classes equally frequent: every class is "the most frequent"
        mapped = np.full(f.shape, float(background_weight))
    else:
        mapped = max_weight - (f - lo) / (hi - lo) * (max_weight - 1)
        mapped[np.argmax(f)] = background_weight
    return [int(background_weight), *(int(v) for v in np.round(mapped))]


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                           class_weights: Sequence[float] | torch.Tensor | None = None) -> torch.Tensor:
    """Class-weighted cross entropy (``nn.CrossEntropyLoss(weight=class_weights)``, mean reduction).

    Parameters
    ----------
    logits : torch.Tensor
        Raw semantic decoder output (no softmax), shape (N, C, H, W).
    target : torch.Tensor
        Class ids, shape (N, H, W) or (N, 1, H, W), any numeric dtype (cast to int64).
    class_weights : sequence of float or torch.Tensor, optional
        Weight per class (length C); ``None`` = unweighted.

    Returns
    -------
    torch.Tensor
        ``sum_i w[y_i] * (-log softmax(z_i)[y_i]) / sum_i w[y_i]`` over all pixels i.
    """
    target = _class_target(target, logits)
    weight = None
    if class_weights is not None:
        weight = torch.as_tensor(class_weights, dtype=logits.dtype, device=logits.device)
        if weight.shape != (logits.shape[1],):
            raise ValueError(f"class_weights must have length {logits.shape[1]}, got {tuple(weight.shape)}")
    return F.cross_entropy(logits, target, weight=weight)


def _class_target(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    if target.dim() == logits.dim():
        if target.shape[1] != 1:
            raise ValueError(f"target must have shape (N, H, W) or (N, 1, H, W), got {tuple(target.shape)}")
        target = target[:, 0]
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
    return target.long()


def semantic_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = DICE_EPS) -> torch.Tensor:
    """micro-sam ``CustomDiceLoss``: softmax over classes, one-hot target, :func:`dice_loss` summed over classes.

    Parameters
    ----------
    logits : torch.Tensor
        (N, C, H, W) raw scores.
    target : torch.Tensor
        (N, H, W) or (N, 1, H, W) class ids in 0..C-1.
    eps : float
        Dice denominator clamp.

    Returns
    -------
    torch.Tensor
        ``sum_c dice_loss_c(softmax(logits)_c, [target == c])``.
    """
    target = _class_target(target, logits)
    one_hot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(logits.dtype)
    return dice_loss(torch.softmax(logits, dim=1), one_hot, eps=eps, reduce_channel="sum")


def semantic_loss(logits: torch.Tensor, target: torch.Tensor,
                  class_weights: Sequence[float] | torch.Tensor | None = None,
                  dice_weight: float = 0.0) -> torch.Tensor:
    """Semantic-head training loss: ``dice_weight * dice + (1 - dice_weight) * weighted CE``.

    The reference trains with ``dice_weight=0`` (cross entropy only; the dice term is skipped here
    when its weight is 0) and class weights ``[1, 1, 7, 6, 10, 8]`` for the generalist model
    (``None`` for PanNuke only).

    Parameters
    ----------
    logits : torch.Tensor
        (N, C, H, W) raw semantic decoder output.
    target : torch.Tensor
        (N, H, W) or (N, 1, H, W) class ids.
    class_weights : sequence of float or torch.Tensor, optional
        Cross-entropy class weights (see :func:`semantic_class_weights`).
    dice_weight : float
        Weight of :func:`semantic_dice_loss`, in [0, 1].

    Returns
    -------
    torch.Tensor
        The scalar loss.
    """
    if not 0.0 <= dice_weight <= 1.0:
        raise ValueError(f"dice_weight must be in [0, 1], got {dice_weight}")
    loss = (1.0 - dice_weight) * weighted_cross_entropy(logits, target, class_weights)
    if dice_weight > 0:
        loss = loss + dice_weight * semantic_dice_loss(logits, target)
    return loss
