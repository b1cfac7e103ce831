"""Automatic instance segmentation (AIS) from the three decoder maps.

Reproduces the reference's untiled post-processing (seeded watershed from centre and boundary
distances): Gaussian smoothing, thresholds, 8-connected seeds, 4-connected seeded watershed of the
smoothed boundary distance inside the foreground, size filter, consecutive relabelling. With
``tile_shape`` the same algorithm runs block-wise without seams (``pathosam.instances.tiled``).

``seeds="shape"`` (not in the reference) takes the seeds from the *shape* of the foreground mask
instead of the two distance thresholds: the regional maxima, of dynamic >= ``seed_dynamic`` px, of
the mask's Euclidean distance transform (smoothed) minus ``seed_center_weight`` x the smoothed
centre distance. One seed per convex blob whatever the texture inside it, so large nuclei with
coarse chromatin are not split where the predicted distances follow the texture; the centre
distance still separates touching nuclei.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import ndimage
from skimage.measure import label
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

#: Seed rules: "distance" = the reference's thresholds on the centre and boundary distances;
#: "shape" = maxima of the foreground mask's distance transform (see the module docstring).
SEED_MODES = ("distance", "shape")


def _smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing matching the reference (mirror border, kernel radius 3 sigma), float32."""
    return ndimage.gaussian_filter(x, sigma, mode="mirror", truncate=3.0, output=np.float32)


def _relabel_consecutive(seg: np.ndarray) -> np.ndarray:
    """Map the ids of ``seg`` to 1..N in increasing order, keeping 0 as background; uint32."""
    ids, inverse = np.unique(seg, return_inverse=True)
    if ids.size and ids[0] == 0:
        new = np.arange(ids.size, dtype=np.uint32)
    else:
        new = np.arange(1, ids.size + 1, dtype=np.uint32)
    return new[inverse].reshape(seg.shape)


def _smoothed_maps_and_seeds(maps, center_threshold, boundary_threshold, foreground_threshold,
                             foreground_smoothing, distance_smoothing, seeds="distance",
                             seed_dynamic=2.0, seed_center_weight=10.0):
    """Intermediates of the pipeline for validated float32 ``maps``.

    Returns the smoothed foreground, centre and boundary distance maps, the foreground mask and
    the seed labels (8-connected components of the seed mask).
    """
    foreground, center_dist, boundary_dist = maps
    if foreground_smoothing > 0:
        foreground = _smooth(foreground, foreground_smoothing)
    center_dist = _smooth(center_dist, distance_smoothing)
    boundary_dist = _smooth(boundary_dist, distance_smoothing)

    fg_mask = foreground > foreground_threshold
    if seeds == "shape":
        seed_mask = _shape_seed_mask(fg_mask, center_dist, seed_dynamic, seed_center_weight)
    else:
        seed_mask = (center_dist < center_threshold) & (boundary_dist < boundary_threshold) & fg_mask
    return foreground, center_dist, boundary_dist, fg_mask, label(seed_mask, connectivity=2)


def _shape_seed_mask(fg_mask: np.ndarray, center_dist: np.ndarray, dynamic: float, center_weight: float
                     ) -> np.ndarray:
    """Seed pixels of ``seeds="shape"``: regional maxima (dynamic >= ``dynamic`` px) of the
    smoothed distance transform of ``fg_mask`` minus ``center_weight`` x ``center_dist``."""
    if not fg_mask.any():
        return fg_mask.copy()
    edt = _smooth(ndimage.distance_transform_edt(fg_mask).astype(np.float32), 1.0)
    score = edt - np.float32(center_weight) * center_dist
    return h_maxima(score, dynamic).astype(bool) & fg_mask


def check_maps(maps: np.ndarray) -> np.ndarray:
    """Validate (3, H, W) real finite maps and return them as float32."""
    maps = np.asarray(maps)
    if maps.ndim != 3 or maps.shape[0] != 3 or maps.shape[1] == 0 or maps.shape[2] == 0:
        raise ValueError(f"maps must have shape (3, H, W) with H, W > 0, got {maps.shape}")
    if not (np.issubdtype(maps.dtype, np.floating) or np.issubdtype(maps.dtype, np.integer)):
        raise ValueError(f"maps must be a real numeric array, got dtype {maps.dtype}")
    maps = maps.astype(np.float32, copy=False)
    if not np.isfinite(maps).all():
        raise ValueError("maps contain NaN or infinite values")
    return maps


def check_params(foreground_smoothing: float, distance_smoothing: float, min_size: int, seeds: str,
                 seed_dynamic: float, seed_center_weight: float) -> None:
    if seeds not in SEED_MODES:
        raise ValueError(f"seeds must be one of {SEED_MODES}, got {seeds!r}")
    if not seed_dynamic > 0 or not seed_center_weight >= 0:
        raise ValueError(f"seed_dynamic must be > 0 and seed_center_weight >= 0, got {seed_dynamic}, "
                         f"{seed_center_weight}")
    if foreground_smoothing < 0 or distance_smoothing < 0:
        raise ValueError(f"smoothing sigmas must be >= 0, got {foreground_smoothing}, {distance_smoothing}")
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0, got {min_size}")


def seeded_watershed(height: np.ndarray, seeds: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """4-connected seeded watershed of ``height`` from ``seeds`` inside ``mask`` (skimage)."""
    return watershed(height, markers=seeds, mask=mask, connectivity=1)


def ais_from_maps(
    maps: np.ndarray,
    center_distance_threshold: float = 0.5,
    boundary_distance_threshold: float = 0.5,
    foreground_threshold: float = 0.5,
    foreground_smoothing: float = 1.0,
    distance_smoothing: float = 1.6,
    min_size: int = 0,
    tile_shape: tuple[int, int] | None = None,
    halo: tuple[int, int] | None = None,
    seeds: Literal["distance", "shape"] = "distance",
    seed_dynamic: float = 2.0,
    seed_center_weight: float = 10.0,
) -> np.ndarray:
    """Instance labels from the AIS decoder maps.

    Parameters
    ----------
    maps : np.ndarray
        Array of shape (3, H, W), axis order (channel, row, col), finite real values, normally in
        [0, 1]. Channels: 0 = foreground probability, 1 = normalised distance to the object centre,
        2 = normalised (inverted) distance to the object boundary. Computation is in float32
        (float16 input is upcast).
    center_distance_threshold : float
        Seed pixels have a smoothed centre distance below this value.
    boundary_distance_threshold : float
        Seed pixels have a smoothed boundary distance below this value.
    foreground_threshold : float
        Foreground pixels have a smoothed foreground probability above this value.
    foreground_smoothing : float
        Gaussian sigma in pixels for the foreground map; 0 disables smoothing.
    distance_smoothing : float
        Gaussian sigma in pixels for the two distance maps; 0 disables smoothing.
    min_size : int
        Objects with fewer than ``min_size`` pixels are removed (set to background).
    tile_shape : (int, int), optional
        Post-process block-wise with blocks of this shape (rows, cols); the result does not depend
        on block borders (see ``pathosam.instances.tiled``). None = the whole image at once.
    halo : (int, int), optional
        Context (rows, cols) around each block; default (64, 64) clipped to ``tile_shape``.
    seeds : {"distance", "shape"}
        "distance" (the reference): seeds where both distances are below their thresholds;
        "shape": maxima of the foreground mask's distance transform (see the module docstring;
        the two distance thresholds are then unused).
    seed_dynamic : float
        "shape" seeds: minimum dynamic (height above the saddle to a higher maximum) of a
        maximum, in pixels of distance.
    seed_center_weight : float
        "shape" seeds: weight, in pixels, of the smoothed centre distance (0..1) subtracted from
        the distance transform; 0 = the mask's shape alone.

    Returns
    -------
    np.ndarray
        uint32 label image of shape (H, W): 0 = background, objects numbered 1..N consecutively
        in the row-major order of their seeds' first pixels.

    Raises
    ------
    ValueError
        If ``maps`` is not a finite real (3, H, W) array or a parameter is out of range.

    Notes
    -----
    Gaussian smoothing is ``scipy.ndimage.gaussian_filter(..., mode="mirror", truncate=3.0)``;
    seeds are the 8-connected components of (centre < t_c) & (boundary < t_b) & foreground (or of
    the shape seeds' maxima); they grow by a 4-connected seeded watershed of the smoothed boundary
    distance restricted to the foreground mask. Foreground not reachable from a seed stays 0.
    Tiled shape seeds need a halo of about the size of the largest cluster of touching nuclei
    (64 px is what ``pathosam`` uses; the distance transform sees the whole cluster).
    """
    check_params(foreground_smoothing, distance_smoothing, min_size, seeds, seed_dynamic, seed_center_weight)
    if tile_shape is not None:
        from .tiled import AISParams, tiled_ais_from_maps

        params = AISParams(center_distance_threshold, boundary_distance_threshold, foreground_threshold,
                           foreground_smoothing, distance_smoothing, min_size, seeds, seed_dynamic,
                           seed_center_weight)
        tile_shape = tuple(int(t) for t in np.broadcast_to(tile_shape, 2))
        if halo is None:
            halo = (min(64, tile_shape[0]), min(64, tile_shape[1]))
        halo = tuple(int(h) for h in np.broadcast_to(halo, 2))
        return tiled_ais_from_maps(maps, tile_shape, halo, params)
    if halo is not None:
        raise ValueError("halo given without tile_shape")
    maps = check_maps(maps)

    _, _, boundary_dist, fg_mask, markers = _smoothed_maps_and_seeds(
        maps, center_distance_threshold, boundary_distance_threshold, foreground_threshold,
        foreground_smoothing, distance_smoothing, seeds, seed_dynamic, seed_center_weight,
    )
    if markers.max() == 0:
        return np.zeros(fg_mask.shape, dtype=np.uint32)

    seg = seeded_watershed(boundary_dist, markers, fg_mask)

    if min_size > 0:
        ids, sizes = np.unique(seg, return_counts=True)
        small = ids[(sizes < min_size) & (ids != 0)]
        seg[np.isin(seg, small)] = 0
    return _relabel_consecutive(seg)
