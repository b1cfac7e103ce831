"""Whole-slide AIS: stream tiles through the model into seam-free block post-processing.

For one slide: tissue mask on a thumbnail -> work grid at the model's resolution (the region of
interest rescaled from the slide's pixel size to ``target_mpp``) -> for the tiles around
unfinished blocks, in raster order and batched: read the tile lazily, model, decoder maps (tiles
without tissue get background maps without running the model) -> :class:`TiledAIS`, which saves
every finished block (its labels in a zarr array, its per-nucleus numbers in a small ``.npz``)
-> merge -> OME-Zarr label pyramid, QuPath GeoJSON, Parquet table, tissue PNG, run manifest.

Resumable: the work folder ``OUT/NAME.work`` keeps the finished blocks; running the same command
again continues from them (only the tiles around unfinished blocks are recomputed) and gives the
same output as an uninterrupted run. A slide whose manifest exists with the same settings is
skipped. Final files are written under temporary names and renamed when complete.

Memory: the tiles of one batch, about two rows of tile maps (3 x 384 x 384 float32 each), and a
few numbers per nucleus; the label image lives on disk (zarr) and is read block by block.

Coordinates: the work grid is in model-resolution pixels; outputs (GeoJSON, table) are converted
to full-resolution (level-0) slide pixels, x = column, y = row.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..instances.tiled import AISParams, BlockResult, TiledAIS
from ..tiling import tile_grid, tile_slices
from .slide import Slide, open_slide
from .tissue import tile_has_tissue, tissue_mask

#: Pixel size (um/px) PathoSAM sees by default: 40x scans (its training data are mostly 40x).
DEFAULT_TARGET_MPP = 0.25
MANIFEST_FORMAT = "pathosam-slide-1"


@dataclass
class SlideOptions:
    """Settings of a slide run (all of them enter the run's signature).

    ``target_mpp``: model resolution in um/px, None = no rescaling (use the slide's pixels as
    they are); ``mpp``: the slide's level-0 pixel size, overriding the metadata; ``roi``: (x, y,
    width, height) in level-0 pixels; ``tile_shape``/``halo`` in model-resolution pixels.
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
    sig = {"format": MANIFEST_FORMAT, "slide": str(slide.path.name), "slide_shape": list(slide.shape),
           "slide_size_bytes": slide.path.stat().st_size, "model": model.model_id, "options": opts}
    return json.loads(json.dumps(sig))  # as it reads back from JSON (tuples -> lists)


def _save_block(folder: Path, result: BlockResult) -> None:
    from ..io.atomic import atomic_write

    with atomic_write(folder / f"{result.index}.npz") as tmp:
        np.savez(tmp, anchors=result.anchors, stats=result.stats,
                 **({} if result.features is None else {"features": result.features}))


def _load_blocks(folder: Path) -> list[BlockResult]:
    out = []
    for f in sorted(folder.glob("*.npz")):
        if ".partial" in f.name:
            continue
        with np.load(f) as z:
            out.append(BlockResult(int(f.stem), None, z["anchors"], z["stats"],
                                   z["features"] if "features" in z else None))
    return out


def segment_slide(path: str | os.PathLike, model, out_dir: str | os.PathLike, options: SlideOptions | None = None,
                  name: str | None = None, progress: bool = True, stop_after: int | None = None) -> dict:
    """Segment the nuclei of a whole slide; returns the run manifest (also written as JSON).

    Outputs in ``out_dir``: ``NAME.ome.zarr`` (uint32 labels at model resolution, pyramid),
    ``NAME.geojson.gz`` (QuPath detections in level-0 pixels), ``NAME.parquet`` (one row per
    nucleus), ``NAME.tissue.png`` (the tissue mask), ``NAME.manifest.json`` (written last).
    ``stop_after``: stop (raise KeyboardInterrupt) after this many new blocks - a test hook that
    simulates a killed run.
    """
    from tqdm.auto import tqdm

    from ..automatic import image_name
    from ..image import prepare_input, to_rgb_uint8
    from ..io.omezarr import build_pyramid, create_label_zarr
    from ..semantic import class_features

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
        geom = Geometry.for_slide(slide, options)
        ts, halo = options.tile_shape, options.halo
        tiles = tile_grid(geom.shape, ts, halo)

        # tissue mask on a thumbnail of the whole slide
        thumb, thumb_ds = slide.thumbnail(2048)
        mask = tissue_mask(thumb) if options.tissue else np.ones(thumb.shape[:2], bool)

        def level0_block(block):
            (r0, c0), (r1, c1) = block
            x0, y0 = geom.to_level0(np.array([r0, r1]), np.array([c0, c1]))
            return (int(y0[0]), int(x0[0])), (int(np.ceil(y0[1])), int(np.ceil(x0[1])))

        has_tissue = [tile_has_tissue(mask, thumb_ds, level0_block(t.outer)) for t in tiles]

        # work state (resume)
        work = out_dir / f"{name}.work"
        if work.exists():
            old = json.loads((work / "job.json").read_text()) if (work / "job.json").is_file() else None
            if old != sig:
                shutil.rmtree(work)
        blocks_dir = work / "blocks"
        fresh = not work.exists()
        import zarr

        if fresh:
            blocks_dir.mkdir(parents=True)
            zarr.open_array(str(work / "labels.zarr"), mode="w", shape=geom.shape, chunks=ts, dtype="uint32",
                            fill_value=0)
            (work / "job.json").write_text(json.dumps(sig))
        labels = zarr.open_array(str(work / "labels.zarr"), mode="r+")
        pp_halo = (min(max(halo[0], 32), ts[0]), min(max(halo[1], 32), ts[1]))
        new_blocks = [0]

        def on_result(result: BlockResult) -> None:
            _save_block(blocks_dir, result)
            new_blocks[0] += 1
            if stop_after is not None and new_blocks[0] >= stop_after:
                raise KeyboardInterrupt(f"stopped after {stop_after} blocks (test hook)")

        job = TiledAIS(geom.shape, ts, pp_halo, options.ais, out=labels, on_result=on_result)
        for r in _load_blocks(blocks_dir):
            job.put(r, labels_written=True)
        resumed = len(job.results)
        todo = [i for i in range(job.n_blocks) if i not in job.results]
        needed = sorted({n for b in todo for n in job.grid.neighbours(b)})
        n_model = sum(has_tissue[i] for i in needed)
        background = None
        t_model = t_read = 0.0
        bar = tqdm(total=len(needed), desc=f"{name}: tiles", unit="tile", disable=not progress)
        pending: list = []

        def flush() -> None:
            nonlocal t_model
            if not pending:
                return
            t0 = time.perf_counter()
            tensors, in_sizes, origs = zip(*(p[1] for p in pending))
            feats = model.encode(list(tensors))
            inst = model.decode(feats, in_sizes, origs, "instance")
            sem = model.decode(feats, in_sizes, origs, "semantic") if options.classes else [None] * len(pending)
            t_model += time.perf_counter() - t0
            for (tile, _), m, s in zip(pending, inst, sem):
                il = (slice(None), *tile_slices(tile.inner_local))
                job.add(tile.index, m[il], None if s is None else class_features(s[il]))
            bar.update(len(pending))
            pending.clear()

        for i in needed:
            tile = tiles[i]
            if has_tissue[i]:
                t0 = time.perf_counter()
                rgb = geom.read(slide, tile.outer)
                pending.append((tile, prepare_input(to_rgb_uint8(rgb, options.normalization))))
                t_read += time.perf_counter() - t0
                if len(pending) >= options.batch_size:
                    flush()
            else:
                flush()  # keep raster order: earlier tissue tiles first
                (r0, c0), (r1, c1) = tile.inner
                if background is None or background.shape[1:] != (r1 - r0, c1 - c0):
                    background = np.ones((3, r1 - r0, c1 - c0), np.float32)
                    background[0] = 0
                feats = None
                if options.classes:
                    feats = np.zeros((11, r1 - r0, c1 - c0), np.float32)
                    feats[0] = 1  # background class, no votes, no shares
                job.add(i, background, feats)
                bar.update(1)
        flush()
        bar.close()

        # merge and write the outputs (under temporary names; the work folder stays until the end)
        t_post0 = time.perf_counter()
        from ..io.atomic import atomic_write

        zarr_path = out_dir / f"{name}.ome.zarr"
        with atomic_write(zarr_path) as tmp:
            _, arrays = create_label_zarr(tmp, geom.shape, ts, options.target_mpp or options.mpp or slide.mpp)
            n = job.finish(target=arrays[0])
            build_pyramid(arrays)
            nuclei = job.nuclei
            table = _table(nuclei, geom, job, options)
            _write_geojson(out_dir / f"{name}.geojson.gz", arrays[0], nuclei, table, geom, job, name, progress)
        from ..io.table import write_table

        write_table(table, parquet_path=out_dir / f"{name}.parquet")
        from PIL import Image

        with atomic_write(out_dir / f"{name}.tissue.png") as tmp:
            Image.fromarray((mask * 255).astype(np.uint8)).save(tmp, format="PNG")
        manifest = _manifest(sig, slide, model, options, geom, tiles, has_tissue, n, resumed, n_model,
                             {"read": t_read, "model": t_model, "postprocessing_and_outputs": time.perf_counter() - t_post0,
                              "total": time.perf_counter() - t_start}, thumb_ds, mask)
        with atomic_write(manifest_path) as tmp:
            tmp.write_text(json.dumps(manifest, indent=1))
        shutil.rmtree(work, ignore_errors=True)
        return manifest


def _table(nuclei, geom: Geometry, job: TiledAIS, options: SlideOptions):
    """Per-nucleus table in level-0 pixels (and um when the pixel size is known)."""
    import pandas as pd

    from ..semantic import CLASS_NAMES, classes_from_sums

    n = len(nuclei)
    cx, cy = geom.to_level0(nuclei.centroid[:, 0] + 0.5, nuclei.centroid[:, 1] + 0.5)
    bx0, by0 = geom.to_level0(nuclei.bbox[:, 0], nuclei.bbox[:, 1])
    bx1, by1 = geom.to_level0(nuclei.bbox[:, 2], nuclei.bbox[:, 3])
    W = geom.shape[1]
    owner = (nuclei.anchor // W // job.grid.tile_shape[0]) * job.grid.n_cols + (nuclei.anchor % W) // job.grid.tile_shape[1]
    df = pd.DataFrame({
        "id": np.arange(1, n + 1, dtype=np.uint32),
        "centroid_x": cx, "centroid_y": cy,
        "area": nuclei.area / geom.scale**2,  # level-0 px
        "bbox_x0": np.floor(bx0).astype(np.int64), "bbox_y0": np.floor(by0).astype(np.int64),
        "bbox_x1": np.ceil(bx1).astype(np.int64), "bbox_y1": np.ceil(by1).astype(np.int64),
        "tile": owner.astype(np.int64),
    })
    if options.target_mpp:
        df["area_um2"] = nuclei.area * options.target_mpp**2
    if options.classes:
        classes, probs = classes_from_sums(nuclei.features)
        df["class_id"] = classes[1:]
        df["class_name"] = [CLASS_NAMES.get(int(c), "") for c in classes[1:]]
        df["class_probability"] = probs[1:]
    return df


def _write_geojson(path: Path, labels, nuclei, table, geom: Geometry, job: TiledAIS, name: str,
                   progress: bool) -> None:
    """Stream one Feature per nucleus, block by block: each nucleus is traced once, by the block
    that holds its anchor, from its bounding box in the final label array."""
    from ..io.geojson import make_feature, write_features
    from ..io.polygons import trace_mask

    owner = table["tile"].to_numpy()
    order = np.argsort(owner, kind="stable")
    classes = table["class_name"].tolist() if "class_name" in table else None
    probs = table["class_probability"].to_numpy() if "class_probability" in table else None
    area = table["area"].to_numpy()
    cx, cy = table["centroid_x"].to_numpy(), table["centroid_y"].to_numpy()

    def features():
        start = 0
        while start < len(order):
            b = owner[order[start]]
            stop = start + int(np.searchsorted(owner[order[start:]], b, side="right"))
            ids = order[start:stop]  # 0-based nucleus indices owned by block b
            lo = nuclei.bbox[ids, :2].min(axis=0)
            hi = nuclei.bbox[ids, 2:].max(axis=0)
            region = np.asarray(labels[lo[0] : hi[0], lo[1] : hi[1]])
            for k in ids:
                r0, c0, r1, c1 = nuclei.bbox[k] - np.array([lo[0], lo[1], lo[0], lo[1]])
                m = np.zeros((r1 - r0 + 2, c1 - c0 + 2), bool)
                m[1:-1, 1:-1] = region[r0:r1, c0:c1] == k + 1
                parts = []
                for shell, holes in trace_mask(m):
                    conv = []
                    for ring in (shell, *holes):
                        x, y = geom.to_level0(ring[:, 1] + nuclei.bbox[k, 0] - 1, ring[:, 0] + nuclei.bbox[k, 1] - 1)
                        conv.append(np.round(np.stack([x, y], axis=1), 3))
                    parts.append((conv[0], conv[1:]))
                meas = {"Label id": int(k + 1), "Area px": float(area[k]), "Centroid X px": round(float(cx[k]), 3),
                        "Centroid Y px": round(float(cy[k]), 3)}
                if probs is not None:
                    meas["Class probability"] = round(float(probs[k]), 6)
                yield make_feature(int(k + 1), parts, "detection", classes[k] if classes else "", meas, name)
            start = stop

    write_features(path, features(), total=len(nuclei), progress=progress)


def _manifest(sig, slide, model, options, geom, tiles, has_tissue, n, resumed, n_model, seconds, thumb_ds, mask):
    import platform

    import torch

    from .. import __version__

    return {
        "signature": sig,
        "pathosam": __version__, "torch": torch.__version__, "python": platform.python_version(),
        "slide": {"path": str(slide.path), "shape": list(slide.shape), "mpp": slide.mpp, "backend": slide.backend,
                  "levels": [list(s) for s in slide.level_shapes]},
        "model": {"name": model.name, "id": model.model_id, "device": str(model.device)},
        "work_grid": {"shape": list(geom.shape), "scale": geom.scale, "roi_xywh": list(geom.roi),
                      "tiles": len(tiles), "tiles_with_tissue": int(sum(has_tissue)),
                      "tiles_through_model": n_model, "blocks_resumed": resumed},
        "tissue_fraction": float(mask.mean()), "tissue_mask_downsample": thumb_ds,
        "nuclei": n, "seconds": seconds,
    }
