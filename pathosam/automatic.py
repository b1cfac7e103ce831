"""Automatic nucleus segmentation of one image: model -> decoder maps -> instances (+ classes).

:func:`segment_nuclei` is the one place that runs a whole image through the model. For AIS on a
tiled image it streams: tiles are embedded and decoded batch by batch, each tile's maps go to the
seam-free block post-processing (:class:`pathosam.instances.tiled.TiledAIS`) and are dropped when
no neighbouring block needs them, so besides the label image only about one row of tile maps is
held (embeddings are never stored for the whole image).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Literal

import numpy as np

from .image import LONG_SIDE, Normalization, check_image, prepare_input, to_rgb_uint8
from .instances.tiled import AISParams, TiledAIS
from .tiling import Tile, tile_grid, tile_slices

Mode = Literal["ais", "amg"]
#: Images with both sides up to this size are segmented untiled by default (``tile_shape="auto"``).
AUTO_UNTILED_MAX = 512
#: Smallest image side (pixels) accepted for automatic segmentation.
MIN_SIDE = 8
DEFAULT_TILE_SHAPE = (384, 384)
DEFAULT_HALO = (64, 64)
AMG_PARAMETERS = ("points_per_side", "points_per_batch", "pred_iou_thresh", "stability_score_thresh",
                  "box_nms_thresh", "crop_nms_thresh", "min_mask_region_area", "stability_score_offset",
                  "min_object_size")


@dataclass
class Segmentation:
    """Result of :func:`segment_nuclei`.

    ``labels``: uint32 (H, W), 0 = background, nuclei 1..N. ``classes`` / ``class_probabilities``:
    uint8 / float32 (N + 1,) indexed by nucleus id (PanNuke ids of ``pathosam.semantic.CLASS_NAMES``,
    0 = none), or None without ``classes=True``. ``seconds``: wall time per stage.
    """

    labels: np.ndarray
    mode: str
    classes: np.ndarray | None = None
    class_probabilities: np.ndarray | None = None
    tile_shape: tuple[int, int] | None = None
    halo: tuple[int, int] | None = None
    parameters: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)

    @property
    def n_objects(self) -> int:
        return int(self.labels.max()) if self.labels.size else 0

    def table(self, offset: tuple[int, int] = (0, 0)):
        """Per-nucleus table (pandas DataFrame): id, centroid, area, bbox[, class, probability]."""
        from .io.table import nucleus_table

        return nucleus_table(self.labels, self.classes, self.class_probabilities, offset=offset)


def auto_tiling(img_size: int = 1024) -> tuple[int, tuple[int, int], tuple[int, int]]:
    """(largest untiled image side, tile shape, halo) of ``tile_shape="auto"`` for a model with
    input size ``img_size``: the reference's geometry scaled to the model, i.e. outer tiles of half
    the input size, upsampled 2x (1024: 384 + 64 halo = 512 px tiles, images up to 512 px
    untiled; 256: 96 + 16 = 128 px tiles, images up to 128 px untiled). Models are trained on
    patches at that 2x scale (PathoSAM: 512 px patches, 1024 input)."""
    t, h = img_size * 3 // 8, img_size // 16
    return img_size // 2, (t, t), (h, h)


def resolve_tiling(
    shape: tuple[int, int], tile_shape, halo, img_size: int = 1024
) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """Tile shape and halo to use; ``"auto"``: see :func:`auto_tiling` (for the reference models,
    384 + 64 halo for images larger than 512 px)."""
    if isinstance(tile_shape, str):
        if tile_shape != "auto":
            raise ValueError(f"tile_shape must be 'auto', None or (rows, cols), got {tile_shape!r}")
        untiled, auto_tile, auto_halo = auto_tiling(img_size)
        if max(shape) <= untiled:
            return None, None
        tile_shape = auto_tile
        halo = auto_halo if halo is None else halo
    if tile_shape is None:
        if halo is not None:
            raise ValueError("halo given without tile_shape")
        return None, None
    ts = tuple(int(t) for t in np.broadcast_to(tile_shape, 2))
    hl = tuple(int(h) for h in np.broadcast_to(DEFAULT_HALO if halo is None else halo, 2))
    if min(ts) <= 0 or min(hl) < 0:
        raise ValueError(f"tile_shape must be positive and halo non-negative, got {ts}, {hl}")
    return ts, hl


def model_input(model, rgb: np.ndarray):
    """:func:`pathosam.image.prepare_input` of ``rgb`` at the input size of ``model``
    (``PathoSAM.img_size``; 1024, SAM's, for stand-ins without one)."""
    return prepare_input(rgb, getattr(model, "img_size", LONG_SIDE))


def ais_params(model, params: dict | None = None) -> AISParams:
    """AIS post-processing parameters for ``model``: ``params``, else the model's recommended
    values (``PathoSAM.ais_defaults``, from the registry), else the reference's defaults."""
    return AISParams(**{**getattr(model, "ais_defaults", {}), **(params or {})})


def _split_params(mode: str, params: dict) -> dict:
    allowed = [f.name for f in fields(AISParams)] if mode == "ais" else list(AMG_PARAMETERS)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise TypeError(f"unknown {mode} parameter(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
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
        Also classify each nucleus with the semantic decoder (PanNuke classes).
    normalization : {"none", "minmax"}
        Intensity conversion to uint8 (``pathosam.image.to_rgb_uint8``).
    progress : bool
        Show progress bars.
    tta : bool
        AIS: test-time augmentation, the mean of the decoder maps of each tile and its three flips
        (:func:`tile_maps`); about 4x the model time, smoother boundaries and fewer split nuclei.
    on_tiles : callable, optional
        AIS: called after each batch of tiles (untiled: once, with one whole-image tile) with the
        tiles and their float32 (3, h, w) instance maps of each tile's outer block (read only). It
        may raise to stop the segmentation (cooperative cancellation: time limits, clients gone).
    **params
        Post-processing parameters: for AIS the fields of :class:`AISParams`
        (``center_distance_threshold``, ..., ``min_size``; those not given come from the
        model's ``ais_defaults``, then the reference's defaults), for AMG those of
        :func:`pathosam.instances.amg.amg_from_embeddings` (``pred_iou_thresh``, ...).

    Returns
    -------
    Segmentation
    """
    from .model import PathoSAM, load_model

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
        model = load_model(model, semantic_decoder=True if classes else None, progress=progress)
    if mode == "ais" and model.decoder is None:
        raise ValueError(f"model {model.name!r} has no instance (AIS) decoder; use mode='amg' or load a decoder")
    if classes and model.semantic_decoder is None:
        raise ValueError(f"model {model.name!r} has no semantic decoder; classes need one")
    image = np.asarray(image)
    check_image(image)
    if min(image.shape[:2]) < MIN_SIDE:
        raise ValueError(f"image of {image.shape[0]}x{image.shape[1]} px is too small to segment "
                         f"(at least {MIN_SIDE}x{MIN_SIDE} px)")
    ts, hl = resolve_tiling(image.shape[:2], tile_shape, halo, getattr(model, "img_size", 1024))
    if mode == "ais":
        ais = ais_params(model, params)
        if ts is None:
            result = _ais_untiled(model, image, ais, classes, normalization, tta, on_tiles)
        else:
            result = _ais_tiled(model, image, ts, hl, ais, classes, batch_size, normalization, progress, tta,
                                on_tiles)
        result.parameters = {"mode": mode, **ais.__dict__, **({"tta": True} if tta else {})}
    else:
        result = _amg(model, image, ts, hl, params, classes, batch_size, normalization, progress)
        result.parameters = {"mode": mode, **params}
    result.tile_shape, result.halo = ts, hl
    return result


def segment(image: np.ndarray, model=None, mode: Mode = "ais", **kwargs) -> np.ndarray:
    """uint32 (H, W) nucleus labels of ``image``; arguments as :func:`segment_nuclei`."""
    return segment_nuclei(image, model, mode, **kwargs).labels


# --------------------------------------------------------------------------------- AIS


def _ais_untiled(model, image, params: AISParams, classes: bool, normalization, tta: bool,
                 on_tiles=None) -> Segmentation:
    from .instances.ais import ais_from_maps
    from .semantic import nucleus_classes

    t0 = time.perf_counter()
    inst, sem, _ = run_tiles(model, [model_input(model, to_rgb_uint8(image, normalization))], classes, tta)
    maps, sem = inst[0], sem[0]
    if on_tiles is not None:
        whole = ((0, 0), tuple(image.shape[:2]))
        on_tiles([Tile(0, whole, whole)], [maps])
    t1 = time.perf_counter()
    labels = ais_from_maps(maps, **params.__dict__)
    out = Segmentation(labels, "ais")
    if classes:
        out.classes, out.class_probabilities = nucleus_classes(labels, sem)
    out.seconds = {"model": t1 - t0, "postprocessing": time.perf_counter() - t1}
    return out


def decoder_maps(model, image: np.ndarray, tile_shape="auto", halo=None, what: str = "instance",
                 batch_size: int = 1, normalization: Normalization = "none", tta: bool = False) -> np.ndarray:
    """The decoder maps of a whole image, float32 (C, H, W): untiled, or the inner blocks of the
    tiles' maps pasted together (the reference's stitching); ``tta``: see :func:`tile_maps`. For
    images that fit in memory (evaluation, grid search); :func:`segment_nuclei` streams instead."""
    check_image(image)
    ts, hl = resolve_tiling(image.shape[:2], tile_shape, halo, getattr(model, "img_size", 1024))
    if ts is None:
        return tile_maps(model, [model_input(model, to_rgb_uint8(image, normalization))], (what,), tta)[what][0]
    tiles = tile_grid(image.shape[:2], ts, hl)
    out = None
    for start in range(0, len(tiles), batch_size):
        batch = tiles[start : start + batch_size]
        inputs = [model_input(model, to_rgb_uint8(image[tile_slices(t.outer)], normalization)) for t in batch]
        for t, m in zip(batch, tile_maps(model, inputs, (what,), tta)[what]):
            if out is None:
                out = np.zeros((m.shape[0], *image.shape[:2]), np.float32)
            out[(slice(None), *tile_slices(t.inner))] = m[(slice(None), *tile_slices(t.inner_local))]
    return out


def postprocessing_halo(tile_shape: tuple[int, int], halo: tuple[int, int], seeds: str = "distance"
                        ) -> tuple[int, int]:
    """Context (rows, cols) of the block-wise AIS post-processing: the tiling halo, at least
    32 px (seam-free stitching needs context; 64 px for ``seeds="shape"``, whose distance
    transform sees whole clusters of touching nuclei) and at most the tile shape."""
    least = 64 if seeds == "shape" else 32
    return (min(max(halo[0], least), tile_shape[0]), min(max(halo[1], least), tile_shape[1]))


#: Flips (tensor dims) averaged by the test-time augmentation: identity, columns, rows, both.
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


def tile_maps(model, inputs, whats: tuple[str, ...] = ("instance",), tta: bool = False) -> dict[str, list]:
    """Decoder maps of one batch of tiles (``inputs`` from :func:`model_input`): for each of
    ``whats`` ("instance", "semantic") a list of float32 (C, H, W) arrays. ``tta``: the mean of
    the maps of the tile and its three flips (rows, columns, both), mapped back; 4x the time."""
    tensors, in_sizes, origs = zip(*inputs)
    out: dict[str, list] = {}
    flips = TTA_FLIPS if tta else ((),)
    for dims in flips:
        batch = [t.flip(dims) if dims else t for t in tensors]
        feats = model.encode(batch)
        for what in whats:
            maps = model.decode(feats, in_sizes, origs, what, inputs=batch)
            maps = [np.flip(m, dims) if dims else m for m in maps]
            out[what] = maps if what not in out else [a + m for a, m in zip(out[what], maps)]
    if tta:
        out = {w: [np.ascontiguousarray(m / len(flips), dtype=np.float32) for m in ms] for w, ms in out.items()}
    return out


def run_tiles(model, inputs, classes: bool, tta: bool = False) -> tuple[list, list, float]:
    """Run one batch of tiles (``inputs`` from :func:`model_input`) through the encoder and the
    decoder(s) (see :func:`tile_maps`); returns the instance maps, the semantic maps (None each
    without ``classes``) and the seconds spent in the model."""
    t0 = time.perf_counter()
    maps = tile_maps(model, inputs, ("instance", "semantic") if classes else ("instance",), tta)
    return maps["instance"], maps.get("semantic", [None] * len(inputs)), time.perf_counter() - t0


def hand_over(job: TiledAIS, tiles, inst, sem) -> None:
    """Give each tile's inner maps (and class features) to ``job``, which post-processes the
    blocks that become ready."""
    from .semantic import class_features

    for tile, m, s in zip(tiles, inst, sem):
        il = (slice(None), *tile_slices(tile.inner_local))
        job.add(tile.index, m[il], None if s is None else class_features(s[il]))


def feed_tiles(model, job: TiledAIS, tiles, inputs, classes: bool, tta: bool = False) -> float:
    """:func:`run_tiles` then :func:`hand_over`; returns the seconds spent in the model."""
    inst, sem, seconds = run_tiles(model, inputs, classes, tta)
    hand_over(job, tiles, inst, sem)
    return seconds


def _ais_tiled(model, image, tile_shape, halo, params: AISParams, classes: bool, batch_size: int,
               normalization, progress: bool, tta: bool, on_tiles=None) -> Segmentation:
    from tqdm.auto import tqdm

    from .semantic import classes_from_sums

    H, W = image.shape[:2]
    tiles = tile_grid((H, W), tile_shape, halo)
    job = TiledAIS((H, W), tile_shape, postprocessing_halo(tile_shape, halo, params.seeds), params)
    rgb_full = to_rgb_uint8(image, "none") if normalization == "none" else None
    t_model = t_post = 0.0
    bar = tqdm(total=len(tiles), desc="segmenting tiles", unit="tile", disable=not progress)
    for start in range(0, len(tiles), batch_size):
        batch = tiles[start : start + batch_size]
        t0 = time.perf_counter()
        inputs = [model_input(model, to_rgb_uint8(image[tile_slices(t.outer)], normalization)
                              if rgb_full is None else rgb_full[tile_slices(t.outer)]) for t in batch]
        inst, sem, seconds = run_tiles(model, inputs, classes, tta)
        hand_over(job, batch, inst, sem)
        if on_tiles is not None:
            on_tiles(batch, inst)
        t_model += seconds
        t_post += time.perf_counter() - t0 - seconds
        bar.update(len(batch))
    bar.close()
    t1 = time.perf_counter()
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
) -> list[str]:
    """Write ``result`` as ``OUT_DIR/NAME.tif`` (uint32 labels), ``NAME.geojson`` (QuPath
    detections), ``NAME.csv`` / ``NAME.parquet`` (one row per nucleus); returns the paths written.

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
        table = result.table() if set(formats) & {"geojson", "geojson.gz", "csv", "parquet"} else None
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
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".png", ".jpeg", ".jpg"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return os.path.splitext(name)[0]
