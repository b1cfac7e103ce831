"""Speed and memory of the model on one 512 x 512 tile (ViT-B + UNETR instance decoder).

Reports encoder and UNETR seconds (best of ``--repeats``), the process's peak memory, the FLOPs
of each part (counted with torch's FlopCounterMode), the matmul FLOP/s measured in the same run,
and two ratios that survive a noisy machine:
  * floor ratio = seconds / (FLOPs / matmul FLOP/s)  (1.0 = as fast as a plain matmul),
  * speed-up vs a straightforward NCHW implementation of the same decoder run in this process
    (conv_transpose2d, F.instance_norm, train-mode batch_norm: what torch-em's modules execute).
Weights are random (no downloads): speed does not depend on their values.

    python benchmarks/bench_model.py --threads 2 [--arch vit_b] [--repeats 2]

Precision (``--precision fp32 bf16``): encoder and UNETR seconds of each precision (best of
``--repeats``, the precisions alternating within each repeat), the speed-up fp32 / p, the
relative error of the embedding (||e_p - e_fp32|| / ||e_fp32||) and the max abs difference of the
decoder maps vs fp32, end to end (p embedding -> p decoder) and of the decoder alone (fp32
embedding -> p decoder); plus the bf16 matmul FLOP/s. FLOPs, floor ratios and the naive
decoder are fp32.

    python benchmarks/bench_model.py --threads 1 --repeats 2 --precision fp32 bf16

Side by side with micro-sam (``--microsam PYTHON``: the python of a micro-sam virtualenv, see
``../shared/reference/microsam-install.md``): embedding + AIS decoder maps of the same 512 x 512
real tile (``--tile PNG``, default the shared GBM40 tile) in alternating worker processes
(:mod:`side_by_side`), the median of each side and their ratio; only this comparison is run.
``--precision``: the precision(s) of our side (each one a worker per round; micro-sam stays fp32).

    python benchmarks/bench_model.py --threads 2 --microsam ~/.cache/microsam-venv/bin/python --rounds 3
    python benchmarks/bench_model.py --threads 2 --microsam ~/.cache/microsam-venv/bin/python --precision bf16
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch
import torch.nn.functional as F


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def matmul_flops_per_s(n: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def count_flops(fn, *args) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        fn(*args)
    return int(counter.get_total_flops())


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        with torch.inference_mode():
            fn()
        best = min(best, time.perf_counter() - t)
    return best


def naive_unetr(dec, x: torch.Tensor) -> torch.Tensor:
    """The decoder computed the straightforward way (NCHW, library kernels), for comparison."""

    def up(m, x):
        if hasattr(m, "block"):
            return F.conv_transpose2d(x, m.block.weight.contiguous(), m.block.bias, stride=2)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return F.conv2d(x, m.conv.weight.contiguous(), m.conv.bias)

    def conv(c, x):
        return F.conv2d(x, c.weight.contiguous(), c.bias, padding=c.padding)

    def convblock(b, x):
        s = b.block
        x = torch.relu(conv(s[1], F.instance_norm(x)))
        return torch.relu(conv(s[4], F.instance_norm(x)))

    def deconv(d, x):
        u, c, bn, _ = d.block
        x = conv(c.block, up(u, x))
        return torch.relu(F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps))

    z9 = deconv(dec.deconv1, x)
    z6 = deconv(dec.deconv2, z9)
    z3 = deconv(dec.deconv3, z6)
    z0 = deconv(dec.deconv4, z3)
    y = convblock(dec.base, x)
    for block, sampler, skip in zip(dec.decoder.blocks, dec.decoder.samplers, [z9, z6, z3]):
        y = up(sampler, y)
        lo = (skip.shape[1] - y.shape[1]) // 2
        y = convblock(block, torch.cat([y, skip[:, lo : lo + y.shape[1]]], 1))
    y = convblock(dec.decoder_head, torch.cat([up(dec.deconv_out, y), z0], 1))
    return torch.sigmoid(F.conv2d(y, dec.out_conv.weight.contiguous(), dec.out_conv.bias))


def machine() -> str:
    """CPU name and its bf16-relevant flags (``pathosam.precision``)."""
    from pathosam.precision import cpu_model, platform_note

    return f"{cpu_model()} ({platform_note()})"


def time_precisions(model, image: np.ndarray, precisions: list[str], repeats: int) -> dict:
    """Best encoder and UNETR seconds per precision, the precisions alternating in each repeat."""
    emb = {}
    for p in precisions:  # warm-up (and the one-off conversion of the low-precision weights)
        emb[p] = model.embed(image, progress=False, precision=p)
        model.instance_maps(emb[p], progress=False, precision=p)
    enc = {p: float("inf") for p in precisions}
    dec = dict(enc)
    for _ in range(repeats):
        for p in precisions:
            enc[p] = min(enc[p], best_time(lambda: model.embed(image, progress=False, precision=p), 1))
            dec[p] = min(dec[p], best_time(lambda: model.instance_maps(emb[p], progress=False, precision=p), 1))
    return {p: {"encoder_s": enc[p], "unetr_s": dec[p]} for p in precisions}


def precision_errors(model, image: np.ndarray, precision: str) -> dict:
    """Differences of ``precision``'s embedding and decoder maps from fp32's."""
    ref_emb = model.embed(image, progress=False, precision="fp32")
    ref_maps = model.instance_maps(ref_emb, progress=False, precision="fp32")
    emb = model.embed(image, progress=False, precision=precision)
    e, r = emb.features.astype(np.float64), ref_emb.features.astype(np.float64)
    maps = model.instance_maps(emb, progress=False, precision=precision)
    maps_dec = model.instance_maps(ref_emb, progress=False, precision=precision)
    return {"embedding_rel_err": float(np.linalg.norm(e - r) / np.linalg.norm(r)),
            "maps_max_abs_diff": float(np.abs(maps - ref_maps).max()),
            "maps_max_abs_diff_decoder_only": float(np.abs(maps_dec - ref_maps).max())}


def precision_report(model, image: np.ndarray, precisions: list[str], repeats: int) -> dict:
    """Per precision: seconds, speed-up over fp32 and errors vs fp32 (:func:`time_precisions`)."""
    times = time_precisions(model, image, precisions, repeats)
    out = {}
    for p in precisions:
        r = {k: round(v, 3) for k, v in times[p].items()}
        r["total_s"] = round(times[p]["encoder_s"] + times[p]["unetr_s"], 3)
        if p != "fp32" and "fp32" in times:
            f = times["fp32"]
            r["speedup_fp32_over_this"] = {
                "encoder": round(f["encoder_s"] / times[p]["encoder_s"], 2),
                "unetr": round(f["unetr_s"] / times[p]["unetr_s"], 2),
                "total": round((f["encoder_s"] + f["unetr_s"]) / (times[p]["encoder_s"] + times[p]["unetr_s"]), 2)}
        if p != "fp32":
            r.update(precision_errors(model, image, p))
        out[p] = r
    return out


def side_by_side(args: argparse.Namespace) -> None:
    import os
    import sys
    from pathlib import Path

    from PIL import Image

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from side_by_side import compare

    shared = Path(os.environ.get("PATHOSAM_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    tile = np.asarray(Image.open(args.tile or shared / "vectors/inputs/gbm40_512.png").convert("RGB"))
    res = compare(tile, args.microsam, args.threads, args.rounds, args.repeats, args.precision)
    res = {"machine": f"{machine()}, {args.threads} threads",
           "tile": f"{tile.shape[1]}x{tile.shape[0]}", **res}
    print(json.dumps(res, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="vit_b")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16", "fp16", "auto"],
                    help="precision(s) to time and compare with fp32 (side by side: of our side)")
    ap.add_argument("--microsam", metavar="PYTHON", help="compare side by side with micro-sam run by this python")
    ap.add_argument("--rounds", type=int, default=3, help="side by side: alternating worker pairs")
    ap.add_argument("--tile", help="side by side: RGB tile (default: the shared 512 x 512 GBM40 tile)")
    args = ap.parse_args()
    if args.microsam:
        side_by_side(args)
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from pathosam.predictor import PathoSAM
    from pathosam.models import UNETRDecoder, build_sam

    rss0 = peak_rss_gb()
    model = PathoSAM(build_sam(args.arch), UNETRDecoder(3, transposed=True), device="cpu")
    image = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    emb = model.embed(image, progress=False)  # warm-up
    enc_s = best_time(lambda: model.embed(image, progress=False), args.repeats)
    rss_enc = peak_rss_gb()
    model.instance_maps(emb, progress=False)  # warm-up
    dec_s = best_time(lambda: model.instance_maps(emb, progress=False), args.repeats)
    rss_all = peak_rss_gb()

    from pathosam.image import prepare_input

    x, _, _ = prepare_input(image)
    x = model.sam.preprocess(x[None])
    feats = torch.from_numpy(emb.features)
    enc_flops = count_flops(model.sam.image_encoder, x)
    dec_flops = count_flops(model.decoder, feats)
    naive_s = best_time(lambda: naive_unetr(model.decoder, feats), args.repeats)
    with torch.inference_mode():
        diff = (naive_unetr(model.decoder, feats) - model.decoder(feats)).abs().max().item()
    mm = matmul_flops_per_s()
    precisions = None  # after the fp32 numbers above: the peak RSS there is fp32's
    if args.precision != ["fp32"]:
        precisions = precision_report(model, image, list(dict.fromkeys(args.precision)), args.repeats)

    res = {
        "machine": f"{machine()}, {args.threads} threads, torch {torch.__version__}",
        "arch": args.arch,
        "tile": "512x512 (model input 1024x1024)",
        "encoder_s": round(enc_s, 3),
        "unetr_s": round(dec_s, 3),
        "unetr_naive_nchw_s": round(naive_s, 3),
        "unetr_speedup_vs_naive": round(naive_s / dec_s, 2),
        "unetr_max_abs_diff_vs_naive": diff,
        "encoder_gflop": round(enc_flops / 1e9, 1),
        "unetr_gflop": round(dec_flops / 1e9, 1),
        "matmul_gflop_per_s": round(mm / 1e9, 1),
        "encoder_floor_ratio": round(enc_s / (enc_flops / mm), 2),
        "unetr_floor_ratio": round(dec_s / (dec_flops / mm), 2),
        "peak_rss_gb_start": round(rss0, 2),
        "peak_rss_gb_after_encoder": round(rss_enc, 2),
        "peak_rss_gb_after_unetr": round(rss_all, 2),
    }
    if precisions is not None:
        res["precision"] = precisions
        res["peak_rss_gb_after_precisions"] = round(peak_rss_gb(), 2)
        if "bf16" in precisions:
            res["matmul_gflop_per_s_bf16"] = round(matmul_flops_per_s(dtype=torch.bfloat16) / 1e9, 1)
    print(json.dumps(res, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
