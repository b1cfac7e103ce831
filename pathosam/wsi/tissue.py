"""Tissue detection on a slide thumbnail: Otsu on saturation, then morphology.

H&E tissue is coloured (saturated) while glass and background are grey or white. The mask is
computed on a thumbnail (a few million pixels at most), so it costs well under a second per slide.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def tissue_mask(
    thumbnail: np.ndarray,
    min_saturation: float = 0.05,
    max_value: float = 0.97,
    closing_px: int = 3,
    min_area_px: int = 64,
) -> np.ndarray:
    """Boolean tissue mask (H, W) of an RGB uint8 thumbnail (H, W, 3).

    Parameters
    ----------
    thumbnail : np.ndarray
        RGB uint8 image, axis order (row, col, channel).
    min_saturation : float
        Saturation (HSV, 0..1) below which a pixel is never tissue, whatever Otsu says (guards
        against slides that are nearly all background).
    max_value : float
        Pixels brighter than this (HSV value, 0..1: white glass, over-exposed) are not tissue.
    closing_px : int
        Radius (thumbnail pixels) of the closing and of the hole filling smoothing the mask.
    min_area_px : int
        Connected tissue pieces smaller than this many thumbnail pixels are dropped (dust).

    Returns
    -------
    np.ndarray
        bool (H, W), True = tissue.
    """
    rgb = np.asarray(thumbnail)
    if rgb.ndim != 3 or rgb.shape[2] < 3 or rgb.dtype != np.uint8:
        raise ValueError(f"thumbnail must be RGB uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    x = rgb[..., :3].astype(np.float32) / 255
    mx, mn = x.max(axis=2), x.min(axis=2)
    saturation = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0)
    threshold = max(_otsu(saturation), min_saturation)
    mask = (saturation > threshold) & (mx < max_value)
    if closing_px > 0:
        disk = _disk(closing_px)
        mask = ndimage.binary_closing(mask, disk, border_value=0)
        mask = ndimage.binary_fill_holes(mask)
        mask = ndimage.binary_opening(mask, _disk(max(1, closing_px // 2)))
    if min_area_px > 0 and mask.any():
        lab, n = ndimage.label(mask)
        sizes = np.bincount(lab.ravel(), minlength=n + 1)
        keep = sizes >= min_area_px
        keep[0] = False
        mask = keep[lab]
    return mask


def _disk(r: int) -> np.ndarray:
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return x * x + y * y <= r * r


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu threshold of values in [0, 1] (histogram-based, no skimage dependency needed)."""
    hist, edges = np.histogram(values.ravel(), bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    if hist.sum() == 0:
        return 0.0
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1e-12)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1e-12)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def tile_has_tissue(mask: np.ndarray, downsample: float, block: tuple[tuple[int, int], tuple[int, int]],
                    min_fraction: float = 0.0) -> bool:
    """Whether a level-0 block ((r0, c0), (r1, c1)) overlaps the tissue ``mask`` (thumbnail at
    ``downsample`` level-0 px per mask px) by more than ``min_fraction`` of its mask pixels."""
    (r0, c0), (r1, c1) = block
    a0, b0 = int(r0 // downsample), int(c0 // downsample)
    a1, b1 = int(np.ceil(r1 / downsample)), int(np.ceil(c1 / downsample))
    sub = mask[a0 : max(a1, a0 + 1), b0 : max(b1, b0 + 1)]
    return bool(sub.size) and float(sub.mean()) > min_fraction if min_fraction > 0 else bool(sub.any())
