"""HED stain jitter: random haematoxylin / eosin / DAB augmentation (not in the reference training)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from skimage.color import hed_from_rgb, rgb_from_hed

__all__ = ["HEDJitter", "hed_jitter"]

# skimage's stain unit: optical density divided by ln(1e6) (see rgb2hed / separate_stains)
_LOG_ADJUST = float(np.log(1e-6))


def _range3(value: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    r = np.asarray(value, dtype=np.float64)
    if r.shape == (2,):
        r = np.tile(r, (3, 1))
    if r.shape != (3, 2) or np.any(r[:, 0] > r[:, 1]):
        raise ValueError(f"{what} must be (low, high) or three such pairs (H, E, D), got {value!r}")
    return r


def hed_jitter(
    image: np.ndarray, scale: Sequence[float] | np.ndarray, shift: Sequence[float] | np.ndarray
) -> np.ndarray:
    """Scale and shift the haematoxylin / eosin / DAB concentrations of an RGB image.

    The colour deconvolution is skimage's (``hed_from_rgb`` / ``rgb_from_hed``, the matrices behind
    ``rgb2hed`` / ``hed2rgb``, in the same stain units: optical density / ln(1e6)); per pixel
    ``hed' = hed * scale + shift`` per channel, then back to RGB, clipped to 0..255. Unlike
    ``hed2rgb(rgb2hed(x))`` — which clips negative concentrations and so alters ~1 % of H&E pixels
    by up to tens of grey levels — the unclipped round trip used here is the identity (up to float
    rounding) for ``scale = 1, shift = 0``.

    Parameters
    ----------
    image : np.ndarray
        (H, W, 3) RGB, uint8 or float in 0..255.
    scale, shift : array-like of 3 floats
        Per-stain factors and offsets (H, E, D).

    Returns
    -------
    np.ndarray
        (H, W, 3) float32 RGB in 0..255 (not rounded).
    """
    rgb = np.asarray(image, dtype=np.float64) / 255.0
    np.maximum(rgb, 1e-6, out=rgb)
    stains = (np.log(rgb) / _LOG_ADJUST) @ hed_from_rgb
    stains = stains * np.asarray(scale, np.float64) + np.asarray(shift, np.float64)
    out = np.exp((stains * _LOG_ADJUST) @ rgb_from_hed)
    return (np.clip(out, 0.0, 1.0) * 255.0).astype(np.float32)


@dataclass(frozen=True)
class HEDJitter:
    """Random HED stain augmentation (not part of the reference training; off unless given).

    Per patch, for each stain channel c (H, E, D): ``scale_c ~ U(scale_range[c])``,
    ``shift_c ~ U(shift_range[c])``, then :func:`hed_jitter`. Ranges are one ``(low, high)`` pair
    for all three stains or three pairs. Shifts are in skimage's stain units (optical density /
    ln(1e6) ≈ OD / 13.8; typical H&E haematoxylin values are 0.01–0.2).

    Parameters
    ----------
    scale_range : sequence
        Range of the multiplicative factor.
    shift_range : sequence
        Range of the additive offset.
    """

    scale_range: tuple[float, float] | tuple[tuple[float, float], ...] = (0.95, 1.05)
    shift_range: tuple[float, float] | tuple[tuple[float, float], ...] = (-0.01, 0.01)

    def __post_init__(self) -> None:
        _range3(self.scale_range, "scale_range")
        _range3(self.shift_range, "shift_range")

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``(scale, shift)``, each of shape (3,).

        Parameters
        ----------
        rng : numpy.random.Generator
            Source of randomness.

        Returns
        -------
        tuple of np.ndarray
            Per-stain scale and shift.
        """
        s = _range3(self.scale_range, "scale_range")
        b = _range3(self.shift_range, "shift_range")
        scale = s[:, 0] + rng.random(3) * (s[:, 1] - s[:, 0])
        shift = b[:, 0] + rng.random(3) * (b[:, 1] - b[:, 0])
        return scale, shift

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Jitter ``image`` with freshly drawn parameters (see :func:`hed_jitter`).

        Parameters
        ----------
        image : np.ndarray
            (H, W, 3) RGB, 0..255.
        rng : numpy.random.Generator
            Source of randomness.

        Returns
        -------
        np.ndarray
            (H, W, 3) float32 RGB in 0..255.
        """
        scale, shift = self.sample(rng)
        return hed_jitter(image, scale, shift)
