"""Label images as TIFF: uint32 (H, W), zlib-compressed, tiled when large, written atomically."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .atomic import atomic_write

#: Images larger than this on either side are written as 256 x 256 tiles (else one strip set).
TILE_ABOVE = 2048
TILE = (256, 256)
_UINT32_MAX = np.iinfo(np.uint32).max
# tifffile's own threshold for switching to BigTIFF (4 GiB minus room for the tags).
_BIGTIFF_BYTES = 2**32 - 2**25


def as_label_image(labels: np.ndarray, name: str = "labels") -> np.ndarray:
    """Check a label image and return it as a uint32 (H, W) array (a view when already uint32).

    Parameters
    ----------
    labels : np.ndarray
        (H, W) array of any integer dtype, indexed [row, col]; 0 = background.
    name : str
        What to call the array (e.g. a file name) in error messages.

    Raises
    ------
    ValueError
        When ``labels`` is not 2-D, not of an integer dtype, or has values outside
        0 .. 2**32 - 1.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"{name}: a label image must be 2-D (H, W), got shape {labels.shape}")
    if labels.dtype == bool or labels.dtype.kind not in "ui":
        raise ValueError(f"{name}: a label image must have an integer dtype, got {labels.dtype}")
    if labels.dtype == np.uint32:
        return labels
    if labels.size:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi > _UINT32_MAX:
            raise ValueError(f"{name}: label values must lie in 0..{_UINT32_MAX}, got {lo}..{hi}")
    return labels.astype(np.uint32)


def write_label_tiff(path: str | os.PathLike, labels: np.ndarray) -> Path:
    """Write a label image as a zlib-compressed uint32 TIFF, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Output file (``.tif``/``.tiff``); parent directories are created.
    labels : np.ndarray
        (H, W) integer label image indexed [row, col], 0 = background; cast to uint32
        (see :func:`as_label_image`).

    Returns
    -------
    Path
        ``path``.

    Notes
    -----
    Images larger than 2048 px on either side are stored as 256 x 256 tiles (fast random access
    in QuPath, napari, tifffile); BigTIFF is used when the uncompressed data approach 4 GiB.
    The file appears under ``path`` only once complete (:func:`~pathosam.io.atomic.atomic_write`).
    """
    import tifffile

    path = Path(path)
    labels = np.ascontiguousarray(as_label_image(labels, name=str(path)))
    tiled = max(labels.shape) > TILE_ABOVE
    with atomic_write(path) as tmp:
        tifffile.imwrite(
            tmp,
            labels,
            photometric="minisblack",
            compression="zlib",
            tile=TILE if tiled else None,
            bigtiff=labels.nbytes > _BIGTIFF_BYTES,
            metadata=None,
        )
    return path


def read_label_tiff(path: str | os.PathLike) -> np.ndarray:
    """Read a label image TIFF as uint32 (H, W), indexed [row, col].

    Raises
    ------
    ValueError
        When the file does not hold a 2-D integer image with values in 0 .. 2**32 - 1.
    """
    import tifffile

    path = Path(path)
    data = tifffile.imread(path)
    data = np.squeeze(data) if data.ndim > 2 else data
    return np.ascontiguousarray(as_label_image(data, name=str(path)))
