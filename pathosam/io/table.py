"""Per-nucleus table (id, centroid, area, bounding box, class) and its CSV / Parquet writers.

The columns, dtypes and units are those of :mod:`pathosam.io.schema` (the one schema of image
and slide outputs). Coordinates follow QuPath: x = column, y = row, in full-resolution pixels,
pixel (row r, col c) covering [c, c + 1] x [r, r + 1]; a one-pixel nucleus at (r, c) has its
centroid at (c + 0.5, r + 0.5) and bounding box (c, r, c + 1, r + 1).
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
from .schema import Column, arrow_schema, columns, nucleus_columns

#: Pixels per bincount pass: bounds the temporary memory for large images (about 50 MB).
_CHUNK_PIXELS = 1 << 22

#: The columns every table has (the schema's "always" columns), in order.
COLUMNS = tuple(c.name for c in columns())


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


def nuclei_table(
    ids: np.ndarray,
    area: np.ndarray,
    centroid: np.ndarray,
    bbox: np.ndarray,
    *,
    offset: tuple[int, int] = (0, 0),
    scale: float = 1.0,
    mpp: float | None = None,
    classes: np.ndarray | None = None,
    probabilities: np.ndarray | None = None,
    class_names: Mapping[int, str] | None = None,
) -> pd.DataFrame:
    """The per-nucleus table (:mod:`pathosam.io.schema`) from per-nucleus numbers of a label image.

    Images and slides both build their tables here, so the same pixels give the same table.

    Parameters
    ----------
    ids : np.ndarray
        (N,) label ids, one row each.
    area : np.ndarray
        (N,) pixel count of each nucleus in the label image.
    centroid : np.ndarray
        float (N, 2) (row, col) mean of the nucleus' pixel indices in the label image (pixel
        centres are at index + 0.5).
    bbox : np.ndarray
        int (N, 4) (min_row, min_col, max_row + 1, max_col + 1) in the label image.
    offset : (int, int)
        ``(row0, col0)``: full-resolution position of the label image's top-left corner, added
        to every y (row) and x (col).
    scale : float
        Label-image pixels per full-resolution pixel (slides segmented at another resolution;
        1 for images).
    mpp : float, optional
        Full-resolution pixel size in µm/px; adds ``area_um2``.
    classes : np.ndarray, optional
        (N,) class id of each row, 0..255 (0 = none); adds ``class_id`` and ``class_name``.
    probabilities : np.ndarray, optional
        (N,) probability of each row's class; adds ``class_probability``.
    class_names : mapping of int to str, optional
        Class id -> name; default :data:`pathosam.semantic.CLASS_NAMES` (PanNuke). Ids without
        a name are called ``"class K"``, class 0 ``""``.

    Returns
    -------
    pandas.DataFrame
        The schema's columns and dtypes, in order: x = col0 + (col + 0.5) / scale, bounding
        boxes rounded outwards to whole pixels, area = pixel count / scale**2 rounded to the
        nearest integer, area_um2 = pixel count / scale**2 * mpp**2 (unrounded).
    """
    row0, col0 = offset
    centroid = np.asarray(centroid, np.float64).reshape(-1, 2)
    bbox = np.asarray(bbox).reshape(-1, 4)
    px_area = np.asarray(area, np.float64) / scale**2
    values: dict[str, np.ndarray] = {
        "id": np.asarray(ids),
        "centroid_x": (centroid[:, 1] + 0.5) / scale + col0,
        "centroid_y": (centroid[:, 0] + 0.5) / scale + row0,
        "area": np.rint(px_area),
        "bbox_x0": np.floor(bbox[:, 1] / scale + col0),
        "bbox_y0": np.floor(bbox[:, 0] / scale + row0),
        "bbox_x1": np.ceil(bbox[:, 3] / scale + col0),
        "bbox_y1": np.ceil(bbox[:, 2] / scale + row0),
    }
    if mpp is not None:
        values["area_um2"] = px_area * float(mpp) ** 2
    if classes is not None:
        classes = np.asarray(classes)
        if classes.size and (classes.min() < 0 or classes.max() > 255):
            raise ValueError("class ids must lie in 0..255")
        values["class_id"] = classes
        names = _class_name_lookup(CLASS_NAMES if class_names is None else class_names)
        values["class_name"] = names[classes.astype(np.uint8)]
    if probabilities is not None:
        values["class_probability"] = np.asarray(probabilities)
    cols = columns(mpp is not None, classes is not None, probabilities is not None)
    return pd.DataFrame({c.name: _typed(values[c.name], c) for c in cols})


def _typed(values: np.ndarray, col: Column) -> pd.Series:
    """``values`` as a column of ``col``'s dtype (text: pandas' string dtype, never NaN)."""
    if col.dtype == "str":
        return pd.Series(np.asarray(values, dtype=object), dtype=object).astype(str)
    return pd.Series(np.asarray(values).astype(col.dtype))


def nucleus_table(
    labels: np.ndarray,
    classes: np.ndarray | None = None,
    probabilities: np.ndarray | None = None,
    class_names: Mapping[int, str] | None = None,
    offset: tuple[int, int] = (0, 0),
    mpp: float | None = None,
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
    mpp : float, optional
        Pixel size in µm/px: adds ``area_um2``.

    Returns
    -------
    pandas.DataFrame
        One row per id present in ``labels``, ascending; ids in 1..N without any pixel get no
        row (no NaN rows). Columns, dtypes and units as :mod:`pathosam.io.schema`:

        * ``id`` (uint32)
        * ``centroid_x``, ``centroid_y`` (float64): mean of the pixel centres, x = col + 0.5,
          y = row + 0.5 (+ offset), in pixels
        * ``area`` (int64): pixel count; with ``mpp``: ``area_um2`` (float64, µm²)
        * ``bbox_x0``, ``bbox_y0``, ``bbox_x1``, ``bbox_y1`` (int64): pixel-corner bounding box,
          x1 / y1 exclusive (+ offset)
        * with ``classes``: ``class_id`` (uint8) and ``class_name`` (str; the empty string ``""``
          for class 0, never None/NaN. Note that ``pandas.read_csv`` turns empty fields into NaN
          unless called with ``keep_default_na=False``)
        * with ``probabilities``: ``class_probability`` (float32)
    """
    labels = as_label_image(labels)
    n = _check_ids(labels)
    area, row_sum, col_sum = _moments(labels, n)
    ids = np.flatnonzero(area[1:]) + 1
    cnt = area[ids].astype(np.float64)
    boxes = np.zeros((ids.size, 4), np.int64)
    if ids.size:
        slices = ndimage.find_objects(labels, max_label=n)
        boxes[:] = [(s[0].start, s[1].start, s[0].stop, s[1].stop) for s in slices if s is not None]
    centroid = np.stack([row_sum[ids] / cnt, col_sum[ids] / cnt], axis=1)
    if classes is not None:
        classes = _per_id(classes, n, "classes")
        classes = classes[ids]
    if probabilities is not None:
        probabilities = _per_id(probabilities, n, "probabilities")[ids]
    return nuclei_table(ids, area[ids], centroid, boxes, offset=(int(offset[0]), int(offset[1])), mpp=mpp,
                        classes=classes, probabilities=probabilities, class_names=class_names)


def _per_id(values: np.ndarray, n: int, what: str) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim != 1 or values.size < n + 1:
        raise ValueError(f"{what} must be a 1-D array of length >= {n + 1} (indexed by id), got {values.shape}")
    return values


def write_table(
    df: pd.DataFrame,
    csv_path: str | os.PathLike | None = None,
    parquet_path: str | os.PathLike | None = None,
) -> list[Path]:
    """Write a table as CSV (no index) and/or Parquet (pyarrow), each atomically.

    Parameters
    ----------
    df : pandas.DataFrame
        E.g. from :func:`nucleus_table`. A per-nucleus table is written to Parquet with the
        schema's types (:func:`pathosam.io.schema.arrow_schema`, as slide tables are).
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
        cols = nucleus_columns(df.columns)
        schema = {} if cols is None else {"schema": arrow_schema(cols)}
        with atomic_write(parquet_path) as tmp:
            df.to_parquet(tmp, index=False, engine="pyarrow", **schema)
        written.append(Path(parquet_path))
    return written


class ParquetTableWriter:
    """Stream a per-nucleus table into one Parquet file, chunk by chunk (slides: one row of blocks
    at a time), with the schema's columns and types.

    Parameters
    ----------
    path : str or os.PathLike
        Output file (written directly: use it inside a staging folder or :func:`atomic_write`).
    mpp, classes : bool
        Whether the table has ``area_um2`` / the class columns (:func:`pathosam.io.schema.columns`).
    """

    def __init__(self, path: str | os.PathLike, mpp: bool = False, classes: bool = False) -> None:
        import pyarrow.parquet as pq

        self.schema = arrow_schema(columns(mpp, classes))
        self._writer = pq.ParquetWriter(os.fspath(path), self.schema)

    def write(self, df: pd.DataFrame) -> None:
        """Append rows (a table from :func:`nuclei_table` with the same columns)."""
        import pyarrow as pa

        self._writer.write_table(pa.Table.from_pandas(df, schema=self.schema, preserve_index=False))

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> ParquetTableWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
