"""Whole-slide AIS: stream tiles through the model into seam-free block post-processing.

For one slide: tissue mask on a thumbnail -> work grid at the model's resolution (the region of
interest rescaled from the slide's pixel size to ``target_mpp``) -> for the tiles around
unfinished blocks, in raster order and batched: read the tile lazily, model, decoder maps (tiles
without tissue get background maps without running the model) -> :class:`TiledAIS`, which saves
every finished block (its labels in a zarr array, its per-nucleus numbers in a small ``.npz``)
-> merge -> OME-Zarr label pyramid, QuPath GeoJSON, Parquet table, tissue PNG, run manifest.

Resumable: the work folder ``OUT/NAME.work`` (:mod:`.workdir`) keeps each tile's model output
as soon as its batch leaves the model (until every block around the tile is saved) and every
finished block; running the same command again loads them, puts only the tiles never computed
through the model and gives the same output as an uninterrupted run. Bound: a SIGKILL loses the
model work of at most one batch (``batch_size`` tiles rounded up to whole blocks, the one
inside the model); a KeyboardInterrupt (SIGINT) finishes and saves that batch, then stops
(nothing lost). Work that is redone without the model: re-reading the read-ahead (at most 3
batches) and post-processing the blocks whose maps were queued for it (at most
``MODEL_QUEUE`` + 2 batches).

Blocks: the unit that is read, saved and post-processed is a block of whole model tiles,
:func:`pathosam.inference.postprocessing_block` (one tile for the reference's 384 px tiles,
2 x 2 for pathosam_small's 96 px tiles, which would otherwise be post-processed with 5.4x their
area of context); the model runs on each block's tiles (those with tissue), as
:func:`pathosam.segment_nuclei` does, so a slide and an image of the same pixels give the same
labels.
A slide whose manifest exists with the same settings is skipped. Final files are written under
temporary names and renamed when complete.

Memory (bounded, whatever the slide's size and number of nuclei): up to five batches of tiles in
flight between the overlapping read / model / post-processing stages, the tile maps of about two
rows of a band of :data:`BAND_COLUMNS` tile columns (3 x 384 x 384 float32 each), and, while the
outputs are written, the per-nucleus numbers of four rows of blocks (:func:`iter_merged`); the
label image lives on disk (zarr) and is read block by block.

Coordinates: the work grid is in model-resolution pixels; outputs (GeoJSON, table) are converted
to full-resolution (level-0) slide pixels, x = column, y = row.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..instances.tiled import AISParams, BlockResult, Nuclei, TiledAIS, iter_merged
from ..tiling import tile_grid, tiles_within
from .slide import Slide, open_slide
from .tissue import tile_has_tissue, tissue_mask
from .workdir import WorkDir

#: Pixel size (um/px) PathoSAM sees by default: 40x scans (its training data are mostly 40x).
DEFAULT_TARGET_MPP = 0.25
MANIFEST_FORMAT = "pathosam-slide-2"  # 2: blocks of whole model tiles (postprocessing_block)
#: Blocks are processed in bands of this many tile columns, so the tile maps held at once
#: (about two rows of a band) do not grow with the slide's width; the tile columns on each
#: side of a band are loaded again from the work folder for the next band (not recomputed).
BAND_COLUMNS = 32
#: Batches of model output that may wait for post-processing. Blocks become ready in bursts (a
#: block needs its eight neighbours' maps), so a short queue stalls the model behind them; 8
#: measured 1.2x faster per mm² than 2 for pathosam_small (docs/benchmarks.md), at a few MB.
MODEL_QUEUE = 8


@dataclass
class SlideOptions:
    """Settings of a slide run (all of them enter the run's signature).

    ``target_mpp``: model resolution in um/px, None = no rescaling (use the slide's pixels as
    they are); ``mpp``: the slide's level-0 pixel size, overriding the metadata; ``roi``: (x, y,
    width, height) in level-0 pixels; ``tile_shape``/``halo`` in model-resolution pixels;
    ``tta``: average the decoder maps over flips (:func:`pathosam.inference.tile_maps`, 4x slower).
    """

    target_mpp: float | None = DEFAULT_TARGET_MPP
    mpp: float | None = None
    roi: tuple[int, int, int, int] | None = None
    tile_shape: tuple[int, int] = (384, 384)
    halo: tuple[int, int] = (64, 64)
    batch_size: int = 1
    classes: bool = False
    tissue: bool = True
    normalization: str = "none"
    ais: AISParams = field(default_factory=AISParams)
    tta: bool = False


@dataclass
class Geometry:
    """Mapping between level-0 slide pixels and the model-resolution work grid."""

    roi: tuple[int, int, int, int]  # x, y, w, h (level 0)
    scale: float  # work pixels per level-0 pixel
    shape: tuple[int, int]  # work (rows, cols)

    @classmethod
    def for_slide(cls, slide: Slide, options: SlideOptions) -> Geometry:
        H, W = slide.shape
        x, y, w, h = options.roi if options.roi is not None else (0, 0, W, H)
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > W or y + h > H:
            raise ValueError(f"{slide.path}: ROI {x, y, w, h} (x, y, width, height) is not inside the "
                             f"{W} x {H} px slide")
        if options.target_mpp is None:
            scale = 1.0
        else:
            mpp = options.mpp or slide.mpp
            if not mpp:
                raise ValueError(f"{slide.path}: the slide has no pixel size; pass --mpp UM_PER_PX "
                                 "or --no-rescale to use its pixels as they are")
            scale = mpp / options.target_mpp
        return cls((x, y, w, h), scale, (max(1, round(h * scale)), max(1, round(w * scale))))

    def to_level0(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Work pixel-corner coordinates -> level-0 pixel-corner coordinates (x, y)."""
        return self.roi[0] + np.asarray(cols) / self.scale, self.roi[1] + np.asarray(rows) / self.scale

    def read(self, slide: Slide, block) -> np.ndarray:
        """RGB uint8 of a work-grid block ((r0, c0), (r1, c1)), resampled from the best level."""
        from PIL import Image

        (r0, c0), (r1, c1) = block
        x0, y0 = self.roi[0], self.roi[1]
        if self.scale == 1.0:
            return slide.read(y0 + r0, x0 + c0, r1 - r0, c1 - c0)
        level = slide.best_level(1.0 / self.scale)
        ds = slide.level_downsamples[level]
        # the block's extent in level pixels (float), read with a 2 px margin for interpolation
        fx0, fx1 = (x0 + c0 / self.scale) / ds, (x0 + c1 / self.scale) / ds
        fy0, fy1 = (y0 + r0 / self.scale) / ds, (y0 + r1 / self.scale) / ds
        ix0, iy0 = int(np.floor(fx0)) - 2, int(np.floor(fy0)) - 2
        ix1, iy1 = int(np.ceil(fx1)) + 2, int(np.ceil(fy1)) + 2
        region = slide.read(iy0, ix0, iy1 - iy0, ix1 - ix0, level)
        im = Image.fromarray(region).resize((c1 - c0, r1 - r0), Image.BILINEAR,
                                            box=(fx0 - ix0, fy0 - iy0, fx1 - ix0, fy1 - iy0))
        return np.asarray(im)


def _signature(slide: Slide, model, options: SlideOptions) -> dict:
    opts = asdict(options)
    opts["ais"] = asdict(options.ais)
    if not options.tta:
        del opts["tta"]  # runs without it keep the signature of earlier versions (resumable)
    if options.ais.seeds == "distance":  # the reference's seeds: the signature of earlier versions
        for key in ("seeds", "seed_dynamic", "seed_center_weight"):
            del opts["ais"][key]
    sig = {"format": MANIFEST_FORMAT, "slide": str(slide.path.name), "slide_shape": list(slide.shape),
           "slide_size_bytes": slide.path.stat().st_size, "model": model.model_id, "options": opts}
    return json.loads(json.dumps(sig))  # as it reads back from JSON (tuples -> lists)


@dataclass
class _Plan:
    """Everything a process needs to work on a slide's blocks (picklable; reopens the slide)."""

    path: Path
    out_dir: Path
    name: str
    options: SlideOptions
    geom: Geometry
    has_tissue: list[bool]  # per block (pipeline tile): any of its model tiles has tissue
    tile_tissue: np.ndarray  # bool per model tile (the grid of ``options.tile_shape``)

    @property
    def block_shape(self) -> tuple[int, int]:
        """The pipeline's unit (read, saved, post-processed): whole model tiles
        (:func:`pathosam.inference.postprocessing_block`)."""
        from ..inference import postprocessing_block

        return postprocessing_block(self.options.tile_shape)

    @property
    def work(self) -> Path:
        return self.out_dir / f"{self.name}.work"

    @property
    def workdir(self) -> WorkDir:
        return WorkDir(self.work)

    def job(self, blocks=None, on_result=None, keep_results: bool = True) -> TiledAIS:
        import zarr

        from ..inference import postprocessing_halo

        bs = self.block_shape
        labels = zarr.open_array(str(self.work / "labels.zarr"), mode="r+")
        halo = postprocessing_halo(bs, self.options.halo, self.options.ais.seeds)
        return TiledAIS(self.geom.shape, bs, halo, self.options.ais, out=labels, on_result=on_result,
                        blocks=blocks, keep_results=keep_results)


def _prepare(slide: Slide, model, out_dir: Path, options: SlideOptions, name: str, sig: dict):
    """Tissue mask, work grid and the work folder (kept if it belongs to the same run)."""
    from ..inference import postprocessing_block

    geom = Geometry.for_slide(slide, options)
    tiles = tile_grid(geom.shape, options.tile_shape, options.halo)
    block_shape = postprocessing_block(options.tile_shape)
    blocks = tile_grid(geom.shape, block_shape, options.halo)
    thumb, thumb_ds = slide.thumbnail(2048)
    mask = tissue_mask(thumb) if options.tissue else np.ones(thumb.shape[:2], bool)

    def level0_block(block):
        (r0, c0), (r1, c1) = block
        x, y = geom.to_level0(np.array([r0, r1]), np.array([c0, c1]))
        return (int(y[0]), int(x[0])), (int(np.ceil(y[1])), int(np.ceil(x[1])))

    tile_tissue = np.array([tile_has_tissue(mask, thumb_ds, level0_block(t.outer)) for t in tiles], bool)
    # a block has tissue where any of its model tiles has
    has_tissue = [bool(tile_tissue[[t.index for t in tiles_within(b.inner, options.tile_shape, options.halo,
                                                                    geom.shape)]].any()) for b in blocks]
    plan = _Plan(Path(slide.path), out_dir, name, options, geom, has_tissue, tile_tissue)
    plan.workdir.open(sig, geom.shape, block_shape)
    plan.workdir.done_blocks(check=True)  # a block file that does not read back is redone
    return plan, mask, thumb_ds


#: ``on_saved(kind, index)`` of :func:`segment_slide`: kind "maps" (a tile's model output) or
#: "block" (a post-processed block), once the file is in the work folder.
SavedCallback = Callable[[str, int], None]


#: Per-run numbers summed over the bands or tasks of a slide run.
_SUMMED = ("blocks", "tiles_through_model", "tiles_loaded", "new_blocks", "read", "model")


def _run_blocks(plan: _Plan, model, blocks: list[int] | None, slide: Slide | None = None, bar=None,
                on_saved: SavedCallback | None = None) -> dict:
    """Post-process ``blocks`` (default: all unfinished) of a planned slide, saving each block to
    the work folder; computes the maps of the tiles around them (model only on tissue tiles) or
    loads those saved by an earlier (killed) run or band. Reading, the model and post-processing
    run as three overlapping stages (:mod:`.stages`), each at most two batches ahead of the next;
    the model stage saves each batch's maps before handing it on, so a kill loses at most the
    batch inside the model, and a KeyboardInterrupt none (the batch in flight is finished and saved)."""
    import torch

    from ..inference import BlockOutputs, TileInputs, background_outputs, input_size, run_tiles, tile_outputs
    from ..threads import model_stage_threads
    from .stages import background

    options, geom, work = plan.options, plan.geom, plan.workdir
    own_slide = slide is None
    slide = open_slide(plan.path) if own_slide else slide
    done_here = work.done_blocks()
    counts = {"new_blocks": 0, "loaded": 0, "model_tiles": 0}

    def on_result(result: BlockResult) -> None:
        work.save_block(result)
        done_here.add(result.index)
        counts["new_blocks"] += 1
        # drop the saved maps no unfinished block needs any more (other processes' blocks: on disk)
        for n in job.grid.neighbours(result.index):
            if plan.has_tissue[n] and all(b in done_here or work.block_saved(b) for b in job.grid.neighbours(n)):
                work.drop_maps(n)
        if on_saved is not None:
            on_saved("block", result.index)

    job = plan.job(blocks, on_result, keep_results=False)
    resumed = 0
    for i in done_here & job.mine:
        job.mark_done(i)
        resumed += 1
    tiles = job.grid.tiles
    needed = job.needed_tiles()
    seconds = {"read": 0.0, "model": 0.0}

    n_features = model.class_scheme.n_features if options.classes else None
    outputs = BlockOutputs(geom.shape, options.tile_shape, plan.block_shape, options.halo)

    def read_batches():
        """Stage 1 (thread), in raster order of blocks: ("model", [(block, [(model tile, prepared
        input)] of its tissue tiles)]) for blocks to compute (about ``batch_size`` tiles an item),
        ("ready", [(block, maps, features)]) for maps saved earlier, ("background", block)."""
        pending, n_pending = [], 0
        for i in needed:
            saved = work.load_maps(i) if plan.has_tissue[i] else None
            if plan.has_tissue[i] and saved is None:
                t0 = time.perf_counter()
                # the slide's pixels are RGB uint8 already: "none" keeps them, "minmax" stretches per tile
                (o0, p0), _ = tiles[i].outer
                region = TileInputs(geom.read(slide, tiles[i].outer), options.normalization, input_size(model))
                prepared = [(t, region.prepared(((t.outer[0][0] - o0, t.outer[0][1] - p0),
                                                 (t.outer[1][0] - o0, t.outer[1][1] - p0))))
                            for t in outputs.tiles(i) if plan.tile_tissue[t.index]]
                pending.append((tiles[i], prepared))
                n_pending += len(prepared)
                seconds["read"] += time.perf_counter() - t0
                if n_pending >= options.batch_size:
                    yield "model", pending
                    pending, n_pending = [], 0
                continue
            if pending:  # keep raster order: earlier tissue blocks first
                yield "model", pending
                pending, n_pending = [], 0
            if saved is not None:
                counts["loaded"] += 1
                yield "ready", [(tiles[i], *saved)]
            else:
                yield "background", tiles[i]
        if pending:
            yield "model", pending

    def compute():
        """Stage 2 (thread): [(block, maps, features)] per item: the model on the tissue tiles
        of the item's blocks in batches of ``batch_size``, background maps for their other tiles,
        each block's maps saved before it is handed on; background maps for blocks without tissue."""
        whats = ("instance", "semantic") if options.classes else ("instance",)
        for kind, item in background(read_batches(), depth=2, name="pathosam-read"):
            if kind == "ready":
                yield item
            elif kind == "model":
                tile_out = {}
                todo = [p for _, prepared in item for p in prepared]
                for k in range(0, len(todo), options.batch_size):
                    part = todo[k : k + options.batch_size]
                    batch_maps, sec = run_tiles(model, [p[1] for p in part], whats, options.tta)
                    seconds["model"] += sec
                    counts["model_tiles"] += len(part)
                    sems = batch_maps.get("semantic", [None] * len(part))
                    for (t, _), m, sm in zip(part, batch_maps["instance"], sems):
                        tile_out[t.index] = tile_outputs(t, m, sm)
                out = []
                for block, _ in item:
                    for t in outputs.tiles(block.index):
                        done = outputs.add(t, *tile_out.pop(t.index, None) or background_outputs(t, n_features))
                    out.append((block, *done[1:]))
                    work.save_maps(block.index, *done[1:])
                    if on_saved is not None:
                        on_saved("maps", block.index)
                yield out
            else:
                yield [(item, *background_outputs(item, n_features))]

    threads = torch.get_num_threads()
    torch.set_num_threads(model_stage_threads(input_size(model), threads))  # beside post-processing
    try:
        # stage 3 (here): block post-processing and saving, in the same order as without threads
        for batch in background(compute(), depth=MODEL_QUEUE, name="pathosam-model"):
            for tile, maps, feats in batch:
                job.add(tile.index, maps, feats)
            if bar is not None:
                bar.update(len(batch))
    finally:
        torch.set_num_threads(threads)
        if own_slide:
            slide.close()
    n_model = counts["model_tiles"]
    return {"blocks_resumed": resumed, "blocks": len(needed), "tiles_through_model": n_model,
            "tiles_loaded": counts["loaded"], "read": seconds["read"], "model": seconds["model"],
            "new_blocks": counts["new_blocks"]}


def _column_bands(plan: _Plan, width: int | None = None) -> list[list[int]]:
    """The unfinished blocks in bands of ``width`` (default :data:`BAND_COLUMNS`) block columns
    (all rows), left to right."""
    width = width or BAND_COLUMNS
    done = plan.workdir.done_blocks()
    grid = plan.job().grid
    bands = []
    for j0 in range(0, grid.n_cols, width):
        band = [i * grid.n_cols + j for i in range(grid.n_rows) for j in range(j0, min(j0 + width, grid.n_cols))]
        band = [b for b in band if b not in done]
        if band:
            bands.append(band)
    return bands


def _run_distributed(plan: _Plan, model, client, rows_per_task: int | None, progress: bool) -> dict:
    """Spread the unfinished blocks over a Dask cluster in bands of block rows; each task runs
    :func:`_run_blocks` in a worker (recomputing one tile row above and below its band)."""
    from dask.distributed import as_completed
    from tqdm.auto import tqdm

    done = plan.workdir.done_blocks()
    grid = plan.job().grid
    todo = [b for b in range(len(grid.tiles)) if b not in done]
    n_workers = max(1, len(client.scheduler_info().get("workers", {})))
    rows = sorted({b // grid.n_cols for b in todo})
    per = rows_per_task or max(2, -(-len(rows) // (2 * n_workers)))
    bands = [[b for b in todo if rows[k] <= b // grid.n_cols <= rows[min(k + per, len(rows)) - 1]]
             for k in range(0, len(rows), per)]
    model_future = client.scatter(model, broadcast=True)
    futures = [client.submit(_run_blocks, plan, model_future, band, pure=False) for band in bands]
    band_of = dict(zip(futures, bands))
    totals = {"blocks_resumed": len(done), "tasks": len(bands), **dict.fromkeys(_SUMMED, 0)}
    with tqdm(total=len(todo), desc=f"{plan.name}: blocks", unit="block", disable=not progress) as bar:
        for fut in as_completed(futures):
            stats = fut.result()
            for k in _SUMMED:
                totals[k] += stats[k]
            bar.update(len(band_of[fut]))
    return totals


def segment_slide(path: str | os.PathLike, model, out_dir: str | os.PathLike, options: SlideOptions | None = None,
                  name: str | None = None, progress: bool = True, client=None, rows_per_task: int | None = None,
                  on_saved: SavedCallback | None = None) -> dict:
    """Segment the nuclei of a whole slide; returns the run manifest (also written as JSON).

    Outputs in ``out_dir``: ``NAME.ome.zarr`` (uint32 labels at model resolution, pyramid),
    ``NAME.geojson.gz`` (QuPath detections in level-0 pixels), ``NAME.parquet`` (one row per
    nucleus), ``NAME.tissue.png`` (the tissue mask), ``NAME.manifest.json`` (written last).
    ``client``: a ``dask.distributed.Client`` to spread the blocks over its workers (they must
    see ``out_dir``); results are identical to a single-process run.

    Resuming: the work folder ``OUT/NAME.work`` (:mod:`.workdir`) keeps each batch's model
    output from the moment it leaves the model and each post-processed block; the same call
    again loads them and puts only the other tiles through the model. Killed (SIGKILL) at any
    moment, a run loses the model work of at most one batch (``batch_size`` tiles, whole blocks); interrupted
    (KeyboardInterrupt / SIGINT), it finishes and saves the batch in the model, then stops.
    ``on_saved(kind, index)`` (single-process runs): called after each save, kind "maps" (a
    tile's model output, in the model thread) or "block"; raising from it stops the run as an
    interrupt at that point would (tests use it).
    """
    from ..automatic import image_name
    from ..io.atomic import atomic_file_set

    options = options or SlideOptions()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    with open_slide(path) as slide:
        name = name or image_name(path)
        sig = _signature(slide, model, options)
        manifest_path = out_dir / f"{name}.manifest.json"
        if manifest_path.is_file():
            done = json.loads(manifest_path.read_text())
            if done.get("signature") == sig:
                done["skipped"] = True
                return done
        if options.classes and model.semantic_decoder is None:
            raise ValueError(f"model {model.name!r} has no semantic decoder; classes need one")
        plan, mask, thumb_ds = _prepare(slide, model, out_dir, options, name, sig)
        if client is None:
            from tqdm.auto import tqdm

            bands = _column_bands(plan)
            total = sum(len(plan.job(band).needed_tiles()) for band in bands)
            stats = {"blocks_resumed": plan.job().n_blocks - sum(map(len, bands)), **dict.fromkeys(_SUMMED, 0)}
            with tqdm(total=total, desc=f"{name}: blocks", unit="block", disable=not progress) as bar:
                for band in bands:
                    st = _run_blocks(plan, model, band, slide, bar, on_saved)
                    for k in _SUMMED:
                        stats[k] += st[k]
        else:
            stats = _run_distributed(plan, model, client, rows_per_task, progress)

        # merge the saved blocks row by row, streaming the outputs into a staging folder; they
        # replace the slide's old outputs as one set, the manifest (the "done" mark) last
        t_post0 = time.perf_counter()
        files = [f"{name}.{s}" for s in ("ome.zarr", "parquet", "geojson.gz", "tissue.png", "manifest.json")]
        with atomic_file_set(out_dir, files) as staging:
            n = _write_outputs(plan, staging, name, options.mpp or slide.mpp, progress,
                               model.class_scheme.id_names if options.classes else None)
            from PIL import Image

            Image.fromarray((mask * 255).astype(np.uint8)).save(staging / f"{name}.tissue.png", format="PNG")
            seconds = {"read": stats["read"], "model": stats["model"],
                       "postprocessing_and_outputs": time.perf_counter() - t_post0,
                       "total": time.perf_counter() - t_start}
            manifest = _manifest(sig, slide, model, options, plan, stats, n, seconds, thumb_ds, mask)
            (staging / manifest_path.name).write_text(json.dumps(manifest, indent=1))
        shutil.rmtree(plan.work, ignore_errors=True)
        return manifest


def _write_outputs(plan: _Plan, out_dir: Path, name: str, mpp: float | None, progress: bool,
                   class_names: dict[int, str] | None = None) -> int:
    """Merge the saved blocks one row of blocks at a time (:func:`iter_merged`) and stream the
    label pyramid, the Parquet table and the GeoJSON (:mod:`pathosam.io`, the schema of image
    outputs); returns the number of nuclei. ``mpp``: the slide's level-0 pixel size (µm/px) or
    None. Memory: a few rows of block results and one row of blocks of labels, whatever the
    number of nuclei. ``out_dir`` is the staging folder of the output set (files written under
    their final names)."""
    import zarr
    from tqdm.auto import tqdm

    from ..io.geojson import traced_features, write_features
    from ..io.omezarr import build_pyramid, create_label_zarr
    from ..io.table import ParquetTableWriter

    geom, options = plan.geom, plan.options
    th, tw = plan.block_shape
    n_rows, n_cols = -(-geom.shape[0] // th), -(-geom.shape[1] // tw)
    work = plan.workdir
    source = zarr.open_array(str(plan.work / "labels.zarr"), mode="r")
    count = 0
    _, arrays = create_label_zarr(out_dir / f"{name}.ome.zarr", geom.shape, plan.block_shape,
                                  options.target_mpp or mpp)
    writer = ParquetTableWriter(out_dir / f"{name}.parquet", mpp=mpp is not None, classes=options.classes)

    def features():
        nonlocal count
        merged = iter_merged(geom.shape, plan.block_shape,
                             lambda i: [work.load_block(i * n_cols + j) for j in range(n_cols)],
                             source, arrays[0], options.ais.min_size)
        for first, chunk in tqdm(merged, total=n_rows, desc=f"{name}: outputs", unit="row",
                                 disable=not progress):
            table = _table(chunk, first, geom, options, mpp, class_names)
            writer.write(table)
            count += len(chunk)
            # traced one block column at a time (a region of about 3 x 3 blocks), grouped by the
            # block holding each nucleus' anchor
            block_col = (chunk.anchor % geom.shape[1]) // tw
            yield from traced_features(arrays[0], chunk.bbox, table, block_col, offset=(geom.roi[1], geom.roi[0]),
                                       scale=geom.scale, id_namespace=name)

    try:
        write_features(out_dir / f"{name}.geojson.gz", features(), progress=False)
    finally:
        writer.close()
    build_pyramid(arrays)
    return count


def _table(nuclei: Nuclei, first: int, geom: Geometry, options: SlideOptions, mpp: float | None,
           class_names: dict[int, str] | None = None):
    """Per-nucleus table (:mod:`pathosam.io.schema`) of merged nuclei with ids ``first..``, in
    level-0 pixels (x = column, y = row, pixel edges); ``area_um2`` when ``mpp`` (level-0 µm/px)
    is known."""
    from ..io.table import nuclei_table
    from ..semantic import classes_from_sums

    classes = probabilities = None
    if options.classes:
        classes, probabilities = (v[1:] for v in classes_from_sums(nuclei.features))
    return nuclei_table(np.arange(first, first + len(nuclei)), nuclei.area, nuclei.centroid, nuclei.bbox,
                        offset=(geom.roi[1], geom.roi[0]), scale=geom.scale, mpp=mpp, classes=classes,
                        probabilities=probabilities, class_names=class_names)


def _manifest(sig, slide, model, options, plan: _Plan, stats: dict, n: int, seconds: dict, thumb_ds: float,
              mask: np.ndarray) -> dict:
    import platform

    import torch

    from .. import __version__

    return {
        "signature": sig,
        "pathosam": __version__, "torch": torch.__version__, "python": platform.python_version(),
        "slide": {"path": str(slide.path), "shape": list(slide.shape), "mpp": slide.mpp, "backend": slide.backend,
                  "levels": [list(s) for s in slide.level_shapes]},
        "model": {"name": model.name, "id": model.model_id, "device": str(model.device)},
        "work_grid": {"shape": list(plan.geom.shape), "scale": plan.geom.scale, "roi_xywh": list(plan.geom.roi),
                      "tiles": len(plan.tile_tissue), "tiles_with_tissue": int(plan.tile_tissue.sum()),
                      "block_shape": list(plan.block_shape), "blocks": len(plan.has_tissue),
                      "blocks_computed": stats["blocks"], "tiles_through_model": stats["tiles_through_model"],
                      "tiles_loaded": stats["tiles_loaded"], "blocks_resumed": stats["blocks_resumed"],
                      "blocks_processed": stats["new_blocks"], "dask_tasks": stats.get("tasks", 0)},
        "tissue_fraction": float(mask.mean()), "tissue_mask_downsample": thumb_ds,
        "nuclei": n, "seconds": seconds,
    }
