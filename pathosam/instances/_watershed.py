"""The seeded-watershed core of AIS, shared by the untiled (:mod:`.ais`) and the tiled
(:mod:`.tiled`) post-processing: map validation, smoothing, seeds, watershed, size filter.

Private to :mod:`pathosam.instances`; other packages use :func:`pathosam.instances.ais_from_maps`
and :func:`pathosam.instances.ais.ais_from_maps_settings`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.measure import label
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

from ..relabel import relabel_consecutive
from .params import AISParams


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


def smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing matching the reference (mirror border, kernel radius 3 sigma), float32."""
    return ndimage.gaussian_filter(x, sigma, mode="mirror", truncate=3.0, output=np.float32)


def shape_seed_mask(fg_mask: np.ndarray, center_dist: np.ndarray, dynamic: float, center_weight: float
                    ) -> np.ndarray:
    """Seed pixels of ``seeds="shape"``: regional maxima (dynamic >= ``dynamic`` px) of the
    smoothed distance transform of ``fg_mask`` minus ``center_weight`` x ``center_dist``."""
    if not fg_mask.any():
        return fg_mask.copy()
    edt = smooth(ndimage.distance_transform_edt(fg_mask).astype(np.float32), 1.0)
    score = edt - np.float32(center_weight) * center_dist
    return h_maxima(score, dynamic).astype(bool) & fg_mask


def seed_labels(fg_mask: np.ndarray, center_dist: np.ndarray, boundary_dist: np.ndarray, p: AISParams
                ) -> np.ndarray:
    """Seed labels (8-connected components of the seed mask of ``p.seeds``) from the smoothed
    distance maps and the foreground mask."""
    if p.seeds == "shape":
        seed_mask = shape_seed_mask(fg_mask, center_dist, p.seed_dynamic, p.seed_center_weight)
    else:
        seed_mask = (center_dist < p.center_distance_threshold) & (boundary_dist < p.boundary_distance_threshold)
        seed_mask &= fg_mask
    return label(seed_mask, connectivity=2)


def smoothed_maps_and_seeds(maps: np.ndarray, p: AISParams
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Intermediates of the pipeline for validated float32 ``maps``: the smoothed foreground,
    centre and boundary distance maps, the foreground mask and the seed labels."""
    foreground, center_dist, boundary_dist = maps
    if p.foreground_smoothing > 0:
        foreground = smooth(foreground, p.foreground_smoothing)
    center_dist = smooth(center_dist, p.distance_smoothing)
    boundary_dist = smooth(boundary_dist, p.distance_smoothing)
    fg_mask = foreground > p.foreground_threshold
    return foreground, center_dist, boundary_dist, fg_mask, seed_labels(fg_mask, center_dist, boundary_dist, p)


def seeded_watershed(height: np.ndarray, seeds: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """4-connected seeded watershed of ``height`` from ``seeds`` inside ``mask`` (skimage)."""
    return watershed(height, markers=seeds, mask=mask, connectivity=1)


def final_labels(segments: np.ndarray, min_size: int) -> np.ndarray:
    """Remove the segments with fewer than ``min_size`` pixels and number the rest 1..N (uint32,
    in increasing order of their ids)."""
    return relabel_consecutive(segments, min_size)


def watershed_labels(boundary_dist: np.ndarray, fg_mask: np.ndarray, seeds: np.ndarray, min_size: int
                     ) -> np.ndarray:
    """The untiled result from the smoothed boundary distance, the foreground mask and the seed
    labels: seeded watershed, size filter, consecutive ids (uint32)."""
    if seeds.max() == 0:
        return np.zeros(fg_mask.shape, dtype=np.uint32)
    return final_labels(seeded_watershed(boundary_dist, seeds, fg_mask), min_size)
