"""The ONE output schema of a segmentation, for images and slides alike: per-nucleus table
columns (:data:`COLUMNS`: order, dtypes, units), Parquet types, GeoJSON measurement names and
rounding, classification colours. The column table is in :mod:`pathosam.io`'s docstring.

Coordinates are full-resolution pixels (a slide's level 0), x = column, y = row, pixel edges:
pixel (row r, col c) covers [c, c + 1] x [r, r + 1]. A nucleus of one pixel at (r, c) has its
centroid at (c + 0.5, r + 0.5) and its bounding box (c, r, c + 1, r + 1).

Rounding: tables (Parquet, CSV) keep full precision; GeoJSON measurements are rounded to their
column's ``decimals`` and outline vertices to :data:`COORDINATE_DECIMALS` (integral values are
written as integers).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

__all__ = ["CLASS_COLORS", "COLUMNS", "COORDINATE_DECIMALS", "Column", "arrow_schema", "class_color",
           "classification", "columns", "nucleus_columns"]

When = Literal["always", "mpp", "classes", "probabilities"]


@dataclass(frozen=True)
class Column:
    """One column of the per-nucleus table.

    ``dtype``: numpy dtype name (``"str"`` for text); ``unit``: ``"px"`` (full-resolution
    pixels), ``"µm²"`` or ``""``; ``when``: the column is present always, when the pixel size is
    known (``"mpp"``), with classes, or with class probabilities; ``measurement``: its QuPath
    measurement name in GeoJSON (None: not a measurement); ``decimals``: rounding in GeoJSON.
    """

    name: str
    dtype: str
    unit: str
    description: str
    when: When = "always"
    measurement: str | None = None
    decimals: int | None = None


#: Decimals of outline vertices in GeoJSON (full-resolution pixels).
COORDINATE_DECIMALS = 4

COLUMNS: tuple[Column, ...] = (
    Column("id", "uint32", "", "label value in the label image", measurement="Label id"),
    Column("centroid_x", "float64", "px", "mean x of the pixel centres", measurement="Centroid X px", decimals=4),
    Column("centroid_y", "float64", "px", "mean y of the pixel centres", measurement="Centroid Y px", decimals=4),
    Column("area", "int64", "px", "number of full-resolution pixels", measurement="Area px"),
    Column("area_um2", "float64", "µm²", "area in square micrometres", "mpp", "Area µm^2", 4),
    Column("bbox_x0", "int64", "px", "bounding box left edge (inclusive)"),
    Column("bbox_y0", "int64", "px", "bounding box top edge (inclusive)"),
    Column("bbox_x1", "int64", "px", "bounding box right edge (exclusive)"),
    Column("bbox_y1", "int64", "px", "bounding box bottom edge (exclusive)"),
    Column("class_id", "uint8", "", "class id, 0 = none", "classes"),
    Column("class_name", "str", "", "class name, '' for class 0", "classes"),
    Column("class_probability", "float32", "", "mean share of the chosen class", "probabilities",
           "Class probability", 6),
)

_BY_NAME = {c.name: c for c in COLUMNS}


def columns(mpp: bool = False, classes: bool = False, probabilities: bool | None = None) -> tuple[Column, ...]:
    """The columns of a table, in order.

    Parameters
    ----------
    mpp : bool
        The pixel size is known (adds ``area_um2``).
    classes : bool
        The run has classes (adds ``class_id`` and ``class_name``).
    probabilities : bool, optional
        Adds ``class_probability``; default: as ``classes``.
    """
    on = {"always": True, "mpp": mpp, "classes": classes,
          "probabilities": classes if probabilities is None else probabilities}
    return tuple(c for c in COLUMNS if on[c.when])


def nucleus_columns(names: Iterable[str]) -> tuple[Column, ...] | None:
    """The schema columns named ``names`` (in that order), or None if any is not in the schema."""
    names = list(names)
    if not names or any(n not in _BY_NAME for n in names):
        return None
    return tuple(_BY_NAME[n] for n in names)


def arrow_schema(cols: Iterable[Column]):
    """The ``pyarrow.Schema`` of ``cols`` (Parquet types: uint32, float64, int64, uint8, string,
    float32), the same for image and slide outputs."""
    import pyarrow as pa

    types = {"uint32": pa.uint32(), "uint8": pa.uint8(), "int64": pa.int64(), "float64": pa.float64(),
             "float32": pa.float32(), "str": pa.string()}
    return pa.schema([(c.name, types[c.dtype]) for c in cols])


#: Colours of the PanNuke classes (HoVer-Net's PanNuke palette) and the CoNSeP classes, [r, g, b] 0..255.
CLASS_COLORS: dict[str, list[int]] = {
    "neoplastic": [255, 0, 0],
    "inflammatory": [0, 255, 0],
    "connective": [0, 0, 255],
    "dead": [255, 255, 0],
    "epithelial": [255, 165, 0],
    # CoNSeP (pathosam_small's class head): the colour of the nearest PanNuke class
    "other (CoNSeP)": [160, 160, 160],
    "inflammatory (CoNSeP)": [0, 255, 0],
    "epithelial (CoNSeP)": [255, 165, 0],
    "spindle-shaped (CoNSeP)": [0, 0, 255],
}


def class_color(name: str) -> list[int]:
    """[r, g, b] of a class: the palette above (PanNuke, CoNSeP), else a fixed colour derived
    from the name."""
    if name in CLASS_COLORS:
        return list(CLASS_COLORS[name])
    h = zlib.crc32(name.encode("utf-8"))
    return [(h >> 16) & 255, (h >> 8) & 255, h & 255]


def classification(name: str) -> dict | None:
    """QuPath ``properties.classification`` of a class name (None for ``""``: no class)."""
    return {"name": name, "color": class_color(name)} if name else None
