"""Input contract and SAM preprocessing.

Every image enters through :func:`to_rgb_uint8` (HxW, HxWx1/2/3/4 of any integer or float
dtype -> RGB uint8 HxWx3) and reaches the model through :func:`prepare_input` (resize of the
longest side to the model input size, 1024 for SAM (``PathoSAM.img_size``), with PIL bilinear,
exactly as SAM's ``ResizeLongestSide``). SAM's mean/std normalisation and zero padding happen in
:meth:`pathosam.models.sam.Sam.preprocess`.

Normalisation modes (``normalization=``):
  * ``"none"`` (default): RGB uint8 passes unchanged, as PathoSAM was trained and evaluated
    (micro-sam <= 1.6). Other dtypes are min-max scaled to 0..255 over the whole image.
  * ``"minmax"``: every channel is min-max stretched to 0..255 (float32, truncated to uint8),
    per image or per tile: what micro-sam >= 1.7 does (and what the reference vectors used).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

Normalization = Literal["none", "minmax"]
NORMALIZATIONS = ("none", "minmax")
LONG_SIDE = 1024


def check_image(image: np.ndarray, name: str = "image") -> None:
    """Raise ValueError unless ``image`` has a supported pixel type and shape (reads no pixels)."""
    if image.dtype == bool or image.dtype.kind not in "uif":
        raise ValueError(f"{name}: unsupported pixel type {image.dtype}; expected an integer or float image")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] > 4):
        raise ValueError(
            f"{name}: expected an image of shape HxW, HxWx3 or HxWx4 (channels last), got shape {image.shape}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name}: the image is empty (shape {image.shape})")


def _as_hwc(image: np.ndarray, name: str) -> np.ndarray:
    image = np.asarray(image)
    check_image(image, name)
    if image.ndim == 2:
        image = image[..., None]
    c = image.shape[2]
    if c == 1:
        image = np.repeat(image, 3, axis=2)
    elif c == 2:
        image = np.concatenate([image, np.zeros_like(image[..., :1])], axis=2)
    elif c == 4:
        image = image[..., :3]  # alpha dropped
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise ValueError(f"{name}: the image contains NaN or infinite values")
    return image


def _minmax_per_channel(image: np.ndarray) -> np.ndarray:
    x = image.astype(np.float32)
    lo = x.min(axis=(0, 1))
    rng = x.max(axis=(0, 1)) - lo
    rng[rng == 0] = 1.0  # a constant channel becomes 0
    return ((x - lo) / rng * 255).astype(np.uint8)


def to_rgb_uint8(image: np.ndarray, normalization: Normalization = "none", name: str = "image") -> np.ndarray:
    """Convert any supported image to RGB uint8 (H, W, 3); see the module docstring."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    image = _as_hwc(image, name)
    if normalization == "minmax":
        return _minmax_per_channel(image)
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    x = image.astype(np.float64)
    lo, hi = x.min(), x.max()
    x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    return (x * 255).astype(np.uint8)


def preprocess_shape(h: int, w: int, long_side: int = LONG_SIDE) -> tuple[int, int]:
    """(H, W) after resizing the longest side to ``long_side`` (SAM's rounding)."""
    scale = long_side / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def resize_longest_side(image: np.ndarray, long_side: int = LONG_SIDE) -> np.ndarray:
    """Resize RGB uint8 (H, W, 3) so that its longest side is ``long_side`` (PIL bilinear)."""
    h, w = preprocess_shape(image.shape[0], image.shape[1], long_side)
    if (h, w) == image.shape[:2]:
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def prepare_input(
    rgb: np.ndarray, long_side: int = LONG_SIDE
) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """RGB uint8 (H, W, 3) -> float (3, h, w) 0..255 tensor, ``input_size`` (h, w), ``original_size`` (H, W).

    ``long_side``: the model input size (``PathoSAM.img_size``; 1024 for SAM).
    """
    resized = resize_longest_side(rgb, long_side)
    tensor = torch.from_numpy(np.array(resized, copy=True)).permute(2, 0, 1).float()
    return tensor, (resized.shape[0], resized.shape[1]), (rgb.shape[0], rgb.shape[1])


def transform_coords(coords: np.ndarray, original_size: tuple[int, int], long_side: int = LONG_SIDE) -> np.ndarray:
    """Map (..., 2) (x, y) pixel coordinates of an ``original_size`` (H, W) image to model space
    (``long_side`` = the model input size, 1024 for SAM)."""
    h, w = original_size
    nh, nw = preprocess_shape(h, w, long_side)
    out = np.array(coords, dtype=np.float64, copy=True)
    out[..., 0] *= nw / w
    out[..., 1] *= nh / h
    return out


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a TIFF (tifffile) or PNG/JPEG/other (Pillow) image as an array, with a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            image = tifffile.imread(path)
            # channels-first small stacks (3, H, W) are common in TIFF: move channels last
            if image.ndim == 3 and image.shape[0] in (3, 4) and image.shape[2] not in (3, 4):
                image = np.moveaxis(image, 0, -1)
            return image
        with Image.open(path) as im:
            if im.mode not in ("L", "RGB", "RGBA", "I;16", "I", "F"):
                im = im.convert("RGB")
            return np.asarray(im)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read this file as an image ({err})") from None
