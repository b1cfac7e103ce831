"""Automatic nucleus segmentation of one image: model -> decoder maps -> instances (+ classes).

:func:`segment_nuclei` / :func:`segment` are the user-level entry points; the tiles, their model
inputs, batching, TTA and pasting are :mod:`pathosam.inference`'s. For AIS on a tiled image it
streams: tiles are embedded and decoded batch by batch, each tile's maps go to the seam-free
block post-processing (:class:`pathosam.instances.tiled.TiledAIS`) and are dropped when no
neighbouring block needs them, so besides the label image only about one row of tile maps is
held (embeddings are never stored for the whole image).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .image import IMAGE_SUFFIXES, Normalization, check_image
from .inference import (BlockOutputs, TileInputs, image_tiles, input_size, iter_tile_maps, postprocessing_block,
                        postprocessing_halo, resolve_tiling, tile_outputs)
from .instances.params import AISParams, AMGParams, parameter_names
from .instances.tiled import TiledAIS
from .tiling import Tile

Mode = Literal["ais", "amg"]
#: Smallest image side (pixels) accepted for automatic segmentation.
MIN_SIDE = 8


@dataclass
class Segmentation:
    """Result of :func:`segment_nuclei`.

    ``labels``: uint32 (H, W), 0 = background, nuclei 1..N. ``classes`` / ``class_probabilities``:
    uint8 / float32 (N + 1,) indexed by nucleus id (0 = none), or None without ``classes=True``;
    ``class_names``: ``{class id: name}`` of the model's class scheme (PanNuke, CoNSeP, ...).
    ``seconds``: wall time per stage.
    """

    labels: np.ndarray
    mode: str
    classes: np.ndarray | None = None
    class_probabilities: np.ndarray | None = None
    class_names: dict[int, str] | None = None
    tile_shape: tuple[int, int] | None = None
    halo: tuple[int, int] | None = None
    parameters: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)

    @property
    def n_objects(self) -> int:
        return int(self.labels.max()) if self.labels.size else 0

    def table(self, offset: tuple[int, int] = (0, 0), mpp: float | None = None):
        """Per-nucleus table (pandas DataFrame) in the one output schema of images and slides
        (:mod:`pathosam.io.schema`): id, centroid, area[, area_um2], bbox[, class, probability].

        ``offset``: ``(row0, col0)`` added to y (row) and x (col); ``mpp``: pixel size in µm/px,
        adds ``area_um2``. Coordinates are pixel edges (a pixel's centre is at +0.5)."""
        from .io.table import nucleus_table

        return nucleus_table(self.labels, self.classes, self.class_probabilities, offset=offset, mpp=mpp,
                             class_names=self.class_names)


def ais_params(model, params: dict | None = None) -> AISParams:
    """AIS post-processing parameters for ``model``: ``params``, else the model's recommended
    values (``PathoSAM.ais_defaults``: the registry's for a registered model, however it was
    loaded), else the defaults of :class:`AISParams` (the reference's)."""
    return AISParams(**{**getattr(model, "ais_defaults", {}), **(params or {})})


def _split_params(mode: str, params: dict) -> dict:
    """``params`` checked against the fields of :class:`AISParams` / :class:`AMGParams` (unknown
    names: TypeError; AMG values out of range: ValueError; AIS values are checked by :func:`ais_params`)."""
    cls = AISParams if mode == "ais" else AMGParams
    allowed = parameter_names(cls)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise TypeError(f"unknown {mode} parameter(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    if cls is AMGParams:
        AMGParams(**params)
    return params


def segment_nuclei(
    image: np.ndarray,
    model=None,
    mode: Mode = "ais",
    tile_shape: tuple[int, int] | str | None = "auto",
    halo: tuple[int, int] | None = None,
    batch_size: int = 1,
    classes: bool = False,
    normalization: Normalization = "none",
    progress: bool = True,
    tta: bool = False,
    on_tiles: Callable[[list[Tile], list[np.ndarray]], None] | None = None,
    precision: str | None = None,
    **params,
) -> Segmentation:
    """Segment every nucleus of ``image`` automatically.

    Parameters
    ----------
    image : np.ndarray
        (H, W), (H, W, 3) or (H, W, 4) image, uint8/uint16/float (see ``pathosam.image``).
    model : PathoSAM or str
        A loaded model, or a registry name / checkpoint path for :func:`pathosam.load_model`.
    mode : {"ais", "amg"}
        "ais": UNETR decoder maps + seeded watershed (needs an instance decoder); "amg": SAM's
        automatic mask generation from a point grid.
    tile_shape, halo : (rows, cols)
        Tiling of the model input; ``"auto"`` = untiled up to 512 px, else 384 + 64 halo. The
        AIS post-processing uses the same blocks with ``halo`` as context (at least 32 px).
    batch_size : int
        Tiles per model call.
    classes : bool
        Also classify each nucleus with the semantic decoder (the classes of its scheme,
        ``model.class_scheme``: PanNuke for the published PathoSAM, CoNSeP for ``pathosam_small``).
    normalization : {"none", "minmax"}
        Intensity conversion to uint8 (``pathosam.image.to_rgb_uint8``).
    progress : bool
        Show progress bars.
    tta : bool
        AIS: test-time augmentation, the mean of the decoder maps of each tile and its three flips
        (:func:`pathosam.inference.tile_maps`); about 4x the model time, smoother boundaries and
        fewer split nuclei.
    on_tiles : callable, optional
        AIS: called after each batch of tiles (untiled: once, with one whole-image tile) with the
        tiles and their float32 (3, h, w) instance maps of each tile's outer block (read only). It
        may raise to stop the segmentation (cooperative cancellation: time limits, clients gone).
    precision : {"fp32", "bf16", "fp16", "auto"}, optional
        Arithmetic of the model for this call (:mod:`pathosam.precision`); None: the loaded
        model's (``load_model(precision=)``), fp32 for a model loaded here.
    **params
        Post-processing parameters: for AIS the fields of :class:`AISParams`
        (``center_distance_threshold``, ..., ``min_size``; those not given come from the
        model's ``ais_defaults``, then the reference's defaults), for AMG those of
        :class:`~pathosam.instances.params.AMGParams` (``pred_iou_thresh``, ...).

    Returns
    -------
    Segmentation
    """
    from .predictor import PathoSAM, load_model

    if mode not in ("ais", "amg"):
        raise ValueError(f"mode must be 'ais' or 'amg', got {mode!r}")
    if tta and mode != "ais":
        raise ValueError("tta (test-time augmentation of the decoder maps) needs mode='ais'")
    if on_tiles is not None and mode != "ais":
        raise ValueError("on_tiles needs mode='ais'")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    params = _split_params(mode, params)
    if model is None:
        from .registry import DEFAULT_MODEL

        model = DEFAULT_MODEL
    if not isinstance(model, PathoSAM):
        model = load_model(model, semantic_decoder=True if classes else None, progress=progress,
                           precision=precision or "fp32")
    if mode == "ais" and model.decoder is None:
        raise ValueError(f"model {model.name!r} has no instance (AIS) decoder; use mode='amg' or load a decoder")
    if classes and model.semantic_decoder is None:
        raise ValueError(f"model {model.name!r} has no semantic decoder; classes need one")
    image = np.asarray(image)
    check_image(image)
    if min(image.shape[:2]) < MIN_SIDE:
        raise ValueError(f"image of {image.shape[0]}x{image.shape[1]} px is too small to segment "
                         f"(at least {MIN_SIDE}x{MIN_SIDE} px)")
    ts, hl = resolve_tiling(image.shape[:2], tile_shape, halo, input_size(model))
    with model.using(precision):
        if mode == "ais":
            ais = ais_params(model, params)
            result = _ais(model, image, ts, hl, ais, classes, batch_size, normalization, progress, tta, on_tiles)
            result.parameters = {"mode": mode, **ais.__dict__, **({"tta": True} if tta else {})}
        else:
            result = _amg(model, image, ts, hl, params, classes, batch_size, normalization, progress)
            result.parameters = {"mode": mode, **params}
        if model.precision != "fp32":
            result.parameters["precision"] = model.precision
    result.tile_shape, result.halo = ts, hl
    if classes:
        result.class_names = model.class_scheme.id_names
    return result


def segment(image: np.ndarray, model=None, mode: Mode = "ais", **kwargs) -> np.ndarray:
    """uint32 (H, W) nucleus labels of ``image``; arguments as :func:`segment_nuclei`."""
    return segment_nuclei(image, model, mode, **kwargs).labels


# --------------------------------------------------------------------------------- AIS


def _ais(model, image: np.ndarray, tile_shape: tuple[int, int] | None, halo: tuple[int, int] | None,
         params: AISParams, classes: bool, batch_size: int, normalization: Normalization, progress: bool,
         tta: bool, on_tiles=None) -> Segmentation:
    """AIS of ``image``: the tiles' maps (:func:`pathosam.inference.iter_tile_maps`) streamed into
    the seam-free block post-processing, or untiled (``tile_shape`` None) :func:`ais_from_maps`
    of the whole image's maps."""
    from .instances.ais import ais_from_maps
    from .semantic import classes_from_sums, nucleus_classes

    shape = image.shape[:2]
    job = blocks = None
    if tile_shape is not None:  # post-processed in blocks of whole tiles
        block_shape = postprocessing_block(tile_shape)
        job = TiledAIS(shape, block_shape, postprocessing_halo(block_shape, halo, params.seeds), params)
        blocks = BlockOutputs(shape, tile_shape, block_shape)
    inputs = TileInputs(image, normalization, input_size(model))
    whats = ("instance", "semantic") if classes else ("instance",)
    t_model, t0 = 0.0, time.perf_counter()
    for tiles, maps, seconds in iter_tile_maps(model, inputs, image_tiles(shape, tile_shape, halo), whats,
                                               batch_size, tta, progress and job is not None, "segmenting tiles"):
        t_model += seconds
        inst, sem = maps["instance"], maps.get("semantic", [None] * len(tiles))
        if job is not None:
            for tile, m, s in zip(tiles, inst, sem):
                block = blocks.add(tile, *tile_outputs(tile, m, s))
                if block is not None:
                    job.add(*block)
        if on_tiles is not None:
            on_tiles(tiles, inst)
    t_post = time.perf_counter() - t0 - t_model
    t1 = time.perf_counter()
    if job is None:
        out = Segmentation(ais_from_maps(inst[0], **params.__dict__), "ais")
        if classes:
            out.classes, out.class_probabilities = nucleus_classes(out.labels, sem[0])
    else:
        job.finish()
        out = Segmentation(job.out, "ais")
        if classes:
            out.classes, out.class_probabilities = classes_from_sums(job.nuclei.features)
    out.seconds = {"model": t_model, "postprocessing": t_post + time.perf_counter() - t1}
    return out


# --------------------------------------------------------------------------------- AMG


def _amg(model, image, tile_shape, halo, params: dict, classes: bool, batch_size: int, normalization,
         progress: bool) -> Segmentation:
    from .instances.amg import amg_from_embeddings
    from .semantic import nucleus_classes

    t0 = time.perf_counter()
    emb = model.embed(image, tile_shape=tile_shape, halo=halo, batch_size=batch_size,
                      normalization=normalization, progress=progress)
    t1 = time.perf_counter()
    labels = amg_from_embeddings(model, emb, progress=progress, **params)
    out = Segmentation(labels, "amg")
    t2 = time.perf_counter()
    if classes:
        out.classes, out.class_probabilities = nucleus_classes(labels, model.semantic_maps(emb, progress=progress, image=image))
    out.seconds = {"model": t1 - t0, "amg": t2 - t1, "classes": time.perf_counter() - t2}
    return out


#: Output formats of an image run, in the order they are written.
OUTPUT_FORMATS = ("tif", "geojson", "geojson.gz", "csv", "parquet")


def save_segmentation(
    result: Segmentation, out_dir: str | os.PathLike, name: str,
    formats: tuple[str, ...] = ("tif", "geojson", "csv", "parquet"), progress: bool = False,
    mpp: float | None = None,
) -> list[str]:
    """Write ``result`` as ``OUT_DIR/NAME.tif`` (uint32 labels), ``NAME.geojson`` (QuPath
    detections), ``NAME.csv`` / ``NAME.parquet`` (one row per nucleus); returns the paths written.

    Tables and GeoJSON measurements follow the one output schema of images and slides
    (:mod:`pathosam.io.schema`); ``mpp`` (the image's pixel size in µm/px, when known) adds
    ``area_um2`` / ``"Area µm^2"``.

    The files are written as one set (:func:`pathosam.io.atomic_file_set`): they appear together
    once all are complete; if any writer fails, the folder keeps what it had. Outputs of ``name``
    in formats not written this time (from an earlier run) are removed with the commit, so the
    folder never mixes two runs.
    """
    from .io import atomic_file_set, write_geojson, write_label_tiff, write_table

    unknown = set(formats) - set(OUTPUT_FORMATS)
    if unknown or not formats:
        raise ValueError(f"unknown output format(s) {sorted(unknown)}; choose among {', '.join(OUTPUT_FORMATS)}"
                         if unknown else "no output format given")
    formats = tuple(f for f in OUTPUT_FORMATS if f in formats)
    files = [f"{name}.{fmt}" for fmt in formats]
    with atomic_file_set(out_dir, files, replaces=[f"{name}.{fmt}" for fmt in OUTPUT_FORMATS]) as tmp:
        if "tif" in formats:
            write_label_tiff(tmp / f"{name}.tif", result.labels)
        table = result.table(mpp=mpp) if set(formats) & {"geojson", "geojson.gz", "csv", "parquet"} else None
        for fmt in ("geojson", "geojson.gz"):
            if fmt in formats:
                write_geojson(tmp / f"{name}.{fmt}", result.labels, table, id_namespace=name, progress=progress)
        csv = tmp / f"{name}.csv" if "csv" in formats else None
        parquet = tmp / f"{name}.parquet" if "parquet" in formats else None
        if csv or parquet:
            write_table(table, csv_path=csv, parquet_path=parquet)
    return [os.path.join(os.fspath(out_dir), f) for f in files]


def image_name(path: str | os.PathLike) -> str:
    """Output stem for an input file: its name without the image suffix(es) (``a.ome.tif`` -> ``a``)."""
    name = os.path.basename(os.fspath(path))
    for suffix in (".ome.tiff", ".ome.tif", *IMAGE_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return os.path.splitext(name)[0]
