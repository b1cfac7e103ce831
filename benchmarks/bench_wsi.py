"""Whole-slide pipeline: speed per mm^2 of tissue, and memory vs slide size.

Speed (``--speed``): each model of ``--models`` (``vit_b``: random-weight ViT-B + UNETR, speed
does not depend on the values; any registry name, e.g. ``pathosam_small``, trained weights) in
each precision of ``--precision`` on a region (``--roi``) of ``CMU-1-Small-Region.svs`` (0.499
um/px, rescaled to the model's 0.25 um/px, the model's automatic tiling, tissue mask on):
tiles/s through the model, seconds per mm^2 of tissue (tissue area of the ROI measured with the
pipeline's tissue mask), the time the mask saves, the speed-up fp32 / bf16, and an estimate for
the whole CMU-1 slide (its tissue area measured if ``CMU-1.*`` is in the shared wsi folder, else
assumed: the tissue fraction measured on CMU-1-Small-Region x CMU-1's 46000 x 32914 px at
0.499 um/px, stated in the output). ``--rounds`` > 1 repeats the runs, alternating the order of
the precisions, and keeps each one's fastest.

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

    python benchmarks/bench_wsi.py --speed --threads 2                      # vit_b and pathosam_small, fp32 and bf16
    python benchmarks/bench_wsi.py --speed --threads 1 --models pathosam_small --precision fp32 bf16
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


#: CMU-1 (the slide CMU-1-Small-Region was cut from, per its Aperio metadata): level-0 size and pixel size
CMU1_SHAPE_WH = (46000, 32914)
CMU1_MPP = 0.499


def speed_model(name: str):
    """``vit_b``: random-weight ViT-B + UNETR; anything else: ``pathosam.load_model(name)``."""
    import pathosam
    from pathosam.models.sam import build_sam
    from pathosam.models.unetr import UNETRDecoder
    from pathosam.predictor import PathoSAM

    if name == "vit_b":
        torch.manual_seed(0)
        return PathoSAM(build_sam("vit_b"), UNETRDecoder(3, transposed=True), device="cpu", name="random-vit_b")
    return pathosam.load_model(name, device="cpu", progress=False)


def tissue_area_mm2(path: Path, roi=None) -> dict:
    """Tissue area (mm^2) and fraction of a slide, or of its ``roi`` (x, y, w, h level-0 px), by the
    pipeline's tissue mask on a thumbnail."""
    from pathosam.wsi import open_slide
    from pathosam.wsi.tissue import tissue_mask

    with open_slide(path) as s:
        thumb, ds = s.thumbnail(2048)
        mpp, (H, W) = s.mpp, s.shape
    mask = tissue_mask(thumb)
    x, y, w, h = roi if roi is not None else (0, 0, W, H)
    part = mask[int(y / ds) : int(np.ceil((y + h) / ds)), int(x / ds) : int(np.ceil((x + w) / ds))]
    frac = float(part.mean())
    return {"tissue_fraction": frac, "area_mm2": w * h * mpp**2 / 1e6, "tissue_mm2": frac * w * h * mpp**2 / 1e6}


def cmu1_tissue() -> dict:
    """Tissue area of the whole CMU-1 slide: measured if it is in the shared wsi folder, else the
    stated assumption (CMU-1-Small-Region's measured tissue fraction x CMU-1's size)."""
    folder = shared() / "data/wsi"
    found = [p for p in sorted(folder.glob("CMU-1.*")) if p.suffix.lower() in (".svs", ".tif", ".tiff")]
    if found:
        t = tissue_area_mm2(found[0])
        return {"source": f"measured on {found[0].name} (tissue mask)", **t}
    small = tissue_area_mm2(folder / "CMU-1-Small-Region.svs")
    W, H = CMU1_SHAPE_WH
    area = W * H * CMU1_MPP**2 / 1e6
    return {"source": (f"ASSUMED: CMU-1 is not in {folder}; tissue fraction measured on the whole "
                       f"CMU-1-Small-Region ({small['tissue_fraction']:.3f}) x CMU-1's {W} x {H} px at "
                       f"{CMU1_MPP} um/px ({area:.1f} mm^2). The small region was cut from tissue, so this "
                       "likely overestimates the slide's tissue area"),
            "tissue_fraction": small["tissue_fraction"], "area_mm2": area, "tissue_mm2": small["tissue_fraction"] * area}


def speed_run(model, precision: str, roi, tissue_mm2: float) -> dict:
    """One slide run of ``model`` in ``precision`` on ``roi`` at 0.25 um/px, the model's automatic tiling."""
    from pathosam.automatic import ais_params
    from pathosam.inference import auto_tiling
    from pathosam.wsi.pipeline import SlideOptions, segment_slide

    _, tile, halo = auto_tiling(model.img_size)
    opts = SlideOptions(roi=tuple(roi), tile_shape=tile, halo=halo, ais=ais_params(model))
    cpu0 = time.process_time()
    with model.using(precision), tempfile.TemporaryDirectory() as tmp:
        man = segment_slide(shared() / "data/wsi/CMU-1-Small-Region.svs", model, tmp, opts, progress=False)
    cpu = time.process_time() - cpu0  # all threads of this process: the work, whatever the cores did
    g, s = man["work_grid"], man["seconds"]
    per_tile = s["model"] / max(g["tiles_through_model"], 1)
    x, y, w, h = g["roi_xywh"]
    tile_area_mm2 = w * h * man["slide"]["mpp"] ** 2 / 1e6 * g["tiles_with_tissue"] / g["tiles"]
    return {"model": model.name, "model_id": man["model"]["id"], "precision": precision,
            "tile_shape": list(tile), "halo": list(halo), "work_grid": g["shape"], "tiles": g["tiles"],
            "tiles_through_model": g["tiles_through_model"], "seconds": s,
            "model_tiles_per_s": g["tiles_through_model"] / s["total"], "seconds_per_model_tile": per_tile,
            "tissue_tile_fraction": g["tiles_with_tissue"] / g["tiles"],
            "seconds_per_mm2_tissue": s["total"] / max(tissue_mm2, 1e-9),
            "cpu_seconds": cpu, "cpu_seconds_per_mm2_tissue": cpu / max(tissue_mm2, 1e-9),
            "seconds_per_mm2_tissue_tiles": s["total"] / max(tile_area_mm2, 1e-9),
            "seconds_saved_by_tissue_mask_est": (g["tiles"] - g["tiles_through_model"]) * per_tile,
            "nuclei": man["nuclei"], "peak_rss_gb": peak_rss_gb()}


def bench_speed(threads: int, roi, models: list[str], precisions: list[str], rounds: int = 1) -> dict:
    """Every model x precision on ``roi`` (fastest of ``rounds``; rounds interleave the models,
    precision order alternating): seconds and CPU seconds per mm^2 of tissue, speed-up fp32 /
    other, and the CMU-1 estimate."""
    torch.set_num_threads(threads)
    roi_tissue = tissue_area_mm2(shared() / "data/wsi/CMU-1-Small-Region.svs", roi)
    cmu1 = cmu1_tissue()
    loaded = {}
    for name in models:
        model = loaded[name] = speed_model(name)
        warm = np.full((model.img_size // 2, model.img_size // 2, 3), 200, np.uint8)
        for p in precisions:  # warm-up: low-precision weight copies and first-call costs are not timed
            model.embed(warm, tile_shape=None, precision=p, progress=False)
    # rounds interleave the models (and alternate the precision order), so that a slower phase of
    # a shared machine does not fall on one model only; the fastest run of each is kept
    best: dict[tuple[str, str], dict] = {}
    for r in range(rounds):
        for name, model in loaded.items():
            for p in precisions if r % 2 == 0 else precisions[::-1]:
                res = speed_run(model, p, roi, roi_tissue["tissue_mm2"])
                print(json.dumps({k: res[k] for k in ("model", "precision", "seconds_per_mm2_tissue",
                                                       "cpu_seconds_per_mm2_tissue", "seconds_per_model_tile")}),
                      file=sys.stderr)
                if (name, p) not in best or res["seconds"]["total"] < best[name, p]["seconds"]["total"]:
                    best[name, p] = res
    runs = []
    for name in loaded:
        for p in precisions:
            res = best[name, p]
            res["cmu1_estimate_h"] = res["seconds_per_mm2_tissue"] * cmu1["tissue_mm2"] / 3600
            if p != "fp32" and (name, "fp32") in best:
                res["speedup_fp32_over_this"] = best[name, "fp32"]["seconds"]["total"] / res["seconds"]["total"]
            runs.append(res)
    return {"slide": "CMU-1-Small-Region.svs", "target_mpp": 0.25, "roi_xywh": list(roi), "roi_tissue": roi_tissue,
            "cmu1_tissue": cmu1, "rounds": rounds, "runs": runs, "table": speed_table(runs, cmu1)}


def speed_table(runs: list[dict], cmu1: dict) -> str:
    lines = ["| model | precision | tiles (model) | s / model tile | s / mm^2 tissue | fp32 / this | CMU-1 est. (h) |",
             "|---|---|---|---|---|---|---|"]
    for r in runs:
        sp = r.get("speedup_fp32_over_this")
        lines.append(f"| {r['model']} | {r['precision']} | {r['tiles']} ({r['tiles_through_model']}) "
                     f"| {r['seconds_per_model_tile']:.3f} | {r['seconds_per_mm2_tissue']:.1f} "
                     f"| {'–' if sp is None else f'{sp:.2f}'} | {r['cmu1_estimate_h']:.2f} |")
    lines.append(f"\nCMU-1 tissue: {cmu1['tissue_mm2']:.1f} mm^2 ({cmu1['source']})")
    return "\n".join(lines)


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
    ap.add_argument("--roi", type=int, nargs=4, default=[300, 1000, 700, 500], metavar=("X", "Y", "W", "H"),
                    help="speed: level-0 region of the small slide")
    ap.add_argument("--models", nargs="+", default=["vit_b", "pathosam_small"],
                    help="speed: vit_b (random weights) and/or registry names")
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16", "auto"],
                    help="speed: precisions to run each model in")
    ap.add_argument("--rounds", type=int, default=1, help="speed: repeats, alternating the precision order")
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
    from pathosam.precision import cpu_model, platform_note

    res = {"machine": f"{cpu_model()} ({platform_note()}), {os.cpu_count()} cpus, {args.threads} threads",
           "torch": torch.__version__}
    if args.speed:
        res["speed"] = bench_speed(args.threads, args.roi, args.models, args.precision, args.rounds)
        print(res["speed"]["table"], file=sys.stderr)
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
