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

Resume (``--resume``): a slide run in a subprocess is killed (SIGKILL) at 25/50/75 % of its model
tiles and interrupted (SIGINT, Ctrl-C) at 30 %, then run again to completion; reports the tiles
put through the model again ("recomputed" = tiles that entered the model in the stopped run and
again on resume) against the bound (SIGKILL: the batch in the model, ``--batch-size`` tiles;
SIGINT: 0, the batch in flight is finished and saved), and checks that the outputs equal an
uninterrupted run's. Default: ``pathosam_small`` on the whole CMU-1-Small-Region at 0.25 um/px.

    python benchmarks/bench_wsi.py --speed --threads 2
    python benchmarks/bench_wsi.py --memory --sizes 5000 10000 20000
    python benchmarks/bench_wsi.py --resume --threads 1 --batch-size 2 --tile 256 --halo 64
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
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
    from pathosam.predictor import PathoSAM
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


def resume_child(out: Path, progress_file: Path, args) -> None:
    """One slide run (in its own process): counts the tiles entering the model in
    ``progress_file`` (rewritten after each batch starts) and prints the run's work grid."""
    import pathosam
    from pathosam.automatic import ais_params
    from pathosam.wsi.pipeline import SlideOptions, segment_slide

    torch.set_num_threads(args.threads)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored
    model = pathosam.load_model(args.model, device="cpu")
    encode, started = model.encode, [0]

    def counting_encode(batch, *a, **k):
        started[0] += len(batch)
        tmp = progress_file.with_suffix(".tmp")
        tmp.write_text(str(started[0]))
        os.replace(tmp, progress_file)
        return encode(batch, *a, **k)

    model.encode = counting_encode
    opts = SlideOptions(target_mpp=args.target_mpp, roi=tuple(args.resume_roi) if args.resume_roi else None,
                        tile_shape=(args.tile, args.tile), halo=(args.halo, args.halo),
                        batch_size=args.batch_size, ais=ais_params(model))
    try:
        man = segment_slide(shared() / "data/wsi/CMU-1-Small-Region.svs", model, out, opts, name="slide",
                            progress=False)
    except KeyboardInterrupt:
        print(json.dumps({"interrupted": True, "started": started[0]}))
        sys.exit(130)
    print(json.dumps({"started": started[0], **man["work_grid"], "seconds": man["seconds"]}))


def _outputs_equal(a: Path, b: Path) -> bool:
    from pathosam.io.omezarr import read_label_zarr

    same = all((a / f).read_bytes() == (b / f).read_bytes() for f in ("slide.geojson.gz", "slide.parquet"))
    return same and bool(np.array_equal(read_label_zarr(a / "slide.ome.zarr"), read_label_zarr(b / "slide.ome.zarr")))


def bench_resume(args, workdir: Path) -> dict:
    """Reference run, then for each stop point: run, stop at the fraction of the reference's model
    tiles with the signal, rerun to completion; tiles recomputed = started before + on resume -
    reference."""
    child = [sys.executable, __file__, "--threads", str(args.threads), "--batch-size", str(args.batch_size),
             "--model", args.model, "--tile", str(args.tile), "--halo", str(args.halo),
             "--target-mpp", str(args.target_mpp)]
    if args.resume_roi:
        child += ["--resume-roi", *map(str, args.resume_roi)]

    def run(out: Path, progress: Path, stop: tuple[int, float] | None = None, total: int = 0) -> dict:
        progress.unlink(missing_ok=True)
        cmd = child + ["--resume-child", str(out), str(progress)]
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        if stop is not None:
            sig, frac = stop
            while p.poll() is None:
                try:
                    n = int(progress.read_text())
                except (FileNotFoundError, ValueError):
                    n = 0
                if n >= frac * total:
                    p.send_signal(sig)
                    break
                time.sleep(0.005)
        stdout, _ = p.communicate()
        lines = stdout.strip().splitlines()
        res = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
        if "started" not in res or stop is not None and sig == signal.SIGKILL:
            res["started"] = int(progress.read_text()) if progress.is_file() else 0
        res["rc"], res["wall_s"] = p.returncode, time.perf_counter() - t0
        return res

    ref = run(workdir / "ref", workdir / "ref.progress")
    total = ref["tiles_through_model"]
    kills = [(signal.SIGKILL, f) for f in args.kill_at] + [(signal.SIGINT, f) for f in args.interrupt_at]
    rows = []
    for k, (sig, frac) in enumerate(kills):
        out, prog = workdir / f"run{k}", workdir / f"run{k}.progress"
        first = run(out, prog, (sig, frac), total)
        again = run(out, prog)
        recomputed = first["started"] + again["tiles_through_model"] - total
        bound = args.batch_size if sig == signal.SIGKILL else 0
        rows.append({"signal": signal.Signals(sig).name, "at": frac, "started_before_stop": first["started"],
                     "rc_stopped": first["rc"], "through_model_on_resume": again["tiles_through_model"],
                     "blocks_resumed": again["blocks_resumed"], "tiles_loaded": again.get("tiles_loaded"),
                     "recomputed": recomputed, "bound": bound, "within_bound": 0 <= recomputed <= bound,
                     "identical_outputs": _outputs_equal(workdir / "ref", out), "resume_s": again["wall_s"]})
        print(json.dumps(rows[-1]), file=sys.stderr)
    return {"model": args.model, "model_tiles": total, "tiles": ref["tiles"], "batch_size": args.batch_size,
            "reference_s": ref["wall_s"], "runs": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speed", action="store_true")
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--roi", type=int, nargs=4, default=[300, 1000, 700, 500], metavar=("X", "Y", "W", "H"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 10000, 20000])
    ap.add_argument("--one-size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--resume-roi", type=int, nargs=4, metavar=("X", "Y", "W", "H"), help="default: whole slide")
    ap.add_argument("--model", default="pathosam_small")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--tile", type=int, default=384)
    ap.add_argument("--halo", type=int, default=64)
    ap.add_argument("--target-mpp", type=float, default=0.25)
    ap.add_argument("--kill-at", type=float, nargs="*", default=[0.25, 0.5, 0.75])
    ap.add_argument("--interrupt-at", type=float, nargs="*", default=[0.3])
    ap.add_argument("--resume-child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.resume_child:
        resume_child(*args.resume_child, args)
        return
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
    if args.resume:
        with tempfile.TemporaryDirectory() as tmp:
            res["resume"] = bench_resume(args, Path(tmp))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
