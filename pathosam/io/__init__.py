"""Output writers: label TIFF, OME-Zarr, per-nucleus table (CSV / Parquet), QuPath GeoJSON.

Every writer writes atomically (:func:`atomic_write`): the final file appears only once it is
complete. Coordinates in tables and vectors are full-resolution pixels (a slide's level 0),
x = column, y = row, with pixel (row r, col c) covering [c, c + 1] x [r, r + 1] (QuPath's
convention).

Output schema (:mod:`.schema`): image runs (:func:`pathosam.automatic.save_segmentation`) and
slide runs (:func:`pathosam.wsi.pipeline.segment_slide`) write the same per-nucleus columns, in
this order, with the same dtypes (Parquet types alike), built by :func:`nuclei_table`:

=====================  =======  =====  ==========================================================
column                 dtype    unit   meaning
=====================  =======  =====  ==========================================================
``id``                 uint32          label value in the label image (1..N)
``centroid_x``         float64  px     mean x of the nucleus' pixel centres (column + 0.5)
``centroid_y``         float64  px     mean y of the nucleus' pixel centres (row + 0.5)
``area``               int64    px     number of full-resolution pixels (px²)
``area_um2``           float64  µm²    area in square micrometres (only when the pixel size is
                                       known)
``bbox_x0``            int64    px     left edge of the bounding box (inclusive)
``bbox_y0``            int64    px     top edge (inclusive)
``bbox_x1``            int64    px     right edge (exclusive: x0 + width)
``bbox_y1``            int64    px     bottom edge (exclusive: y0 + height)
``class_id``           uint8           class (with classes): id in the model's class scheme (PanNuke 1..5, CoNSeP 1..4), 0 = none
``class_name``         string          class name; ``""`` for class 0 (never null)
``class_probability``  float32         mean share of the chosen class (with classes), 0..1
=====================  =======  =====  ==========================================================

``area_um2`` is present when the pixel size (µm/px) is known: images when it is given
(``Segmentation.table(mpp=...)``, ``save_segmentation(..., mpp=...)``), slides from their
metadata or ``--mpp``. The class columns are present for runs with classes. A slide segmented at
another resolution (``target_mpp``) is converted back to level-0 pixels: centroids exactly,
bounding boxes rounded outwards, ``area`` rounded to the nearest pixel (``area_um2`` unrounded).

GeoJSON Features (one per nucleus) carry ``properties.measurements`` ``"Label id"`` (id),
``"Centroid X px"``, ``"Centroid Y px"`` (4 decimals), ``"Area px"``, ``"Area µm^2"`` (4
decimals, with the pixel size) and ``"Class probability"`` (6 decimals), and
``properties.classification`` ``{"name": class_name, "color": [r, g, b]}`` for nuclei with a
class (PanNuke / CoNSeP colours). Tables keep full precision.
"""

from __future__ import annotations

from .atomic import atomic_file_set, atomic_write, partial_path, prepare_output_dir
from .geojson import write_geojson
from .labels import read_label_tiff, write_label_tiff
from .outlines import label_outlines, label_polygons
from .table import nuclei_table, nucleus_table, write_table

__all__ = [
    "atomic_file_set",
    "atomic_write",
    "label_outlines",
    "label_polygons",
    "nuclei_table",
    "nucleus_table",
    "partial_path",
    "prepare_output_dir",
    "read_label_tiff",
    "write_geojson",
    "write_label_tiff",
    "write_table",
]
