"""Per-sample class statistics of a dataset: class counts and class-balanced sampling weights.

Used for oversampling images with rare classes (:class:`~pathosam.training.data.TrainingPatches`
``sample_weights``) and for the semantic trainer's ``class_weights="auto"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .data import SampleLike

__all__ = ["CountKind", "class_balanced_weights", "class_counts"]

CountKind = Literal["pixels", "instances", "presence"]


def class_counts(
    dataset: Sequence[SampleLike], num_classes: int | None = None, count: CountKind = "pixels"
) -> np.ndarray:
    """Per-sample class counts of a dataset's semantic maps.

    Parameters
    ----------
    dataset : Sequence of samples
        Samples with ``.classes`` ((H, W) integer class map; ``None`` counts as all zeros) and, for
        ``count="instances"``, ``.labels``.
    num_classes : int, optional
        Number of classes including background 0; default: 1 + the largest class seen.
    count : {"pixels", "instances", "presence"}
        ``"pixels"``: pixels of each class; ``"instances"``: instances whose majority class is the
        class (ties go to the lower class id); ``"presence"``: 1 where the class has any pixel.

    Returns
    -------
    np.ndarray
        (n_samples, num_classes) int64.
    """
    if count not in ("pixels", "instances", "presence"):
        raise ValueError(f"count must be 'pixels', 'instances' or 'presence', got {count!r}")
    rows: list[np.ndarray] = []
    for sample in dataset:
        cls = sample.classes
        if cls is None:
            rows.append(np.zeros(1, np.int64))
            continue
        cls = np.asarray(cls).astype(np.int64, copy=False)
        if cls.size and cls.min() < 0:
            raise ValueError(f"negative class id in sample {getattr(sample, 'name', '?')!r}")
        if count == "instances":
            lab = np.asarray(sample.labels).astype(np.int64, copy=False)
            if lab.shape != cls.shape:
                raise ValueError(f"labels {lab.shape} and classes {cls.shape} differ in shape")
            fg = lab > 0
            ncls = int(cls.max()) + 1 if cls.size else 1
            ids, inv = np.unique(lab[fg], return_inverse=True)
            if ids.size == 0:
                rows.append(np.zeros(ncls, np.int64))
                continue
            table = np.zeros((ids.size, ncls), np.int64)
            np.add.at(table, (inv, cls[fg]), 1)
            rows.append(np.bincount(table.argmax(axis=1), minlength=ncls).astype(np.int64))
        else:
            row = np.bincount(cls.ravel()).astype(np.int64)
            rows.append((row > 0).astype(np.int64) if count == "presence" else row)
    n = num_classes if num_classes is not None else max((r.size for r in rows), default=1)
    out = np.zeros((len(rows), n), np.int64)
    for i, r in enumerate(rows):
        if r.size > n and np.any(r[n:]):
            raise ValueError(f"sample {i} has class ids >= num_classes={n}")
        out[i, : min(r.size, n)] = r[:n]
    return out


def class_balanced_weights(
    data: Sequence[SampleLike] | np.ndarray | Sequence[Sequence[float]],
    *,
    num_classes: int | None = None,
    count: CountKind = "pixels",
    ignore_background: bool = True,
    empty_weight: float | None = None,
) -> np.ndarray:
    """Per-sample weights that draw samples holding rare classes more often.

    With ``n[s, c]`` the count of class c in sample s (from :func:`class_counts`, or given), the
    frequency of a class is ``f_c = sum_s n[s, c] / sum_{s, c'} n[s, c']`` over the considered
    classes (background column 0 left out when ``ignore_background``; classes that never occur are
    ignored), and the weight of a sample is

        ``w_s = sum over classes c present in s (n[s, c] > 0) of 1 / f_c``,

    normalised to sum to 1. A sample holding no considered class gets ``empty_weight`` (before
    normalisation; default: the smallest weight of the other samples, or 1 if none has any).

    Use the result as ``TrainingPatches(..., sample_weights=w)`` (deterministic) or with
    ``torch.utils.data.WeightedRandomSampler(w, num_samples)`` over an index-addressed dataset
    (see :meth:`~pathosam.training.data.TrainingPatches.index_weights`).

    Parameters
    ----------
    data : Sequence of samples or array-like
        A dataset (see :func:`class_counts`) or an (n_samples, n_classes) count matrix.
    num_classes : int, optional
        Passed to :func:`class_counts` for datasets.
    count : {"pixels", "instances", "presence"}
        What is counted for datasets.
    ignore_background : bool
        Leave class 0 out of frequencies and presence.
    empty_weight : float, optional
        Unnormalised weight of samples without any considered class.

    Returns
    -------
    np.ndarray
        (n_samples,) float64, non-negative, summing to 1.
    """
    if isinstance(data, np.ndarray) or (len(data) > 0 and not hasattr(data[0], "classes")):
        counts = np.asarray(data, dtype=np.float64)
        if counts.ndim != 2:
            raise ValueError(f"a count matrix must be 2-D (n_samples, n_classes), got shape {counts.shape}")
    else:
        counts = class_counts(data, num_classes=num_classes, count=count).astype(np.float64)
    if counts.shape[0] == 0:
        return np.zeros(0, np.float64)
    if np.any(counts < 0):
        raise ValueError("class counts must be non-negative")
    considered = counts[:, 1:] if ignore_background else counts
    totals = considered.sum(axis=0)
    if totals.sum() <= 0:
        return np.full(counts.shape[0], 1.0 / counts.shape[0])
    freq = totals / totals.sum()
    inv = np.zeros_like(freq)
    inv[freq > 0] = 1.0 / freq[freq > 0]
    weights = (considered > 0).astype(np.float64) @ inv
    empty = weights <= 0
    if empty.any():
        if empty_weight is not None:
            fill = float(empty_weight)
        else:
            fill = float(weights[~empty].min()) if (~empty).any() else 1.0
        weights[empty] = fill
    total = weights.sum()
    return weights / total if total > 0 else np.full(counts.shape[0], 1.0 / counts.shape[0])
