"""Decoding the ``b64img`` payload: base64 of an encoded image file -> RGB uint8 (H, W, 3).

samapi does ``np.array(Image.open(BytesIO(b64decode(s))))`` and hands the array to SAM as is, so
a grayscale PNG crashes (a typo in its gray-to-RGB helper) and an RGBA PNG breaks the predictor.
Here every PIL-readable image is converted through pathosam's input contract: palette, gray,
gray+alpha, RGBA, CMYK... via PIL to RGB; 16-bit and float images are scaled to 0..255 by
``pathosam.image.to_rgb_uint8``. The pixel count is checked from the header *before* decoding
(decompression bombs), and every failure is a :class:`RequestError` (HTTP 400): PIL's decoders
raise many exception types on malformed files, and all of them mean a bad upload here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import warnings

import numpy as np

from .errors import RequestError

__all__ = ["DEFAULT_MAX_IMAGE_PIXELS", "decode_b64", "decode_image", "image_key"]

#: Largest image accepted, in pixels (width x height); QuPath viewer regions are ~1-4 MP.
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096

_DATA_URL = re.compile(r"^data:[\w/+.-]*;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")


def image_key(b64img: str) -> str:
    """Hex SHA-256 of the ``b64img`` string as received (the embedding-cache key)."""
    return hashlib.sha256(b64img.encode("utf-8", "surrogatepass")).hexdigest()


def decode_b64(b64img: str) -> bytes:
    """Bytes of a standard base64 string (RFC 4648, padding optional; whitespace and a
    ``data:...;base64,`` prefix tolerated).

    Raises
    ------
    RequestError
        400 when the text is not base64 or empty.
    """
    text = _WHITESPACE.sub("", _DATA_URL.sub("", b64img.strip(), count=1))
    if not text:
        raise RequestError(400, "b64img is empty")
    text += "=" * (-len(text) % 4)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, "b64img is not valid base64 (standard alphabet A-Z a-z 0-9 + /)") from None
    if not data:
        raise RequestError(400, "b64img decodes to no bytes")
    return data


def decode_image(b64img: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode ``b64img`` to an RGB uint8 array (H, W, 3), indexed [row, col].

    Parameters
    ----------
    b64img : str
        Base64 of a PNG/JPEG/TIFF/... file (the QuPath extension sends 8-bit RGB PNG).
    max_pixels : int
        Largest accepted width x height.

    Raises
    ------
    RequestError
        400 for bad base64, bytes that are no image, a truncated file, too many pixels or an
        image smaller than 1 x 1.
    """
    from PIL import Image, UnidentifiedImageError

    from ..image import to_rgb_uint8

    data = decode_b64(b64img)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise RequestError(400, f"image of {w}x{h} px is larger than this server accepts "
                                        f"({max_pixels} px; see --max-image-pixels)")
            if w < 1 or h < 1:
                raise RequestError(400, f"image of {w}x{h} px is empty")
            img.seek(0)
            if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
                return to_rgb_uint8(np.asarray(img))  # 16-bit / 32-bit gray: scaled to 0..255
            if img.mode != "RGB":
                img = img.convert("RGBA" if "A" in img.mode or "transparency" in img.info else "RGB")
            arr = np.asarray(img)
    except RequestError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise RequestError(400, f"b64img is not an image file PIL can read ({type(err).__name__})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise RequestError(400, f"b64img could not be decoded as an image: {err}") from None
    except MemoryError:
        raise
    except Exception as err:  # PIL's decoders raise many types on crafted files (struct.error, ...)
        raise RequestError(400, f"b64img could not be decoded as an image ({type(err).__name__}: {err})") from None
    return to_rgb_uint8(arr)
