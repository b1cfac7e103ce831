"""The prepared GPU check: one script, run once when a GPU is lent (device tool), results as JSON.

Three parts, each timed and recorded even if a later one fails:

1. **fidelity**: the tiny reference checkpoint (``vectors/tiny_checkpoints.tar.xz``) in fp32 on
   the device against the reference's CPU vectors: max abs diff of the image embeddings
   (tolerance 1e-4) and of the AIS decoder maps (1e-4) of the three vector inputs, with the
   explicit attention kernel and with SDPA (the CUDA default).
2. **throughput**: ViT-B encoder + UNETR instance maps (random weights: speed does not depend
   on the values) of 512 x 512 tiles, fp32 / bf16 / fp16, batch sizes 1 and 8: tiles/s and
   the ratio to fp32 measured in the same run.
3. **slide**: ``CMU-1-Small-Region.svs`` end to end (tissue detection, tiles at 0.25 um/px,
   AIS, outputs) with ``pathosam_small`` and the ViT-B stand-in, fp32 and bf16: seconds,
   tiles, seconds per mm^2 of tissue.

    python benchmarks/bench_gpu.py --out $OUT/bench_gpu.json            # on the GPU machine
    python benchmarks/bench_gpu.py --device cpu --quick --out /tmp/g.json  # a dry run here

The machine (GPU name, CUDA, torch, CPU) is recorded with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tarfile
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PATHOSAM_SHARED", ROOT.parent / "shared"))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def machine(device: torch.device) -> dict:
    from pathosam.precision import platform_note

    info = {"torch": torch.__version__, "python": platform.python_version(), "cpu_flags": platform_note(),
            "device": str(device)}
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    bf16=torch.cuda.is_bf16_supported())
    return info


def fidelity(device: torch.device) -> dict:
    """Tiny reference model, fp32 on ``device``, vs the reference's CPU vectors."""
    import pathosam
    from pathosam.models import image_encoder
    from PIL import Image

    vectors = SHARED / "vectors"
    tmp = Path(tempfile.mkdtemp())
    with tarfile.open(vectors / "tiny_checkpoints.tar.xz", "r:xz") as tar:
        tar.extractall(tmp, filter="data")
    model = pathosam.load_model(tmp / "tiny_sam.pt", decoder=tmp / "tiny_sam_decoder.pt", device=device,
                                progress=False)
    out = {}
    for kernel in ("explicit", "auto"):
        image_encoder.ATTENTION_KERNEL = kernel
        for k in ("monuseg_512", "gbm40_512", "monuseg_448x512"):
            rgb = np.asarray(Image.open(vectors / f"inputs/{k}.png").convert("RGB"))
            emb = model.embed(rgb, normalization="minmax", progress=False)
            ref = np.load(vectors / f"model/embeddings_{k}.npz")["features"]
            maps = model.instance_maps(emb, progress=False)
            stored = np.load(vectors / f"model/maps_{k}.npz")
            ref_maps = stored["transposed_train"].astype(np.float32) / 65535
            out[f"{kernel}/{k}"] = {"embedding_max_abs_diff": float(np.abs(emb.features - ref).max()),
                                    "maps_max_abs_diff": float(np.abs(maps - ref_maps).max())}
    image_encoder.ATTENTION_KERNEL = "auto"
    out["pass_1e-4"] = all(v["embedding_max_abs_diff"] <= 1e-4 and v["maps_max_abs_diff"] <= 1e-4
                           for v in out.values() if isinstance(v, dict))
    return out


def vit_b(device: torch.device):
    from pathosam.models.sam import PRESETS, build_sam
    from pathosam.models.unetr import UNETRDecoder
    from pathosam.predictor import PathoSAM

    torch.manual_seed(0)
    return PathoSAM(build_sam(PRESETS["vit_b"]), UNETRDecoder(), device=device, name="vit_b-random")


def throughput(device: torch.device, precisions: list[str], batches: list[int], repeats: int) -> dict:
    """Tiles/s of ViT-B encoder + UNETR instance maps on 512 x 512 tiles."""
    model = vit_b(device)
    rgb = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    prepared = model.prepare_input(rgb)
    out: dict = {}
    for b in batches:
        batch = [prepared[0]] * b
        for p in precisions:
            model.set_precision(p)
            with torch.inference_mode():
                feats = model.encode(batch)  # warm-up (kernel selection, weight conversion)
                model.decode(feats, [prepared[1]] * b, [prepared[2]] * b)
                best = float("inf")
                for _ in range(repeats):
                    sync(device)
                    t0 = time.perf_counter()
                    feats = model.encode(batch)
                    model.decode(feats, [prepared[1]] * b, [prepared[2]] * b)
                    sync(device)
                    best = min(best, time.perf_counter() - t0)
            out[f"{p}/batch{b}"] = {"seconds_per_batch": best, "tiles_per_s": b / best}
        base = out[f"fp32/batch{b}"]["tiles_per_s"]
        for p in precisions:
            out[f"{p}/batch{b}"]["ratio_to_fp32"] = out[f"{p}/batch{b}"]["tiles_per_s"] / base
    model.set_precision("fp32")
    return out


def slide(device: torch.device, precisions: list[str], models: list[str], roi, batch_size: int) -> dict:
    """``CMU-1-Small-Region.svs`` end to end at 0.25 um/px."""
    import pathosam
    from pathosam.wsi.pipeline import SlideOptions, segment_slide

    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_wsi import tissue_area_mm2  # the same tissue measure as the CPU slide benchmark

    path = SHARED / "data" / "wsi" / "CMU-1-Small-Region.svs"
    tissue_mm2 = tissue_area_mm2(path, roi)["tissue_mm2"]
    out = {}
    for name in models:
        model = vit_b(device) if name == "vit_b" else pathosam.load_model(name, device=device, progress=False)
        for p in precisions:
            model.set_precision(p)
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                man = segment_slide(path, model, tmp, SlideOptions(roi=roi, batch_size=batch_size), progress=False)
                sync(device)
                seconds = time.perf_counter() - t0
            out[f"{name}/{p}"] = {"seconds": seconds, "n_nuclei": man["nuclei"], "tissue_mm2": tissue_mm2,
                                  "seconds_per_mm2": seconds / tissue_mm2}
        model.set_precision("fp32")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", required=True, help="JSON file")
    ap.add_argument("--quick", action="store_true", help="a dry run: batch 1, one repeat, a small slide region")
    ap.add_argument("--parts", nargs="+", default=["fidelity", "throughput", "slide"])
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    precisions = ["fp32", "bf16", "fp16"] if cuda else ["fp32", "bf16"]
    result: dict = {"machine": machine(device), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    jobs = {
        "fidelity": lambda: fidelity(device),
        "throughput": lambda: throughput(device, precisions, [1] if args.quick else [1, 8], 1 if args.quick else 3),
        "slide": lambda: slide(device, ["fp32", "bf16"], ["pathosam_small"] if args.quick else ["pathosam_small", "vit_b"],
                               (300, 1000, 300, 300) if args.quick else None, 1 if args.quick else 8),
    }
    for part in args.parts:
        t0 = time.perf_counter()
        try:
            result[part] = jobs[part]()
        except Exception:  # record and go on: one GPU session, every part that can run is kept
            result[part] = {"error": traceback.format_exc(limit=5)}
        result[part + "_seconds"] = time.perf_counter() - t0
        Path(args.out).write_text(json.dumps(result, indent=1, default=str))
        print(part, json.dumps(result[part], default=str)[:2000], flush=True)


if __name__ == "__main__":
    main()
