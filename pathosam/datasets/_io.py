"""Reading pixels for the dataset readers: images -> RGB uint8 (the one reader and conversion rule
of :mod:`pathosam.image`), label arrays -> consecutive uint32 instance labels, MATLAB files,
polygon rasterisation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..image import IMAGE_SUFFIXES, read_image, to_rgb_uint8
from ..relabel import integer_ids, relabel_consecutive

__all__ = ["IMAGE_SUFFIXES", "LABEL_SUFFIXES", "as_integer_labels", "class_map_from_ids", "loadmat", "mat_variables",
           "polygon_pixels", "read_array", "read_instances", "read_rgb", "relabel_consecutive", "to_rgb_uint8"]

#: Label image files: the image suffixes without the lossy JPEG, and numpy arrays.
LABEL_SUFFIXES = tuple(s for s in IMAGE_SUFFIXES if s not in (".jpg", ".jpeg")) + (".npy",)


def read_array(path: str | os.PathLike) -> np.ndarray:
    """Pixels of a label image/array file as stored: ``.npy`` (numpy), else
    :func:`pathosam.image.read_image` with ``labels=True`` (palette images give their indices)."""
    path = Path(path)
    if path.suffix.lower() != ".npy":
        return read_image(path, labels=True)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the file ({exc})") from exc


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB: :func:`pathosam.image.read_image` then
    :func:`pathosam.image.to_rgb_uint8`."""
    return to_rgb_uint8(read_image(path), name=str(path))


def as_integer_labels(a: np.ndarray, what: str) -> np.ndarray:
    """A 2-D label array with whole, non-negative values -> int64 (floats allowed if integral)."""
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D label image, got shape {a.shape}")
    try:
        return integer_ids(a).astype(np.int64)
    except ValueError as err:
        raise ValueError(f"{what}: {err}") from None


def read_instances(path: str | os.PathLike) -> np.ndarray:
    """Read an instance label image file -> (H, W) uint32 with ids 1..N."""
    return relabel_consecutive(as_integer_labels(read_array(path), str(path)))


def class_map_from_ids(labels: np.ndarray, ids, classes, what: str, require_all: bool = False) -> np.ndarray:
    """uint8 (H, W) class map from a per-nucleus table: every pixel of label ``ids[k]`` gets
    ``classes[k]``; labels without a row get 0 (or raise, ``require_all``)."""
    ids = np.asarray(ids).ravel().astype(np.int64)
    cls = np.asarray(classes).ravel().astype(np.int64)
    if ids.shape != cls.shape:
        raise ValueError(f"{what}: 'id' ({ids.size}) and 'class' ({cls.size}) have different lengths")
    if cls.size and (cls.min() < 0 or cls.max() > 255):
        raise ValueError(f"{what}: class ids outside 0..255")
    if ids.size and ids.min() < 0:
        raise ValueError(f"{what}: negative label ids")
    if require_all:
        present = np.unique(labels)
        missing = np.setdiff1d(present[present > 0], ids)
        if missing.size:
            raise ValueError(f"{what}: no class for label id(s) {missing[:10].tolist()}")
    top = max(int(labels.max()) if labels.size else 0, int(ids.max()) if ids.size else 0)
    lut = np.zeros(top + 1, np.uint8)
    lut[ids] = cls
    return lut[labels]


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
