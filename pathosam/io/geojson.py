"""QuPath-importable GeoJSON of a label image: one Feature per nucleus, streamed to disk.

Format (see ``reference/samapi-qupath.md`` section 4): a ``FeatureCollection`` whose Features
carry the exact pixel-edge outline (:func:`~pathosam.io.polygons.label_polygons`) in
full-resolution pixel-corner coordinates (x = col, y = row), ``properties.objectType``,
``properties.classification`` (``{"name", "color": [r, g, b]}``) when the nucleus has a class,
and ``properties.measurements`` (numbers only; a value that is not finite is left out, never
written as NaN or null). Each Feature's ``id`` is a UUID derived from the label id (uuid5), so
re-running gives an identical file.
"""

from __future__ import annotations

import gzip as gzip_module
import io
import json
import os
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_write
from .labels import as_label_image
from .polygons import Part, label_outlines, label_polygons
from .table import nucleus_table

__all__ = ["CLASS_COLORS", "ID_NAMESPACE", "OBJECT_TYPES", "class_color", "label_polygons", "make_feature",
           "write_features", "write_geojson"]

#: Colours of the PanNuke classes (HoVer-Net's PanNuke palette), [r, g, b] 0..255.
CLASS_COLORS: dict[str, list[int]] = {
    "neoplastic": [255, 0, 0],
    "inflammatory": [0, 255, 0],
    "connective": [0, 0, 255],
    "dead": [255, 255, 0],
    "epithelial": [255, 165, 0],
}

#: Namespace of the Feature ids: ``uuid5(ID_NAMESPACE, f"{id_namespace}:{label_id}")``.
ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "pathosam/nucleus")

#: Object types QuPath reads from ``properties.objectType``.
OBJECT_TYPES = ("annotation", "detection", "cell", "tile", "tmaCore")

#: Table column -> QuPath measurement name, and the decimals kept.
MEASUREMENTS: dict[str, tuple[str, int | None]] = {
    "id": ("Label id", None),
    "area": ("Area px", None),
    "centroid_x": ("Centroid X px", 4),
    "centroid_y": ("Centroid Y px", 4),
    "class_probability": ("Class probability", 6),
}


def class_color(name: str) -> list[int]:
    """[r, g, b] of a class: the PanNuke palette, else a fixed colour derived from the name."""
    if name in CLASS_COLORS:
        return list(CLASS_COLORS[name])
    h = zlib.crc32(name.encode("utf-8"))
    return [(h >> 16) & 255, (h >> 8) & 255, h & 255]


def _closed(ring: np.ndarray) -> list:
    coords = ring.tolist()
    coords.append(coords[0])
    return coords


def _geometry(parts: list[Part]) -> dict:
    """GeoJSON geometry of an outline: rings closed, integer coordinates stay integers."""
    polys = [[_closed(r) for r in (shell, *holes)] for shell, holes in parts]
    if len(polys) == 1:
        return {"type": "Polygon", "coordinates": polys[0]}
    return {"type": "MultiPolygon", "coordinates": polys}


def _table_columns(table: pd.DataFrame, max_id: int) -> tuple[np.ndarray, dict[str, list], list | None]:
    """Row of each label id (-1 = none), measurement values and class names as Python lists."""
    if "id" not in table:
        raise ValueError("the nucleus table needs an 'id' column (see pathosam.io.nucleus_table)")
    ids = table["id"].to_numpy().astype(np.int64)
    row = np.full(max_id + 1, -1, np.intp)
    keep = (ids >= 0) & (ids <= max_id)
    row[ids[keep]] = np.flatnonzero(keep)
    values = {}
    for col, (name, decimals) in MEASUREMENTS.items():
        if col in table:
            v = pd.to_numeric(table[col], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            if decimals is not None:
                v = np.round(v, decimals)
            finite = np.isfinite(v)
            as_int = decimals is None and bool(np.all(v[finite] == np.round(v[finite])))
            values[name] = [
                (int(x) if as_int else float(x)) if ok else None for x, ok in zip(v.tolist(), finite.tolist())
            ]
    names = None
    if "class_name" in table:
        names = [x if isinstance(x, str) else "" for x in table["class_name"].tolist()]
    return row, values, names


def make_feature(
    lid: int, parts: list[Part], object_type: str = "detection", class_name: str = "",
    measurements: dict | None = None, id_namespace: str | None = "",
) -> dict:
    """One QuPath Feature: outline ``parts`` (as :func:`~pathosam.io.polygons.label_outlines`
    yields them), a classification when ``class_name`` is non-empty, finite measurements only."""
    feature: dict = {"type": "Feature"}
    if id_namespace is not None:
        feature["id"] = str(uuid.uuid5(ID_NAMESPACE, f"{id_namespace}:{lid}"))
    feature["geometry"] = _geometry(parts)
    props: dict = {"objectType": object_type}
    if class_name:
        props["classification"] = {"name": class_name, "color": class_color(class_name)}
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
        Write ``properties.measurements``: ``"Area px"``, ``"Centroid X px"``,
        ``"Centroid Y px"`` (full-resolution pixels, pixel centres at +0.5) and
        ``"Class probability"`` when the table has them. Values that are not finite are left out.
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
