"""Reading pixels for the dataset readers: images -> RGB uint8, label arrays -> consecutive uint32
instance labels, MATLAB files, polygon rasterisation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
LABEL_SUFFIXES = (".tif", ".tiff", ".png", ".bmp", ".npy")


def read_array(path: str | os.PathLike) -> np.ndarray:
    """Pixels of an image/array file as stored: TIFF (tifffile), ``.npy`` (numpy), others (Pillow;
    palette images give their indices)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            return tifffile.imread(path)
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        from PIL import Image

        with Image.open(path) as im:
            if im.mode in ("1",):
                im = im.convert("L")
            return np.asarray(im)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the file ({exc})") from exc


def to_rgb(image: np.ndarray, what: str) -> np.ndarray:
    """Any HxW / HxWxC / CxHxW image -> (H, W, 3) uint8 RGB.

    Gray is repeated, alpha (4th channel) dropped. uint8 passes unchanged; integer or float images
    whose values are whole numbers in 0..255 (e.g. PanNuke's float64 ``images.npy``) are cast
    exactly; anything else is min-max scaled over the whole image (as :mod:`pathosam.image`).
    """
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[0] in (3, 4) and a.shape[2] not in (3, 4):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4) or 0 in a.shape:
        raise ValueError(f"{what}: expected an image of shape HxW, HxWx3 or HxWx4, got {a.shape}")
    if a.dtype == bool or a.dtype.kind not in "uif":
        raise ValueError(f"{what}: unsupported pixel type {a.dtype}")
    c = a.shape[2]
    if c == 1:
        a = np.repeat(a, 3, axis=2)
    elif c == 2:  # gray + alpha
        a = np.repeat(a[..., :1], 3, axis=2)
    elif c == 4:
        a = a[..., :3]
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise ValueError(f"{what}: the image contains NaN or infinite values")
    lo, hi = a.min(), a.max()
    if lo >= 0 and hi <= 255 and (a.dtype.kind in "ui" or np.array_equal(a, np.round(a))):
        return a.astype(np.uint8)
    x = a.astype(np.float64)
    x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    return (x * 255).astype(np.uint8)


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB (see :func:`to_rgb`)."""
    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff", ".npy"):
        from PIL import Image

        if not path.is_file():
            raise FileNotFoundError(f"image not found: {path}")
        try:
            with Image.open(path) as im:
                if im.mode == "P":  # palette image: real colours
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                elif im.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
                    im = im.convert("RGB")
                arr = np.asarray(im)
        except OSError as exc:
            raise ValueError(f"{path}: cannot read the image ({exc})") from exc
    else:
        arr = read_array(path)
    return to_rgb(arr, str(path))


def as_integer_labels(a: np.ndarray, what: str) -> np.ndarray:
    """A 2-D label array with whole, non-negative values -> int64 (floats allowed if integral)."""
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D label image, got shape {a.shape}")
    if a.dtype == bool:
        return a.astype(np.int64)
    if a.dtype.kind == "f":
        if not np.isfinite(a).all() or not np.array_equal(a, np.round(a)):
            raise ValueError(f"{what}: label image of dtype {a.dtype} has non-integer values")
    elif a.dtype.kind not in "ui":
        raise ValueError(f"{what}: unsupported label dtype {a.dtype}")
    if a.size and a.min() < 0:
        raise ValueError(f"{what}: label image has negative values")
    return a.astype(np.int64)


def relabel_consecutive(labels: np.ndarray) -> np.ndarray:
    """Renumber the non-zero ids of ``labels`` to 1..N in increasing order of the old ids -> uint32.

    The partition into objects is unchanged (same pixels per object); 0 stays background.
    """
    lab = np.asarray(labels)
    if lab.dtype == bool or lab.dtype.kind not in "ui" or lab.dtype == np.uint64:
        lab = as_integer_labels(lab, "labels")
    if lab.size == 0:
        return lab.astype(np.uint32)
    top = int(lab.max())
    if top == 0:
        return np.zeros(lab.shape, np.uint32)
    if top <= 4 * lab.size + 65536:
        present = np.bincount(lab.ravel(), minlength=top + 1) > 0
        present[0] = False
        lut = np.cumsum(present).astype(np.uint32)
        if int(lut[-1]) == top:  # already 1..N
            return lab.astype(np.uint32)
        return lut[lab]
    ids, inverse = np.unique(lab, return_inverse=True)
    new = np.arange(len(ids), dtype=np.uint32) + (0 if ids[0] == 0 else 1)
    return new[inverse.reshape(lab.shape)]


def read_instances(path: str | os.PathLike) -> np.ndarray:
    """Read an instance label image file -> (H, W) uint32 with ids 1..N."""
    return relabel_consecutive(as_integer_labels(read_array(path), str(path)))


def loadmat(path: str | os.PathLike, keys: Sequence[str], optional: Iterable[str] = ()) -> dict[str, np.ndarray]:
    """The variables ``keys`` (required) and ``optional`` of a MATLAB v5 ``.mat`` file (scipy).

    MATLAB v7.3 files are HDF5, which scipy cannot read: a clear error says so.
    """
    from scipy.io import loadmat as _loadmat

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file not found: {path}")
    wanted = list(keys) + [k for k in optional if k not in keys]
    try:
        data = _loadmat(str(path), variable_names=wanted)
    except NotImplementedError as exc:  # scipy: "Please use HDF reader for matlab v7.3 files"
        raise ValueError(
            f"{path}: MATLAB v7.3 (HDF5) file, which scipy.io.loadmat cannot read; convert it to a v5 .mat "
            f"(MATLAB: save(..., '-v7')) or read it with h5py (note: h5py returns the arrays transposed)"
        ) from exc
    except (ValueError, TypeError, OSError) as exc:
        raise ValueError(f"{path}: cannot read the MATLAB file ({exc})") from exc
    missing = [k for k in keys if k not in data]
    if missing:
        try:
            from scipy.io import whosmat

            found = ", ".join(v[0] for v in whosmat(str(path)))
        except Exception:  # noqa: BLE001 - only for the message
            found = "?"
        raise ValueError(f"{path}: missing variable(s) {', '.join(missing)} (the file has: {found})")
    return {k: data[k] for k in wanted if k in data}


def mat_variables(path: str | os.PathLike) -> set[str]:
    """Variable names of a MATLAB v5 file (empty set when it cannot be read)."""
    from scipy.io import whosmat

    try:
        return {v[0] for v in whosmat(str(path))}
    except Exception:  # noqa: BLE001 - detection must not fail on odd files
        return set()


def polygon_pixels(parts: Sequence[tuple[np.ndarray, Sequence[np.ndarray]]], shape: tuple[int, int]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (rows, cols) covered by a polygon with holes, or a multi-polygon.

    ``parts`` is a list of (exterior, holes); each ring is an (N, 2) array of (row, col)
    coordinates in the frame of :func:`skimage.draw.polygon`, where pixel (r, c) is the point
    (r, c): a pixel belongs to the object when its centre lies inside the exterior ring of a part
    and outside that part's holes (parts are united). Pixels outside ``shape`` are clipped.
    """
    from skimage.draw import polygon

    rings = [np.asarray(ext, dtype=np.float64) for ext, _ in parts if len(ext) >= 3]
    if not rings:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    allpts = np.concatenate(rings)
    r0 = max(int(np.floor(allpts[:, 0].min())), 0)
    c0 = max(int(np.floor(allpts[:, 1].min())), 0)
    r1 = min(int(np.ceil(allpts[:, 0].max())) + 1, shape[0])
    c1 = min(int(np.ceil(allpts[:, 1].max())) + 1, shape[1])
    if r1 <= r0 or c1 <= c0:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    local = np.zeros((r1 - r0, c1 - c0), bool)
    for ext, holes in parts:
        ext = np.asarray(ext, dtype=np.float64)
        if len(ext) < 3:
            continue
        part = np.zeros_like(local)
        rr, cc = polygon(ext[:, 0] - r0, ext[:, 1] - c0, shape=local.shape)
        part[rr, cc] = True
        for hole in holes:
            hole = np.asarray(hole, dtype=np.float64)
            if len(hole) < 3:
                continue
            rr, cc = polygon(hole[:, 0] - r0, hole[:, 1] - c0, shape=local.shape)
            part[rr, cc] = False
        local |= part
    rr, cc = np.nonzero(local)
    return rr + r0, cc + c0
