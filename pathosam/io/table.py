"""Per-nucleus table (id, centroid, area, bounding box, class) and its CSV / Parquet writer.

Coordinates follow QuPath: x = column, y = row, in full-resolution pixels, pixel (row r,
col c) covering [c, c + 1] x [r, r + 1]; a one-pixel nucleus at (r, c) has its centroid at
(c + 0.5, r + 0.5) and bounding box (c, r, c + 1, r + 1).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from ..semantic import CLASS_NAMES
from .atomic import atomic_write
from .labels import as_label_image

#: Pixels per bincount pass: bounds the temporary memory for large images (about 50 MB).
_CHUNK_PIXELS = 1 << 22

COLUMNS = ("id", "centroid_x", "centroid_y", "area", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1")


def _check_ids(labels: np.ndarray) -> int:
    n = int(labels.max()) if labels.size else 0
    if n > labels.size:
        raise ValueError(
            f"label ids go up to {n} in an image of only {labels.size} pixels; relabel them to "
            "1..N first (skimage.segmentation.relabel_sequential)"
        )
    return n


def _moments(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel count, sum of row indices and sum of column indices of every id 0..n (chunked)."""
    h, w = labels.shape
    area = np.zeros(n + 1, np.int64)
    row_sum = np.zeros(n + 1, np.float64)
    col_sum = np.zeros(n + 1, np.float64)
    step = max(1, _CHUNK_PIXELS // max(w, 1))
    cols = np.arange(w, dtype=np.float64)
    for r0 in range(0, h, step):
        block = labels[r0 : r0 + step]
        flat = block.reshape(-1).astype(np.intp)
        rows = block.shape[0]
        area += np.bincount(flat, minlength=n + 1)
        # rows: sum over each row of r * count(row) = bincount weighted by r
        row_sum += np.bincount(flat, weights=np.repeat(np.arange(r0, r0 + rows, dtype=np.float64), w),
                               minlength=n + 1)
        col_sum += np.bincount(flat, weights=np.tile(cols, rows), minlength=n + 1)
    return area, row_sum, col_sum


def _class_name_lookup(class_names: Mapping[int, str]) -> np.ndarray:
    names = np.empty(256, dtype=object)
    names[:] = [f"class {k}" for k in range(256)]
    names[0] = ""
    for k, v in class_names.items():
        if not 0 < int(k) < 256:
            raise ValueError(f"class ids must be 1..255 (0 = unknown), got {k}")
        names[int(k)] = str(v)
    return names


def nucleus_table(
    labels: np.ndarray,
    classes: np.ndarray | None = None,
    probabilities: np.ndarray | None = None,
    class_names: Mapping[int, str] | None = None,
    offset: tuple[int, int] = (0, 0),
) -> pd.DataFrame:
    """One row per nucleus of a label image: centroid, area, bounding box and class.

    Parameters
    ----------
    labels : np.ndarray
        (H, W) integer label image indexed [row, col]; 0 = background, ids 1..N.
    classes : np.ndarray, optional
        uint8 (N + 1,) class of each id (``classes[i]`` for nucleus ``i``; 0 = unknown), as
        returned by :func:`pathosam.semantic.nucleus_classes`.
    probabilities : np.ndarray, optional
        float (N + 1,) probability of each id's class, indexed like ``classes``.
    class_names : mapping of int to str, optional
        Class id -> name; default :data:`pathosam.semantic.CLASS_NAMES` (PanNuke). Ids without
        a name are called ``"class K"``.
    offset : (int, int)
        ``(row0, col0)`` of ``labels``' top-left pixel in the full image (for blocks of a larger
        image): added to every y (row) and x (col) coordinate.

    Returns
    -------
    pandas.DataFrame
        One row per id present in ``labels``, ascending; ids in 1..N without any pixel get no
        row (no NaN rows). Columns:

        * ``id`` (uint32)
        * ``centroid_x``, ``centroid_y`` (float64): mean of the pixel centres, x = col + 0.5,
          y = row + 0.5 (+ offset), in full-resolution pixels
        * ``area`` (int64): pixel count
        * ``bbox_x0``, ``bbox_y0``, ``bbox_x1``, ``bbox_y1`` (int64): pixel-corner bounding box,
          x1 / y1 exclusive (+ offset)
        * with ``classes``: ``class_id`` (uint8) and ``class_name`` (str; the empty string ``""``
          for class 0, never None/NaN. Note that ``pandas.read_csv`` turns empty fields into NaN
          unless called with ``keep_default_na=False``)
        * with ``probabilities``: ``class_probability`` (float32)
    """
    labels = as_label_image(labels)
    n = _check_ids(labels)
    row0, col0 = (int(v) for v in offset)
    area, row_sum, col_sum = _moments(labels, n)
    ids = np.flatnonzero(area[1:]) + 1
    cnt = area[ids].astype(np.float64)
    boxes = np.zeros((ids.size, 4), np.int64)
    if ids.size:
        slices = ndimage.find_objects(labels, max_label=n)
        boxes[:] = [(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in slices if s is not None]
    boxes += (col0, row0, col0, row0)
    data: dict[str, np.ndarray] = {
        "id": ids.astype(np.uint32),
        "centroid_x": col_sum[ids] / cnt + 0.5 + col0,
        "centroid_y": row_sum[ids] / cnt + 0.5 + row0,
        "area": area[ids],
        "bbox_x0": boxes[:, 0],
        "bbox_y0": boxes[:, 1],
        "bbox_x1": boxes[:, 2],
        "bbox_y1": boxes[:, 3],
    }
    if classes is not None:
        classes = np.asarray(classes)
        if classes.ndim != 1 or classes.size < n + 1:
            raise ValueError(f"classes must be a 1-D array of length >= {n + 1} (indexed by id), got {classes.shape}")
        if classes.size and (classes.min() < 0 or classes.max() > 255):
            raise ValueError("class ids must lie in 0..255")
        class_id = classes[ids].astype(np.uint8)
        data["class_id"] = class_id
        data["class_name"] = _class_name_lookup(CLASS_NAMES if class_names is None else class_names)[class_id]
    if probabilities is not None:
        probabilities = np.asarray(probabilities)
        if probabilities.ndim != 1 or probabilities.size < n + 1:
            raise ValueError(
                f"probabilities must be a 1-D array of length >= {n + 1} (indexed by id), got {probabilities.shape}"
            )
        data["class_probability"] = probabilities[ids].astype(np.float32)
    df = pd.DataFrame(data)
    if "class_name" in df:
        df["class_name"] = df["class_name"].astype(str)
    return df


def write_table(
    df: pd.DataFrame,
    csv_path: str | os.PathLike | None = None,
    parquet_path: str | os.PathLike | None = None,
) -> list[Path]:
    """Write a table as CSV (no index) and/or Parquet (pyarrow), each atomically.

    Parameters
    ----------
    df : pandas.DataFrame
        E.g. from :func:`nucleus_table`.
    csv_path, parquet_path : str or os.PathLike, optional
        Output files; parent directories are created. At least one must be given.

    Returns
    -------
    list of Path
        The files written.
    """
    if csv_path is None and parquet_path is None:
        raise ValueError("write_table: give csv_path and/or parquet_path")
    written = []
    if csv_path is not None:
        with atomic_write(csv_path) as tmp:
            df.to_csv(tmp, index=False)
        written.append(Path(csv_path))
    if parquet_path is not None:
        with atomic_write(parquet_path) as tmp:
            df.to_parquet(tmp, index=False, engine="pyarrow")
        written.append(Path(parquet_path))
    return written
