"""Training targets for the AIS (UNETR) decoder.

The reference computes, from the instance label patch and **before** augmentation, four channels
``[instances, foreground, centre distance, boundary distance]`` (micro-sam ``train_sam`` with
torch_em's per-object distance transform: distances and boundary distances, no directed
distances, foreground and instances channels, ``min_size=10``, background fill 1.0).
Channel 0 feeds the prompt branch (object ids), channels 1-3 are the UNETR targets.

Algorithm (all pixel units, array axes (row, col) = (y, x)):

1. Connected components of the label image (equal ids, 8-connectivity; different touching ids
   stay separate), then ids with fewer than ``min_size`` pixels are set to 0 and the rest is
   relabelled 1..N in order of first appearance in a row-major scan.
2. Inner boundaries of the whole relabelled image (an object pixel with a 4-neighbour of another
   value; the image border is not a boundary).
3. Per object, inside its bounding box (max exclusive):

   - boundary distance ``b`` = Euclidean distance to the nearest boundary pixel of the crop
     (any object's boundary), 0 outside the object; ``b_max`` = its maximum over the object;
   - centre = the rounded centroid (numpy round-half-to-even); if that pixel is not in the
     object, the first (row-major) pixel of maximal ``b`` instead;
   - centre distance = ``d / (d_max + 1e-7)`` with ``d`` the Euclidean distance to the centre
     (0 at the centre, ~1 at the farthest object pixel);
   - inverted boundary distance = ``(b_max - b) / (b_max + 1e-7)`` (0 at the most interior
     pixel, ~1 on the boundary; an object made only of boundary pixels gets 0 everywhere).

4. Background pixels hold ``distance_fill_value`` (1.0) in both distance channels; foreground
   = instances > 0.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.measure import label as connected_components
from skimage.segmentation import find_boundaries

from ..relabel import relabel_consecutive

__all__ = ["AIS_TARGET_CHANNELS", "ais_target_parts", "ais_targets", "relabel_for_targets"]

#: Names of the channels returned by :func:`ais_targets`, in order.
AIS_TARGET_CHANNELS = ("instances", "foreground", "center_distances", "boundary_distances")

_EPS = 1e-7


def relabel_for_targets(labels: np.ndarray, min_size: int = 10) -> np.ndarray:
    """Connected components, small-object removal and consecutive relabelling (steps 1 of the targets).

    Parameters
    ----------
    labels : numpy.ndarray
        Integer instance labels of shape (H, W) or (1, H, W); 0 = background.
    min_size : int
        Objects (after connected components) with fewer pixels than this are removed.

    Returns
    -------
    numpy.ndarray
        uint32 (H, W) labels 1..N, numbered in order of first appearance (row-major scan).
    """
    labels = np.asarray(labels)
    if labels.ndim == 3 and labels.shape[0] == 1:  # a (1, H, W) loader patch
        labels = labels[0]
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D (H, W) or (1, H, W), got shape {labels.shape}")
    if not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.bool_)):
        if not np.array_equal(labels, np.round(labels)):
            raise ValueError("labels must hold integer ids")
        labels = labels.astype(np.int64)
    # skimage numbers components in raster order of first appearance.
    # Removing ids keeps the raster order of the remaining ones, so a sorted relabelling
    # equals the reference's order-of-appearance relabelling.
    return relabel_consecutive(connected_components(labels, background=0, connectivity=2), min_size)


def _object_distances(crop_mask: np.ndarray, crop_boundaries: np.ndarray,
                      centroid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Normalised centre and inverted boundary distance of one object inside its bounding box (float64)."""
    if crop_boundaries.any():
        bdist = ndimage.distance_transform_edt(~crop_boundaries)
    else:  # an object filling the whole image has no boundary pixel
        bdist = np.zeros(crop_mask.shape, dtype=np.float64)
    bdist[~crop_mask] = 0.0
    b_max_index = np.unravel_index(int(np.argmax(bdist)), bdist.shape)
    b_max = bdist[b_max_index]

    center = centroid if crop_mask[centroid] else b_max_index
    rows = np.arange(crop_mask.shape[0], dtype=np.float64)[:, None] - center[0]
    cols = np.arange(crop_mask.shape[1], dtype=np.float64)[None, :] - center[1]
    cdist = np.sqrt(rows * rows + cols * cols)
    cdist[~crop_mask] = 0.0
    cdist /= cdist.max() + _EPS

    inv_bdist = b_max - bdist
    inv_bdist[~crop_mask] = 0.0
    inv_bdist /= np.abs(inv_bdist).max() + _EPS
    return cdist, inv_bdist


def ais_target_parts(labels: np.ndarray, min_size: int = 10,
                     distance_fill_value: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """AIS training targets as (instances, maps).

    Parameters
    ----------
    labels : numpy.ndarray
        Integer instance labels (H, W) of the (unaugmented) training patch; 0 = background.
    min_size : int
        Minimal object size in pixels (reference: 10).
    distance_fill_value : float
        Value of both distance channels on background pixels (reference: 1.0).

    Returns
    -------
    instances : numpy.ndarray
        uint32 (H, W), objects relabelled 1..N (see :func:`relabel_for_targets`).
    maps : numpy.ndarray
        float32 (3, H, W): foreground (0/1), normalised centre distance and inverted normalised
        boundary distance, both in [0, 1] and unitless (pixel distances divided by the
        per-object maximum).
    """
    instances = relabel_for_targets(labels, min_size=min_size)
    h, w = instances.shape
    maps = np.empty((3, h, w), dtype=np.float32)
    maps[0] = instances > 0
    maps[1:] = distance_fill_value
    if instances.max() == 0:
        return instances, maps

    boundaries = find_boundaries(instances, mode="inner")
    slices = ndimage.find_objects(instances)
    ids = np.arange(1, len(slices) + 1)
    centroids = ndimage.center_of_mass(np.ones(instances.shape, dtype=np.float64), instances, ids)
    for obj_id, bb, centroid in zip(ids, slices, centroids):
        crop_mask = instances[bb] == obj_id
        local_centroid = tuple(int(np.round(c)) - s.start for c, s in zip(centroid, bb))
        cdist, bdist = _object_distances(crop_mask, boundaries[bb], local_centroid)
        maps[1][bb][crop_mask] = cdist[crop_mask]
        maps[2][bb][crop_mask] = bdist[crop_mask]
    return instances, maps


def ais_targets(labels: np.ndarray, min_size: int = 10, distance_fill_value: float = 1.0,
                dtype: np.dtype | type = np.float32) -> np.ndarray:
    """The 4-channel training target ``y`` of the reference's joint SAM + UNETR training.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer instance labels (H, W) of the training patch, after padding/cropping and before
        any augmentation (flips are then applied to image and target together).
    min_size : int
        Minimal object size in pixels (reference: 10).
    distance_fill_value : float
        Background value of the distance channels (reference: 1.0).
    dtype : numpy dtype
        Output dtype (reference loaders use float32; instance ids are exact in float32 up to 2**24).

    Returns
    -------
    numpy.ndarray
        (4, H, W) array ``[instances, foreground, center_distances, boundary_distances]``
        (:data:`AIS_TARGET_CHANNELS`). Channel 0 = object ids for the prompt branch, channels
        1-3 = UNETR targets (see :func:`ais_target_parts`).
    """
    instances, maps = ais_target_parts(labels, min_size=min_size, distance_fill_value=distance_fill_value)
    out = np.empty((4,) + instances.shape, dtype=dtype)
    out[0] = instances
    out[1:] = maps
    return out
