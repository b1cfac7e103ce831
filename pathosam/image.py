"""Input contract and SAM preprocessing: the one image reader and the one conversion rule.

Every image file is read by :func:`read_image` (format sniffed from the content, any failure one
:class:`ImageReadError` naming the file; :data:`IMAGE_SUFFIXES` are the suffixes looked for in
folders), every image enters through :func:`to_rgb_uint8` (HxW, HxWx1/2/3/4 of any integer or float
dtype -> RGB uint8 HxWx3) and reaches the model through :func:`prepare_input` (resize of the
longest side to the model input size, 1024 for SAM (``PathoSAM.img_size``), with PIL bilinear,
exactly as SAM's ``ResizeLongestSide``). SAM's mean/std normalisation and zero padding happen in
:meth:`pathosam.models.sam.Sam.preprocess`. Inference, evaluation, training data and the dataset
readers all use this rule.

Normalisation modes (``normalization=``):
  * ``"none"`` (default): 8-bit values pass unchanged, as PathoSAM was trained and evaluated
    (micro-sam <= 1.6): RGB uint8 as it is, and an image of another dtype whose values are all
    whole numbers in 0..255 (a uint16 TIFF or PanNuke's float64 arrays holding 8-bit data) is cast
    exactly, never stretched. Any other image (values above 255, negative or fractional, e.g.
    16-bit or 0..1 float data) is min-max scaled to 0..255 over the whole image. The cast
    is per pixel, so it does not depend on tiling; the scaling does.
  * ``"minmax"``: every channel is min-max stretched to 0..255 (float32, truncated to uint8),
    per image or per tile: what micro-sam >= 1.7 does (and what the reference vectors used).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

Normalization = Literal["none", "minmax"]
NORMALIZATIONS = ("none", "minmax")
LONG_SIDE = 1024
#: Suffixes of the image files looked for in folders (``pathosam segment DIR``, dataset folders);
#: :func:`read_image` itself reads by content, whatever the suffix.
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")


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
    lo, hi = image.min(), image.max()
    if lo >= 0 and hi <= 255 and (image.dtype.kind in "ui" or np.array_equal(image, np.round(image))):
        return image.astype(np.uint8)  # 8-bit values in another dtype: cast, not stretched
    x = image.astype(np.float64)
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


class ImageReadError(ValueError):
    """A file that cannot be read as an image: truncated, corrupt, too large, not an image.

    The message starts with the file's path and says why, on one line.
    """


#: Largest image :func:`read_image` decodes into memory, in pixels (rows x cols): 2**28, about
#: 16384 x 16384 (768 MiB as RGB uint8). Larger images are whole slides: pyramidal or very large
#: TIFFs and slide formats take the streaming slide path instead (:mod:`pathosam.wsi`).
MAX_IMAGE_PIXELS = 1 << 28

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders


def is_tiff(path: str | os.PathLike) -> bool:
    """True when the file starts with a TIFF (or BigTIFF) header, whatever its suffix."""
    with open(path, "rb") as f:
        return f.read(4) in _TIFF_MAGIC


def tiff_truncation(tif, file_size: int) -> str | None:
    """Why an open ``tifffile.TiffFile`` is incomplete (image data past the end of the file), or
    None when every strip or tile of its first series (all pyramid levels) lies inside the file.
    Reads no pixels."""
    pages = [page for level in tif.series[0].levels for page in level.pages if page is not None]
    for page in pages:
        for offset, count in zip(page.dataoffsets, page.databytecounts):
            if count and offset + count > file_size:
                return (f"truncated: image data up to byte {offset + count:,} but the file has "
                        f"{file_size:,} bytes")
    return None


def _check_size(pixels: int, max_pixels: int, declared: str) -> None:
    if pixels > max_pixels:
        raise ImageReadError(
            f"declares {declared} ({pixels / 1e6:,.0f} Mpx), more than the {max_pixels / 1e6:,.0f} Mpx an "
            "image may have in memory; a whole slide must be a pyramidal TIFF or a slide format (SVS, "
            "NDPI, ...) to be read tile by tile"
        )


def _read_tiff(path: Path, max_pixels: int) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise ImageReadError("the TIFF holds no image (empty or truncated after its header)")
        series = tif.series[0]
        shape = series.shape
        if len(shape) >= 3 and shape[0] in (3, 4) and shape[-1] not in (3, 4):
            height, width = shape[1], shape[2]  # channels first
        else:
            height, width = shape[0], shape[1] if len(shape) > 1 else 1
        _check_size(int(height) * int(width), max_pixels, f"{width} x {height} px")
        problem = tiff_truncation(tif, path.stat().st_size)
        if problem:
            raise ImageReadError(problem)
        image = series.asarray()
    # channels-first small stacks (3, H, W) are common in TIFF: move channels last
    if image.ndim == 3 and image.shape[0] in (3, 4) and image.shape[2] not in (3, 4):
        image = np.moveaxis(image, 0, -1)
    return image


def _read_pillow(path: Path, max_pixels: int, labels: bool = False) -> np.ndarray:
    try:
        im = Image.open(path)  # reads the header only
    except Image.DecompressionBombError as err:  # Pillow's own limit (2 x Image.MAX_IMAGE_PIXELS) is lower
        m = re.search(r"\((\d+) pixels\).*?limit of (\d+)", str(err))
        declared, limit = (int(m.group(1)), int(m.group(2))) if m else (max_pixels + 1, max_pixels)
        _check_size(declared, min(max_pixels, limit), f"{declared:,} px")
        raise
    with im:
        _check_size(im.size[0] * im.size[1], max_pixels, f"{im.size[0]} x {im.size[1]} px")
        im.load()  # decodes: raises on truncated or corrupt data
        if labels:  # pixel values as stored: a palette image gives its indices
            return np.asarray(im.convert("L") if im.mode == "1" else im)
        if im.mode not in ("L", "RGB", "RGBA", "I;16", "I", "F"):
            im = im.convert("RGB")
        return np.asarray(im)


def describe_error(err: BaseException) -> str:
    """A decoder's exception as a short phrase: ``zlib.error: Error -3 ...`` (first line only)."""
    if type(err).__name__ == "UnidentifiedImageError":  # Pillow's message repeats the path
        return "not an image format that tifffile or Pillow reads (TIFF, PNG, JPEG, BMP, ...)"
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    kind = type(err).__name__
    if kind.islower() and type(err).__module__ not in ("builtins", "__main__"):
        kind = f"{type(err).__module__}.{kind}"  # zlib.error, struct.error
    return f"{kind}: {text}" if text and kind not in ("ImageReadError", "ValueError", "OSError") else (text or kind)


def tiff_mpp(tif) -> float | None:
    """Pixel size (um/px) of an open ``tifffile.TiffFile`` from OME-XML, an Aperio description or
    the resolution tags; None when unknown."""
    if tif.is_ome and tif.ome_metadata:
        m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tif.ome_metadata)
        unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', tif.ome_metadata)
        if m and (unit is None or unit.group(1) in ("µm", "um", "\u00b5m")):
            return float(m.group(1))
    page = tif.pages[0]
    desc = page.tags.get("ImageDescription")
    if desc is not None and isinstance(desc.value, str):
        m = re.search(r"MPP\s*=\s*([0-9.]+)", desc.value)
        if m:
            return float(m.group(1))
    xres, unit = page.tags.get("XResolution"), page.tags.get("ResolutionUnit")
    if xres is not None and unit is not None:
        num, den = xres.value
        if num > 0 and den > 0:
            per_unit = num / den  # pixels per unit
            scale = {2: 25400.0, 3: 10000.0}.get(int(unit.value))  # inch, centimetre -> um
            if scale and per_unit > 1:  # 1 px/unit = "no resolution" placeholder
                return scale / per_unit
    return None


def pixel_size(path: str | os.PathLike) -> float | None:
    """Pixel size in um/px recorded in an image file (TIFF metadata), or None when the file has
    none or is not a TIFF. Never raises for an unreadable file (reading reports that)."""
    try:
        if not is_tiff(path):
            return None
        import tifffile

        with tifffile.TiffFile(path) as tif:
            return tiff_mpp(tif)
    except Exception:  # noqa: BLE001 - metadata is optional; read_image reports broken files
        return None


def read_image(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS, labels: bool = False) -> np.ndarray:
    """Read an image file into memory as an array (H, W[, C]), whatever its suffix says.

    TIFF (by its header bytes) is read with tifffile, everything else with Pillow (PNG, JPEG,
    BMP, ...). Before decoding, the declared size is checked against ``max_pixels`` (a
    decompression bomb is refused without allocating it) and a TIFF's strips against the file
    size (a truncated TIFF is refused, not zero-filled). ``labels``: read a label image, pixel
    values as stored (palette images give their indices, not colours; any dtype).

    Raises
    ------
    FileNotFoundError
        ``path`` is not a file.
    ImageReadError
        For any failure of decoding. The rule: whatever a decoder raises while reading this
        file (``zlib.error``, ``struct.error``, ``EOFError``, ``SyntaxError``, ``MemoryError``,
        Pillow's ``DecompressionBombError``, ...) is a property of the file, so it becomes one
        ``ImageReadError`` naming the file and the cause; ``KeyboardInterrupt`` passes through.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        if path.stat().st_size == 0:
            raise ImageReadError("the file is empty")
        image = _read_tiff(path, max_pixels) if is_tiff(path) else _read_pillow(path, max_pixels, labels)
        if labels and image.size == 0:
            raise ImageReadError(f"the image is empty (shape {image.shape})")
    except ImageReadError as err:
        raise ImageReadError(f"{path}: cannot read this file as an image: {err}") from None
    except Exception as err:  # noqa: BLE001 - the rule above: any decoder failure is the file's
        raise ImageReadError(f"{path}: cannot read this file as an image ({describe_error(err)})") from None
    if not labels:
        try:
            check_image(image, str(path))  # its message names the file
        except ValueError as err:
            raise ImageReadError(str(err)) from None
    return image
