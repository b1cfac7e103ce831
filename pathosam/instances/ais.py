"""Automatic instance segmentation (AIS) from the three decoder maps.

Reproduces the reference's untiled post-processing (seeded watershed from centre and boundary
distances): Gaussian smoothing, thresholds, 8-connected seeds, 4-connected seeded watershed of the
smoothed boundary distance inside the foreground, size filter, consecutive relabelling. With
``tile_shape`` the same algorithm runs block-wise without seams (``pathosam.instances.tiled``).
Both use the one watershed core of ``pathosam.instances._watershed``; the parameters and their
defaults are :class:`pathosam.instances.params.AISParams`.

``seeds="shape"`` (not in the reference) takes the seeds from the *shape* of the foreground mask
instead of the two distance thresholds: the regional maxima, of dynamic >= ``seed_dynamic`` px, of
the mask's Euclidean distance transform (smoothed) minus ``seed_center_weight`` x the smoothed
centre distance. One seed per convex blob whatever the texture inside it, so large nuclei with
coarse chromatin are not split where the predicted distances follow the texture; the centre
distance still separates touching nuclei.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Literal

import numpy as np

from ._watershed import (check_maps, final_labels, seed_labels, seeded_watershed, smooth, smoothed_maps_and_seeds,
                         watershed_labels)
from .params import SEED_MODES, AISParams
from .tiled import tiled_ais_from_maps

__all__ = ["SEED_MODES", "AISParams", "ais_from_maps", "ais_from_maps_settings", "check_maps"]


def resolve_params(params: AISParams | None = None, **values: float | int | str | None) -> AISParams:
    """``params`` (default :class:`AISParams`'s defaults) with the ``values`` that are not None."""
    given = {k: v for k, v in values.items() if v is not None}
    return dataclasses.replace(params or AISParams(), **given) if given else (params or AISParams())


def _smoothed_maps_and_seeds(maps: np.ndarray, *args: float | str, **kwargs: float | str):
    """Intermediates (smoothed foreground, centre and boundary distances, foreground mask, seed
    labels) of float32 ``maps``; parameters as :func:`ais_from_maps`'s, in its order."""
    names = [f.name for f in dataclasses.fields(AISParams) if f.name != "min_size"]
    return smoothed_maps_and_seeds(maps, resolve_params(None, **dict(zip(names, args)), **kwargs))


def ais_from_maps(
    maps: np.ndarray,
    center_distance_threshold: float | None = None,
    boundary_distance_threshold: float | None = None,
    foreground_threshold: float | None = None,
    foreground_smoothing: float | None = None,
    distance_smoothing: float | None = None,
    min_size: int | None = None,
    tile_shape: tuple[int, int] | None = None,
    halo: tuple[int, int] | None = None,
    seeds: Literal["distance", "shape"] | None = None,
    seed_dynamic: float | None = None,
    seed_center_weight: float | None = None,
    *,
    params: AISParams | None = None,
) -> np.ndarray:
    """Instance labels from the AIS decoder maps.

    Every post-processing parameter left at None takes its value from ``params``, else the
    default of :class:`~pathosam.instances.params.AISParams` (the reference's: thresholds 0.5,
    smoothing 1.0 / 1.6 px, no size filter, distance seeds).

    Parameters
    ----------
    maps : np.ndarray
        Array of shape (3, H, W), axis order (channel, row, col), finite real values, normally in
        [0, 1]. Channels: 0 = foreground probability, 1 = normalised distance to the object centre,
        2 = normalised (inverted) distance to the object boundary. Computation is in float32
        (float16 input is upcast).
    center_distance_threshold : float, optional
        Seed pixels have a smoothed centre distance below this value.
    boundary_distance_threshold : float, optional
        Seed pixels have a smoothed boundary distance below this value.
    foreground_threshold : float, optional
        Foreground pixels have a smoothed foreground probability above this value.
    foreground_smoothing : float, optional
        Gaussian sigma in pixels for the foreground map; 0 disables smoothing.
    distance_smoothing : float, optional
        Gaussian sigma in pixels for the two distance maps; 0 disables smoothing.
    min_size : int, optional
        Objects with fewer than ``min_size`` pixels are removed (set to background).
    tile_shape : (int, int), optional
        Post-process block-wise with blocks of this shape (rows, cols); the result does not depend
        on block borders (see ``pathosam.instances.tiled``). None = the whole image at once.
    halo : (int, int), optional
        Context (rows, cols) around each block; default (64, 64) clipped to ``tile_shape``.
    seeds : {"distance", "shape"}, optional
        "distance" (the reference): seeds where both distances are below their thresholds;
        "shape": maxima of the foreground mask's distance transform (see the module docstring;
        the two distance thresholds are then unused).
    seed_dynamic : float, optional
        "shape" seeds: minimum dynamic (height above the saddle to a higher maximum) of a
        maximum, in pixels of distance.
    seed_center_weight : float, optional
        "shape" seeds: weight, in pixels, of the smoothed centre distance (0..1) subtracted from
        the distance transform; 0 = the mask's shape alone.
    params : AISParams, optional
        All parameters at once (e.g. a model's recommended ones, ``pathosam.automatic.ais_params``);
        the arguments above that are given override it.

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
    p = resolve_params(
        params, center_distance_threshold=center_distance_threshold,
        boundary_distance_threshold=boundary_distance_threshold, foreground_threshold=foreground_threshold,
        foreground_smoothing=foreground_smoothing, distance_smoothing=distance_smoothing, min_size=min_size,
        seeds=seeds, seed_dynamic=seed_dynamic, seed_center_weight=seed_center_weight,
    )
    if tile_shape is not None:
        tile_shape = tuple(int(t) for t in np.broadcast_to(tile_shape, 2))
        if halo is None:
            halo = (min(64, tile_shape[0]), min(64, tile_shape[1]))
        halo = tuple(int(h) for h in np.broadcast_to(halo, 2))
        return tiled_ais_from_maps(maps, tile_shape, halo, p)
    if halo is not None:
        raise ValueError("halo given without tile_shape")
    _, _, boundary_dist, fg_mask, markers = smoothed_maps_and_seeds(check_maps(maps), p)
    return watershed_labels(boundary_dist, fg_mask, markers, p.min_size)


#: Order in which :func:`ais_from_maps_settings` callers should vary parameters so that settings
#: next to each other share their work: smoothing outermost, the size filter innermost.
SHARING_ORDER = ("foreground_smoothing", "foreground_threshold", "distance_smoothing", "seeds",
                 "center_distance_threshold", "boundary_distance_threshold", "seed_dynamic",
                 "seed_center_weight", "min_size")


def ais_from_maps_settings(maps: np.ndarray, settings: Iterable[AISParams]) -> Iterator[tuple[AISParams, np.ndarray]]:
    """:func:`ais_from_maps` (untiled) of one image's maps for each of several settings (a grid
    search), sharing work: each smoothing is computed once per sigma, the foreground mask once per
    threshold, and consecutive settings with the same seeds (differing only in ``min_size``)
    share one watershed (vary the parameters in :data:`SHARING_ORDER`).

    Parameters
    ----------
    maps : np.ndarray
        (3, H, W) decoder maps, as for :func:`ais_from_maps`.
    settings : iterable of AISParams
        The parameter settings.

    Yields
    ------
    (AISParams, np.ndarray)
        Each setting and its uint32 (H, W) labels, equal to ``ais_from_maps(maps, params=setting)``.
    """
    maps = check_maps(maps)
    smoothed: dict[tuple[int, float], np.ndarray] = {}
    masks: dict[tuple[float, float], np.ndarray] = {}
    last_key, last = None, None

    def smoothed_map(channel: int, sigma: float) -> np.ndarray:
        if (channel, sigma) not in smoothed:
            raw = channel == 0 and not sigma > 0  # an unsmoothed foreground is the map itself
            smoothed[channel, sigma] = maps[channel] if raw else smooth(maps[channel], sigma)
        return smoothed[channel, sigma]

    for p in settings:
        fs, ds = p.foreground_smoothing, p.distance_smoothing
        if (fs, p.foreground_threshold) not in masks:
            masks[fs, p.foreground_threshold] = smoothed_map(0, fs) > p.foreground_threshold
        fg_mask = masks[fs, p.foreground_threshold]
        seed_key = dataclasses.replace(p, min_size=0)
        if seed_key != last_key:
            bd = smoothed_map(2, ds)
            markers = seed_labels(fg_mask, smoothed_map(1, ds), bd, p)
            last_key, last = seed_key, (seeded_watershed(bd, markers, fg_mask) if markers.max() else None)
        if last is None:
            yield p, np.zeros(fg_mask.shape, np.uint32)
        else:
            yield p, final_labels(last, p.min_size)
