"""QuPath-importable GeoJSON of a label image: one Feature per nucleus, streamed to disk.

Format (see ``reference/samapi-qupath.md`` section 4): a ``FeatureCollection`` whose Features
carry the exact pixel-edge outline (:func:`~pathosam.io.outlines.label_polygons`) in
full-resolution pixel-corner coordinates (x = col, y = row), ``properties.objectType``,
``properties.classification`` (``{"name", "color": [r, g, b]}``) when the nucleus has a class,
and ``properties.measurements`` (numbers only; a value that is not finite is left out, never
written as NaN or null). Measurement names, rounding and colours come from
:mod:`pathosam.io.schema`, for images (:func:`write_geojson`) and slides
(:func:`traced_features`) alike. Each Feature's ``id`` is a UUID derived from the label id
(uuid5), so re-running gives an identical file.
"""

from __future__ import annotations

import gzip as gzip_module
import io
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_write
from .labels import as_label_image
from .outlines import Part, label_outlines, label_polygons, object_outline
from .schema import CLASS_COLORS, COLUMNS, COORDINATE_DECIMALS, class_color, classification
from .table import nucleus_table

__all__ = ["CLASS_COLORS", "ID_NAMESPACE", "MEASUREMENTS", "OBJECT_TYPES", "class_color", "label_polygons",
           "make_feature", "traced_features", "write_features", "write_geojson"]

#: Namespace of the Feature ids: ``uuid5(ID_NAMESPACE, f"{id_namespace}:{label_id}")``.
ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "pathosam/nucleus")

#: Object types QuPath reads from ``properties.objectType``.
OBJECT_TYPES = ("annotation", "detection", "cell", "tile", "tmaCore")

#: Table column -> (QuPath measurement name, decimals kept), from :data:`pathosam.io.schema.COLUMNS`.
MEASUREMENTS: dict[str, tuple[str, int | None]] = {
    c.name: (c.measurement, c.decimals) for c in COLUMNS if c.measurement is not None
}


def _closed(ring: np.ndarray) -> list:
    coords = ring.tolist()
    coords.append(coords[0])
    return coords


def _vertices(ring: np.ndarray) -> np.ndarray:
    """Outline vertices as written: rounded to COORDINATE_DECIMALS, integers when integral."""
    if ring.dtype.kind == "f":
        ring = np.round(ring, COORDINATE_DECIMALS)
        if np.array_equal(ring, np.round(ring)):
            ring = ring.astype(np.int64)
    return ring


def _geometry(parts: list[Part]) -> dict:
    """GeoJSON geometry of an outline: rings closed, integer coordinates stay integers."""
    polys = [[_closed(_vertices(r)) for r in (shell, *holes)] for shell, holes in parts]
    if len(polys) == 1:
        return {"type": "Polygon", "coordinates": polys[0]}
    return {"type": "MultiPolygon", "coordinates": polys}


def _properties(table: pd.DataFrame) -> tuple[np.ndarray, dict[str, list], list | None]:
    """Label id of each row, measurement values (by QuPath name, rounded as the schema says;
    None where not finite) and class names, as Python lists."""
    if "id" not in table:
        raise ValueError("the nucleus table needs an 'id' column (see pathosam.io.nucleus_table)")
    values = {}
    for col, (name, decimals) in MEASUREMENTS.items():
        if col in table:
            v = pd.to_numeric(table[col], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            if decimals is not None:
                v = np.round(v, decimals)
            finite = np.isfinite(v)
            as_int = pd.api.types.is_integer_dtype(table[col].dtype)
            values[name] = [
                (int(x) if as_int else float(x)) if ok else None for x, ok in zip(v.tolist(), finite.tolist())
            ]
    names = None
    if "class_name" in table:
        names = [x if isinstance(x, str) else "" for x in table["class_name"].tolist()]
    return table["id"].to_numpy().astype(np.int64), values, names


def _table_columns(table: pd.DataFrame, max_id: int) -> tuple[np.ndarray, dict[str, list], list | None]:
    """Row of each label id (-1 = none), measurement values and class names as Python lists."""
    ids, values, names = _properties(table)
    row = np.full(max_id + 1, -1, np.intp)
    keep = (ids >= 0) & (ids <= max_id)
    row[ids[keep]] = np.flatnonzero(keep)
    return row, values, names


def make_feature(
    lid: int, parts: list[Part], object_type: str = "detection", class_name: str = "",
    measurements: dict | None = None, id_namespace: str | None = "",
) -> dict:
    """One QuPath Feature: outline ``parts`` (as :func:`~pathosam.io.outlines.label_outlines`
    yields them: (x, y) pixel corners), a classification when ``class_name`` is non-empty,
    finite measurements only."""
    feature: dict = {"type": "Feature"}
    if id_namespace is not None:
        feature["id"] = str(uuid.uuid5(ID_NAMESPACE, f"{id_namespace}:{lid}"))
    feature["geometry"] = _geometry(parts)
    props: dict = {"objectType": object_type}
    cls = classification(class_name)
    if cls is not None:
        props["classification"] = cls
    m = {k: v for k, v in (measurements or {}).items() if v is not None and np.isfinite(v)}
    if m:
        props["measurements"] = m
    feature["properties"] = props
    return feature


def _features(
    labels: np.ndarray,
    table: pd.DataFrame | None,
    object_type: str,
    offset: tuple[float, float],
    id_namespace: str | None,
) -> Iterator[dict]:
    max_id = int(labels.max()) if labels.size else 0
    row, values, names = (np.full(max_id + 1, -1), {}, None) if table is None else _table_columns(table, max_id)
    for lid, parts in label_outlines(labels, offset):
        r = int(row[lid])
        name = names[r] if r >= 0 and names is not None else ""
        m = {k: v[r] for k, v in values.items()} if r >= 0 else None
        yield make_feature(lid, parts, object_type, name, m, id_namespace)


def traced_features(
    labels,
    bbox: np.ndarray,
    table: pd.DataFrame,
    groups: np.ndarray,
    *,
    offset: tuple[float, float] = (0, 0),
    scale: float = 1.0,
    object_type: str = "detection",
    id_namespace: str | None = "",
) -> Iterator[dict]:
    """Features of the nuclei of ``table``, each traced from its bounding box in ``labels``
    (for label images too large to hold: a slide's zarr array, read one group at a time).

    Parameters
    ----------
    labels : array-like
        (H, W) integer label image indexed [row, col] (numpy or zarr; sliced, never read whole).
    bbox : np.ndarray
        int (N, 4) (min_row, min_col, max_row + 1, max_col + 1) of each row of ``table`` in
        ``labels``.
    table : pandas.DataFrame
        The rows' per-nucleus table (:func:`~pathosam.io.table.nuclei_table`, ``id`` = label value):
        measurements and classification.
    groups : np.ndarray
        (N,) group of each row: the nuclei of one group are traced from one region of
        ``labels`` (the union of their boxes; e.g. one column of blocks), groups in ascending
        order, rows in table order within a group.
    offset : (float, float)
        ``(row0, col0)``: full-resolution position of ``labels``' top-left corner.
    scale : float
        ``labels`` pixels per full-resolution pixel; outlines are converted to full-resolution
        pixel corners x = col0 + col / scale, y = row0 + row / scale.
    object_type, id_namespace
        As :func:`write_geojson`.

    Yields
    ------
    dict
        One Feature per row, as :func:`make_feature`.
    """
    if not len(table):
        return
    ids, values, names = _properties(table)
    bbox = np.asarray(bbox).reshape(-1, 4)
    row0, col0 = offset
    for g in np.unique(groups):
        group = np.flatnonzero(groups == g)
        lo = bbox[group, :2].min(axis=0)
        hi = bbox[group, 2:].max(axis=0)
        region = np.asarray(labels[lo[0] : hi[0], lo[1] : hi[1]])
        for k in group:
            r0, c0, r1, c1 = bbox[k]
            crop = region[r0 - lo[0] : r1 - lo[0], c0 - lo[1] : c1 - lo[1]]
            parts = []
            for shell, holes in object_outline(crop, ids[k], (c0, r0)):
                rings = [np.stack([col0 + r[:, 0] / scale, row0 + r[:, 1] / scale], axis=1) for r in (shell, *holes)]
                parts.append((rings[0], rings[1:]))
            yield make_feature(int(ids[k]), parts, object_type, names[k] if names else "",
                               {name: v[k] for name, v in values.items()}, id_namespace)


def write_features(path: str | os.PathLike, features, total: int | None = None, gzip: bool | None = None,
                   progress: bool = True) -> Path:
    """Stream an iterable of Feature dicts into a FeatureCollection file (atomic; gzip when
    ``gzip`` or the name ends with ``.gz``; no time stamp in the gzip header)."""
    from tqdm.auto import tqdm

    path = Path(path)
    compress = path.name.lower().endswith(".gz") if gzip is None else bool(gzip)
    with atomic_write(path) as tmp, open(tmp, "wb") as raw:
        stream = raw
        if compress:
            stream = gzip_module.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6)
        with io.TextIOWrapper(stream, encoding="utf-8", newline="\n") as text:
            text.write('{"type":"FeatureCollection","features":[')
            sep = "\n"
            for feature in tqdm(features, total=total, desc="GeoJSON", unit="objects", disable=not progress):
                text.write(sep)
                text.write(json.dumps(feature, allow_nan=False, separators=(",", ":"), ensure_ascii=False))
                sep = ",\n"
            text.write("\n]}\n")
    return path


def write_geojson(
    path: str | os.PathLike,
    labels: np.ndarray,
    table: pd.DataFrame | None = None,
    *,
    object_type: str = "detection",
    measurements: bool = True,
    gzip: bool | None = None,
    offset: tuple[float, float] = (0, 0),
    id_namespace: str | None = "",
    progress: bool = True,
) -> Path:
    """Write every object of a label image as a QuPath-importable GeoJSON FeatureCollection.

    Parameters
    ----------
    path : str or os.PathLike
        Output file (``.geojson``/``.json``, or ``.geojson.gz``); written atomically.
    labels : np.ndarray
        (H, W) integer label image indexed [row, col], 0 = background, ids 1..N.
    table : pandas.DataFrame, optional
        Per-nucleus table with an ``id`` column (e.g. :func:`~pathosam.io.nucleus_table`, with
        classes): supplies the measurements and the ``class_name`` classification. Default: the
        geometric table computed from ``labels`` (no classes).
    object_type : str
        ``properties.objectType``: ``"detection"`` (light, default), ``"annotation"``,
        ``"cell"``, ...
    measurements : bool
        Write ``properties.measurements``: the table columns that have a QuPath name in
        :data:`pathosam.io.schema.COLUMNS` (:data:`MEASUREMENTS`): ``"Label id"``, ``"Area px"``,
        ``"Centroid X px"``, ``"Centroid Y px"`` (full-resolution pixels, pixel centres at +0.5),
        ``"Area µm^2"`` and ``"Class probability"`` when the table has them, rounded as the
        schema says. Values that are not finite are left out.
    gzip : bool, optional
        Compress with gzip; default: when ``path`` ends with ``.gz``. The gzip header carries no
        time stamp, so identical inputs give identical bytes.
    offset : (float, float)
        ``(row0, col0)`` of ``labels`` in the full image, added to y and x of the outlines (and
        to the default table). A given ``table`` is used as is.
    id_namespace : str or None
        Feature ids are ``uuid5(ID_NAMESPACE, f"{id_namespace}:{label_id}")``; pass e.g. the
        image name so that objects of different images get different ids. None: no ids.
    progress : bool
        Show a progress bar.

    Returns
    -------
    Path
        ``path``.

    Notes
    -----
    Features are written one per line as they are traced (memory stays O(one object)); outline
    coordinates are pixel corners (x = col + col0, y = row + row0), integers when integral, rings
    closed, outer rings with positive shoelace area in x/y, holes negative, every geometry valid.
    Objects whose pixels touch only diagonally become MultiPolygons (one part per 4-connected
    component).
    """
    path = Path(path)
    if object_type not in OBJECT_TYPES:
        raise ValueError(f"{path}: object_type must be one of {OBJECT_TYPES}, got {object_type!r}")
    labels = as_label_image(labels, name=str(path))
    if table is None and measurements:
        table = nucleus_table(labels, offset=offset)
    if table is not None and not measurements:
        table = table[[c for c in ("id", "class_name") if c in table]]
    total = int(labels.max()) if labels.size else 0
    features = _features(labels, table, object_type, offset, id_namespace)
    return write_features(path, features, total, gzip, progress)
