"""Whole-slide pipeline: speed with ViT-B per mm^2 of tissue, and memory vs slide size.

Speed (``--speed``): random-weight ViT-B + UNETR (speed does not depend on the values) on a region
of ``CMU-1-Small-Region.svs`` (0.499 um/px, rescaled to the model's 0.25 um/px) with the tissue
mask: tiles/s through the model, seconds per mm^2 of tissue, tissue fraction, and the time the
mask saves (skipped tiles x measured seconds per model tile).

Memory (``--memory``): synthetic pyramidal TIFF slides of N x N px built from the small slide
(mirrored copies, written tile by tile), segmented without rescaling by a stand-in model whose
decoder maps are computed from the pixels (no network: the pipeline's own memory is what is
measured; the real model adds its constant working set, 2.7 GB for ViT-B, see bench_model.py).
Each size runs in a fresh process; peak RSS is reported per size.

    python benchmarks/bench_wsi.py --speed --threads 2
    python benchmarks/bench_wsi.py --memory --sizes 5000 10000 20000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def shared() -> Path:
    return Path(os.environ.get("PATHOSAM_SHARED", ROOT.parent / "shared"))


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


class PixelMaps:
    """Stand-in model for the memory benchmark: maps from the pixels (red -> distances), same
    encode/decode interface as PathoSAM, no weights."""

    name = model_id = "pixel-maps"
    device = torch.device("cpu")
    decoder = object()
    semantic_decoder = None

    def encode(self, batch):
        return [t.float() for t in batch]

    def decode(self, features, input_sizes, original_sizes, what="instance", bn_mode="per_tile", inputs=None):
        import torch.nn.functional as F

        out = []
        for x, orig in zip(features, original_sizes):
            x = F.interpolate(x[None], tuple(orig), mode="bilinear", align_corners=False)[0]
            d = (x[0] / 180).clamp(0, 1)
            out.append(torch.stack([(d < 0.999).float(), d, d]).numpy())
        return out


def make_slide(path: Path, size: int, tile: int = 512) -> None:
    """N x N pyramidal TIFF (3 levels) of mirrored copies of the small slide, written tile by tile."""
    import tifffile

    from pathosam.wsi import open_slide

    with open_slide(shared() / "data/wsi/CMU-1-Small-Region.svs") as s:
        base = s.read(0, 0, *s.shape)
    bh, bw = base.shape[:2]

    def region(r0, c0, h, w, step):
        rows = (np.arange(r0, r0 + h) * step) % (2 * bh)
        rows = np.where(rows >= bh, 2 * bh - 1 - rows, rows)
        cols = (np.arange(c0, c0 + w) * step) % (2 * bw)
        cols = np.where(cols >= bw, 2 * bw - 1 - cols, cols)
        return base[rows][:, cols]

    def tiles(n, step):
        for r in range(0, n, tile):
            for c in range(0, n, tile):
                t = np.full((tile, tile, 3), 255, np.uint8)
                h, w = min(tile, n - r), min(tile, n - c)
                t[:h, :w] = region(r, c, h, w, step)
                yield t

    with tifffile.TiffWriter(path, bigtiff=True) as w:
        w.write(tiles(size, 1), shape=(size, size, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                compression="zlib", compressionargs={"level": 1}, subifds=3, resolution=(1e4 / 0.25, 1e4 / 0.25),
                resolutionunit="CENTIMETER")
        for k in (2, 4, 8):
            n = -(-size // k)
            w.write(tiles(n, k), shape=(n, n, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                    compression="zlib", compressionargs={"level": 1}, subfiletype=1)


def run_memory_one(size: int, workdir: Path) -> dict:
    from pathosam.wsi.pipeline import SlideOptions, segment_slide

    slide = workdir / f"synthetic_{size}.tif"
    t = time.perf_counter()
    make_slide(slide, size)
    t_make = time.perf_counter() - t
    rss_before = peak_rss_gb()
    man = segment_slide(slide, PixelMaps(), workdir / "out", SlideOptions(target_mpp=None), progress=False)
    return {"size": size, "make_slide_s": t_make, "tiles": man["work_grid"]["tiles"],
            "tiles_with_tissue": man["work_grid"]["tiles_with_tissue"], "nuclei": man["nuclei"],
            "seconds": man["seconds"], "peak_rss_gb_before_run": rss_before, "peak_rss_gb": peak_rss_gb(),
            "label_image_gb_if_in_memory": size * size * 4 / 1024**3}


def bench_speed(threads: int, roi) -> dict:
    from pathosam.model import PathoSAM
    from pathosam.models.sam import build_sam
    from pathosam.models.unetr import UNETRDecoder
    from pathosam.wsi.pipeline import SlideOptions, segment_slide

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = PathoSAM(build_sam("vit_b"), UNETRDecoder(3, transposed=True), device="cpu", name="random-vit_b")
    with tempfile.TemporaryDirectory() as tmp:
        man = segment_slide(shared() / "data/wsi/CMU-1-Small-Region.svs", model, tmp,
                            SlideOptions(roi=tuple(roi)), progress=True)
    g = man["work_grid"]
    mpp0 = man["slide"]["mpp"]
    x, y, w, h = g["roi_xywh"]
    roi_mm2 = w * h * mpp0**2 / 1e6
    tissue_mm2 = roi_mm2 * g["tiles_with_tissue"] / g["tiles"]  # tiles with tissue, as area
    s = man["seconds"]
    per_tile = s["model"] / max(g["tiles_through_model"], 1)
    return {"roi_xywh": [x, y, w, h], "work_grid": g["shape"], "tiles": g["tiles"],
            "tiles_through_model": g["tiles_through_model"], "seconds": s,
            "model_tiles_per_s": g["tiles_through_model"] / s["total"], "seconds_per_model_tile": per_tile,
            "tissue_tile_fraction": g["tiles_with_tissue"] / g["tiles"],
            "seconds_per_mm2_tissue": s["total"] / max(tissue_mm2, 1e-9),
            "seconds_saved_by_tissue_mask_est": (g["tiles"] - g["tiles_through_model"]) * per_tile,
            "nuclei": man["nuclei"], "peak_rss_gb": peak_rss_gb()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speed", action="store_true")
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--roi", type=int, nargs=4, default=[300, 1000, 700, 500], metavar=("X", "Y", "W", "H"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 10000, 20000])
    ap.add_argument("--one-size", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one_size:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(run_memory_one(args.one_size, Path(tmp))))
        return
    res = {"machine": f"{os.cpu_count()} cpus, {args.threads} threads", "torch": torch.__version__}
    if args.speed:
        res["speed"] = bench_speed(args.threads, args.roi)
    if args.memory:
        res["memory"] = []
        for size in args.sizes:
            out = subprocess.run([sys.executable, __file__, "--one-size", str(size)], capture_output=True, text=True,
                                 check=True)
            res["memory"].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(res["memory"][-1]), file=sys.stderr)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
