"""Training building blocks: AIS targets, the reference losses and training prompt sampling.

These are pure functions (numpy / torch) that reproduce the reference's (micro-sam ``train_sam``,
patho-sam semantic training) objective. The trainers: :class:`~pathosam.training.trainer.JointTrainer`
and :func:`~pathosam.training.semantic_trainer.train_semantic`, both on the one loop of
:mod:`pathosam.training.loop`. The prompt simulation shared with the interactive evaluation
(bounding boxes, correction points) is :mod:`pathosam.prompt_sampling`.
"""

from .losses import (
    DistanceLossParts,
    SamLoss,
    dice_based_distance_loss,
    dice_loss,
    mask_iou,
    sam_batch_loss,
    sam_loss,
    semantic_class_weights,
    semantic_dice_loss,
    semantic_loss,
    weighted_cross_entropy,
)
from .prompts import (
    PromptChoice,
    TrainingPrompts,
    distort_boxes,
    object_masks,
    sample_object_ids,
    sample_points,
    sample_training_prompts,
    training_prompt_choice,
    validation_prompt_choice,
)
from .targets import AIS_TARGET_CHANNELS, ais_target_parts, ais_targets, relabel_for_targets

__all__ = [
    "AIS_TARGET_CHANNELS",
    "DistanceLossParts",
    "PromptChoice",
    "SamLoss",
    "TrainingPrompts",
    "ais_target_parts",
    "ais_targets",
    "dice_based_distance_loss",
    "dice_loss",
    "distort_boxes",
    "mask_iou",
    "object_masks",
    "relabel_for_targets",
    "sample_object_ids",
    "sample_points",
    "sample_training_prompts",
    "sam_batch_loss",
    "sam_loss",
    "semantic_class_weights",
    "semantic_dice_loss",
    "semantic_loss",
    "training_prompt_choice",
    "validation_prompt_choice",
    "weighted_cross_entropy",
]
