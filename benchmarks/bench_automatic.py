"""Seconds per 512 x 512 tile for automatic segmentation (AIS and AMG) with ViT-B, and the share
of post-processing; plus the streaming tiled AIS on a large image (speed and peak memory).

* AIS per tile = encoder + UNETR decoder (random ViT-B weights: speed does not depend on the
  values) + post-processing. Post-processing time depends on the maps' content, so it is measured
  on realistic maps: the reference's noisy decoder maps of MoNuSeg (vectors/ais, 1000 x 1000,
  ~360 nuclei), per 512 x 512 of area, untiled and tiled (384 + 64 halo) in the same run; the
  ratio tiled / untiled is the cost of seam-free tiling.
* AMG per tile = encoder + 32 x 32 points x 3 masks through SAM's mask decoder + filtering/NMS.
* Streaming: ``TiledAIS`` over an N x N image whose maps are produced tile by tile (mirrored
  copies of the MoNuSeg maps), never held whole; peak RSS growth vs the label image's size.

    python benchmarks/bench_automatic.py --threads 2 [--skip-amg] [--stream-size 8192]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def shared() -> Path:
    return Path(os.environ.get("PATHOSAM_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def noisy_maps() -> np.ndarray:
    return np.load(shared() / "vectors/ais/noisy_maps_monuseg.npz")["maps"].astype(np.float32)


def random_vit_b():
    from pathosam.predictor import PathoSAM
    from pathosam.models.sam import build_sam
    from pathosam.models.unetr import UNETRDecoder

    torch.manual_seed(0)
    return PathoSAM(build_sam("vit_b"), UNETRDecoder(3, transposed=True), device="cpu", name="random-vit_b")


def timed(fn, repeats: int = 1):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def bench_postprocessing(repeats: int) -> dict:
    from pathosam.instances import ais_from_maps

    maps = noisy_maps()
    per_tile = 512 * 512 / (maps.shape[1] * maps.shape[2])
    t_untiled, lab_u = timed(lambda: ais_from_maps(maps), repeats)
    t_tiled, lab_t = timed(lambda: ais_from_maps(maps, tile_shape=(384, 384), halo=(64, 64)), repeats)
    res = {"image": list(maps.shape[1:]), "nuclei": int(lab_u.max()), "identical": bool(np.array_equal(lab_u, lab_t)),
           "untiled_s_per_tile": t_untiled * per_tile, "tiled_s_per_tile": t_tiled * per_tile,
           "tiled_over_untiled": t_tiled / t_untiled}
    # shape seeds (pathosam_small's default): untiled, tiled as for SAM-size models, and tiled in
    # the small model's 96 px blocks (post-processing halo 64), each against the reference seeds
    t_ref_small, _ = timed(lambda: ais_from_maps(maps, tile_shape=(96, 96), halo=(32, 32)), repeats)
    t_su, lab_su = timed(lambda: ais_from_maps(maps, seeds="shape"), repeats)
    t_st, lab_st = timed(lambda: ais_from_maps(maps, seeds="shape", tile_shape=(384, 384), halo=(64, 64)), repeats)
    t_ss, lab_ss = timed(lambda: ais_from_maps(maps, seeds="shape", tile_shape=(96, 96), halo=(64, 64)), repeats)
    res["shape_seeds"] = {
        "nuclei": int(lab_su.max()), "identical_tiled_384": bool(np.array_equal(lab_su, lab_st)),
        "identical_tiled_96": bool(np.array_equal(lab_su, lab_ss)),
        "untiled_s_per_tile": t_su * per_tile, "tiled_384_s_per_tile": t_st * per_tile,
        "tiled_96_s_per_tile": t_ss * per_tile, "untiled_over_reference_seeds": t_su / t_untiled,
        "tiled_96_over_reference_seeds_tiled_96": t_ss / t_ref_small,
    }
    return res


def bench_ais_model(model, image: np.ndarray, repeats: int) -> dict:
    from pathosam.image import prepare_input

    x, ins, orig = prepare_input(image)
    t_enc, feats = timed(lambda: model.encode([x]), repeats)
    t_dec, _ = timed(lambda: model.decode(feats, [ins], [orig], "instance"), repeats)
    return {"encoder_s": t_enc, "decoder_s": t_dec}


def bench_amg(model, image: np.ndarray, points_per_side: int) -> dict:
    from pathosam.instances.amg import filter_masks, generate_mask_candidates

    emb = model.embed(image, progress=False)
    t0 = time.perf_counter()
    cands = generate_mask_candidates(model, emb, points_per_side=points_per_side, progress=False)
    t1 = time.perf_counter()
    filter_masks(cands)
    t2 = time.perf_counter()
    return {"points": points_per_side**2, "prompt_decoding_s": t1 - t0, "filter_nms_s": t2 - t1}


def bench_stream(size: int, tile: int = 384, halo: int = 64) -> dict:
    from pathosam.instances.tiled import TiledAIS

    base = noisy_maps()
    reps = -(-size // base.shape[1])
    rss0 = peak_rss_gb()

    def block(r0, r1, c0, c1):  # maps of a block of the mirrored, repeated image, made on demand
        rows = np.arange(r0, r1) % (2 * base.shape[1])
        rows = np.where(rows >= base.shape[1], 2 * base.shape[1] - 1 - rows, rows)
        cols = np.arange(c0, c1) % (2 * base.shape[2])
        cols = np.where(cols >= base.shape[2], 2 * base.shape[2] - 1 - cols, cols)
        return base[:, rows][:, :, cols]

    del reps
    job = TiledAIS((size, size), (tile, tile), (halo, halo))
    t = time.perf_counter()
    held = 0
    for tl in job.blocks():
        (r0, c0), (r1, c1) = tl.inner
        job.add(tl.index, block(r0, r1, c0, c1))
        held = max(held, len(job._maps))
    n = job.finish()
    seconds = time.perf_counter() - t
    label_gb = size * size * 4 / 1024**3
    return {"size": size, "blocks": job.n_blocks, "nuclei": n, "seconds": seconds,
            "s_per_512_tile": seconds * 512 * 512 / size**2, "label_image_gb": label_gb,
            "peak_rss_growth_gb": peak_rss_gb() - rss0, "max_tile_maps_held": held}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--skip-amg", action="store_true")
    ap.add_argument("--points-per-side", type=int, default=32)
    ap.add_argument("--stream-size", type=int, default=8192)
    ap.add_argument("--postprocessing-only", action="store_true", help="only time the AIS post-processing")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.postprocessing_only:
        print(json.dumps({"torch": torch.__version__, "postprocessing": bench_postprocessing(args.repeats)}, indent=2))
        return

    res = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, {args.threads} threads",
           "torch": torch.__version__}
    res["stream"] = bench_stream(args.stream_size)  # first: its peak-RSS growth is measured before the model loads
    res["postprocessing"] = pp = bench_postprocessing(args.repeats)
    model = random_vit_b()
    from PIL import Image

    image = np.asarray(Image.open(shared() / "vectors/inputs/monuseg_512.png").convert("RGB"))
    res["ais_model"] = m = bench_ais_model(model, image, args.repeats)
    ais_total = m["encoder_s"] + m["decoder_s"] + pp["tiled_s_per_tile"]
    res["ais_s_per_tile"] = ais_total
    res["ais_postprocessing_share"] = pp["tiled_s_per_tile"] / ais_total
    if not args.skip_amg:
        res["amg"] = a = bench_amg(model, image, args.points_per_side)
        amg_total = m["encoder_s"] + a["prompt_decoding_s"] + a["filter_nms_s"]
        res["amg_s_per_tile"] = amg_total
        res["amg_filter_share"] = a["filter_nms_s"] / amg_total
        res["amg_over_ais"] = amg_total / ais_total
    res["peak_rss_gb"] = peak_rss_gb()
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
