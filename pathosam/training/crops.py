"""Patch geometry of the training data: crop origins, end-padding, relabelling, rejection sampling.

The steps 2-4 and 6 of the patch pipeline of :mod:`pathosam.training.data` (reference: torch_em's
``ensure_patch_shape``, its random crop, ``MinInstanceSampler`` and the label step of
``PerObjectDistanceTransform``). Arrays are indexed (row, col).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.measure import label as connected_components

from ..relabel import relabel_consecutive

__all__ = ["MinInstanceSampler", "crop", "ensure_patch_shape", "random_crop_origin", "relabel_instances", "zoom"]


def ensure_patch_shape(array: np.ndarray, patch_shape: tuple[int, int], value: float = 0) -> np.ndarray:
    """Pad the two leading (spatial) axes of ``array`` at their **end** up to ``patch_shape``.

    Reproduces the reference's padding of images smaller than the training patch
    (torch_em ``ensure_patch_shape``): constant ``value`` (0) appended after the last row / column,
    i.e. the content stays in the top-left corner. Axes already at least as long are untouched;
    trailing axes (channels) are never padded.

    Parameters
    ----------
    array : np.ndarray
        (H, W) or (H, W, C) array.
    patch_shape : tuple of int
        Minimum (height, width).
    value : float, optional
        Fill value, 0 as in the reference.

    Returns
    -------
    np.ndarray
        The array itself when no padding is needed, else a padded copy of the same dtype.
    """
    ph, pw = int(patch_shape[0]), int(patch_shape[1])
    h, w = array.shape[:2]
    if h >= ph and w >= pw:
        return array
    pad = [(0, max(ph - h, 0)), (0, max(pw - w, 0))] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pad, mode="constant", constant_values=value)


def random_crop_origin(
    shape: tuple[int, int], patch_shape: tuple[int, int], rng: np.random.Generator
) -> tuple[int, int]:
    """Uniformly drawn top-left corner of a ``patch_shape`` window inside an image of ``shape``.

    Every start ``0 .. size - patch`` is possible (both ends included); an axis shorter than the
    patch starts at 0 (it is padded afterwards).

    Parameters
    ----------
    shape : tuple of int
        Image (height, width).
    patch_shape : tuple of int
        Patch (height, width).
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    tuple of int
        ``(row0, col0)``.
    """
    out = []
    for size, p in zip(shape[:2], patch_shape):
        free = int(size) - int(p)
        out.append(int(rng.integers(0, free + 1)) if free > 0 else 0)
    return out[0], out[1]


def relabel_instances(labels: np.ndarray, min_size: int = 0, connectivity: int = 2) -> np.ndarray:
    """Split every id into its connected components, drop small ones, renumber 1..N.

    Same as the reference's label step of the target transform: ``skimage.measure.label`` on the
    instance image (pixels are connected when neighbours *and* equal; default full connectivity =
    8-neighbourhood), then components with fewer than ``min_size`` pixels set to background. The
    result is renumbered consecutively in raster order of first appearance.

    Parameters
    ----------
    labels : np.ndarray
        (H, W) integer instance labels, 0 = background.
    min_size : int, optional
        Components with fewer pixels are removed (0 keeps all).
    connectivity : int, optional
        1 = 4-neighbourhood, 2 = 8-neighbourhood (default, as the reference).

    Returns
    -------
    np.ndarray
        (H, W) uint32 labels.
    """
    # removing ids keeps the raster order of the others: consecutive renumbering keeps it too
    return relabel_consecutive(connected_components(np.asarray(labels), background=0, connectivity=connectivity),
                               min_size)


@dataclass(frozen=True)
class MinInstanceSampler:
    """Accept a label patch when it holds enough distinct ids (the reference's ``MinInstanceSampler``).

    An id counts when it has at least ``min_size`` pixels (all ids when ``min_size`` is None) and is
    not in ``exclude_ids``. **The background id 0 counts like any other id** — the reference's
    behaviour — so ``min_num_instances=4`` asks for >= 3 objects in a patch that has background.
    The reference used ``min_num_instances=4, min_size=10`` for PathoSAM training,
    ``min_num_instances=3`` for its interactive evaluation crops and ``min_num_instances=2``
    (``MinTwoInstanceSampler``, applied to the semantic map) for semantic training. Pass
    ``exclude_ids=(0,)`` to count objects only.

    A patch that fails is still accepted with probability ``1 - p_reject`` (default 1: never).

    Parameters
    ----------
    min_num_instances : int
        Minimum number of counted ids.
    min_size : int or None
        Minimum pixel count of a counted id.
    p_reject : float
        Probability of rejecting a failing patch.
    exclude_ids : tuple of int
        Ids never counted.
    """

    min_num_instances: int = 2
    min_size: int | None = None
    p_reject: float = 1.0
    exclude_ids: tuple[int, ...] = ()

    def count(self, labels: np.ndarray) -> int:
        """Number of counted ids in ``labels`` (background included unless excluded).

        Parameters
        ----------
        labels : np.ndarray
            Integer label patch.

        Returns
        -------
        int
            The count compared with ``min_num_instances``.
        """
        ids, sizes = np.unique(np.asarray(labels), return_counts=True)
        if self.min_size is not None:
            ids = ids[sizes >= self.min_size]
        if self.exclude_ids:
            ids = ids[~np.isin(ids, np.asarray(self.exclude_ids))]
        return int(ids.size)

    def __call__(self, labels: np.ndarray, rng: np.random.Generator | None = None) -> bool:
        """Whether to accept the patch.

        Parameters
        ----------
        labels : np.ndarray
            Integer label patch.
        rng : numpy.random.Generator, optional
            Used only when ``p_reject < 1``; required then for determinism.

        Returns
        -------
        bool
            True to accept.
        """
        if self.count(labels) >= self.min_num_instances:
            return True
        if self.p_reject >= 1.0:
            return False
        u = (rng if rng is not None else np.random.default_rng()).random()
        return bool(u > self.p_reject)


def crop(array: np.ndarray, origin: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """The ``shape`` window of ``array`` at ``origin`` (row, col); shorter at the image border."""
    r, c = origin
    return array[r : r + shape[0], c : c + shape[1]]


def zoom(array: np.ndarray, shape: tuple[int, int], order: int) -> np.ndarray:
    """Resize the two leading axes of ``array`` to ``shape`` (order 1: bilinear, 0: nearest)."""
    if array.shape[:2] == tuple(shape):
        return array
    from skimage.transform import resize

    out = resize(array, tuple(shape) + array.shape[2:], order=order, preserve_range=True,
                 anti_aliasing=order > 0 and array.shape[0] > shape[0], mode="edge")
    return out.astype(array.dtype, copy=False)
