"""Output writers: label TIFF, per-nucleus table (CSV / Parquet), QuPath GeoJSON.

Every writer writes atomically (:func:`atomic_write`): the final file appears only once it is
complete. Coordinates in tables and vectors are full-resolution pixels, x = column, y = row,
with pixel (row r, col c) covering [c, c + 1] x [r, r + 1] (QuPath's convention).
"""

from __future__ import annotations

from .atomic import atomic_file_set, atomic_write, partial_path, prepare_output_dir
from .geojson import write_geojson
from .labels import read_label_tiff, write_label_tiff
from .polygons import label_outlines, label_polygons
from .table import nucleus_table, write_table

__all__ = [
    "atomic_file_set",
    "atomic_write",
    "label_outlines",
    "label_polygons",
    "nucleus_table",
    "partial_path",
    "prepare_output_dir",
    "read_label_tiff",
    "write_geojson",
    "write_label_tiff",
    "write_table",
]
