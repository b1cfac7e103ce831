"""Evaluation metrics for nucleus instance and semantic segmentation.

Modules: :mod:`.overlap` (the sparse overlap table, constants), :mod:`.accuracy` (matching, mSA,
AJI), :mod:`.dice` (binary / semantic / weighted dice), :mod:`.panoptic` (per-instance classes,
PQ, mPQ, bPQ, mPQ+), :mod:`.classification` (CoNSeP-style detection F1, per-class F1 of
matched nuclei, confusion matrix). Import the names from here.

Every function takes label images as numpy arrays indexed ``[row, col]`` (any number of
dimensions works): ``0`` is background, every other integer value is one object. Ids need not be
consecutive and may be any integer dtype up to ``uint64``; boolean arrays count as one object.

All object metrics are built on one sparse overlap table (:func:`contingency_table`): the areas of
all objects and the intersection of every *overlapping* (prediction, ground-truth) pair, computed
with ``bincount`` / ``unique`` over the pixels where both images are foreground (runs of equal
pixels collapsed first). Nothing is quadratic in the number of objects, so thousands of nuclei in
a 2000 x 2000 image take well under a second.

Conventions
-----------
* Argument order is ``(seg, gt)`` -- prediction first -- as in elf / micro-sam, except
  :func:`semantic_dice`, which keeps patho-sam's ``(gt, seg)`` order.
* :func:`mean_segmentation_accuracy` and :func:`matching` reproduce ``elf.evaluation`` (used by
  micro-sam and patho-sam) exactly, including the empty cases (SA = 0 when TP = 0, also when both
  images are empty). SA50 is ``accuracies[0]`` and SA75 ``accuracies[5]``; note that the
  reference's 6th threshold is ``np.arange(0.5, 1.0, 0.05)[5] == 0.7500000000000002``, not 0.75
  (:func:`sa75` uses the same value).
* Panoptic quality (:func:`panoptic_quality`, :func:`mpq`, :func:`bpq`, :func:`mpq_plus`) follows
  Kirillov et al. 2019 with the unique matching at IoU > 0.5 used by HoVer-Net, PanNuke and CoNIC.
  Empty cases: an image (or class) with neither ground-truth nor predicted objects has PQ = SQ =
  DQ = NaN; when there are objects but no match, SQ = DQ = PQ = 0. See :func:`mpq` for which
  images/classes the PanNuke averages skip.
* :func:`aggregated_jaccard_index` is Kumar et al. 2017 as implemented by HoVer-Net
  (``get_fast_aji``); NaN when both images are empty.
"""

from .accuracy import aggregated_jaccard_index, matching, mean_segmentation_accuracy, sa50, sa75
from .classification import ClassificationCounts, classification_counts, classification_scores
from .dice import class_weights_from_counts, dice_score, semantic_dice, weighted_dice
from .overlap import (
    DEFAULT_THRESHOLDS,
    PANNUKE_CLASS_IDS,
    SA50_INDEX,
    SA75_INDEX,
    Contingency,
    contingency_table,
)
from .panoptic import (
    bpq,
    instance_class_counts,
    instance_classes,
    mpq,
    mpq_plus,
    panoptic_quality,
    panoptic_quality_per_class,
)

__all__ = [
    "DEFAULT_THRESHOLDS",
    "PANNUKE_CLASS_IDS",
    "SA50_INDEX",
    "SA75_INDEX",
    "ClassificationCounts",
    "Contingency",
    "aggregated_jaccard_index",
    "bpq",
    "class_weights_from_counts",
    "classification_counts",
    "classification_scores",
    "contingency_table",
    "dice_score",
    "instance_class_counts",
    "instance_classes",
    "matching",
    "mean_segmentation_accuracy",
    "mpq",
    "mpq_plus",
    "panoptic_quality",
    "panoptic_quality_per_class",
    "sa50",
    "sa75",
    "semantic_dice",
    "weighted_dice",
]
