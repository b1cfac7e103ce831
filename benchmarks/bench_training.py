"""Training speed and memory: iterations/s and peak RSS of the joint trainer on CPU.

Models (random weights: nothing is downloaded): ``vit_b`` (SAM ViT-B + the reference UNETR, the
architecture of vit_b_histopathology), the tiny reference architecture (width 64, depth 4,
1024 input) and the small embedded-model candidates (``--small``). Each model runs in a fresh
process: a few warm-up-free iterations of the full objective (image encoder once, 8 prompt
sub-iterations, the UNETR step) on 512 x 512 patches of the shared GBM40 images.

    python benchmarks/bench_training.py --models vit_b tiny --iterations 2 --batch-size 1
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

ROOT = Path(__file__).resolve().parents[1]


def shared() -> Path:
    return Path(os.environ.get("PATHOSAM_SHARED", ROOT.parent / "shared"))


def build(name: str):
    import torch

    from pathosam.predictor import PathoSAM
    from pathosam.models import SamConfig, build_sam
    from pathosam.models.unetr import UNETRDecoder

    if name == "vit_b":
        sam, dec = build_sam("vit_b"), UNETRDecoder(3, True)
    elif name == "tiny":
        sam, dec = build_sam(SamConfig(64, 4, 4, (1, 3))), UNETRDecoder(3, True)
    else:  # small:WIDTH:DEPTH:IMG:FEATURES
        _, width, depth, img, feats = name.split(":")
        from pathosam.training.models import new_model

        return new_model(int(width), int(depth), img_size=int(img), decoder_features=int(feats))
    torch.manual_seed(0)
    return PathoSAM(sam, dec, device="cpu", name=name)


def run_one(name: str, iterations: int, batch_size: int, patch: int, n_objects: int, threads: int) -> dict:
    import torch

    from pathosam.datasets import open_dataset
    from pathosam.training.trainer import JointTrainer, TrainConfig

    torch.set_num_threads(threads)
    model = build(name)
    data = open_dataset(shared() / "data" / "gbm40", "folder")
    cfg = TrainConfig(iterations=iterations + 1, batch_size=batch_size, patch_shape=(patch, patch),
                      n_objects=n_objects, lr=1e-5, validate_every=10**9, checkpoint_every=10**9)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = JointTrainer(model, data[:8], None, tmp, cfg, device="cpu")
        t0 = time.perf_counter()
        trainer.train_step(0)  # first iteration: allocations, thread pools
        t_first = time.perf_counter() - t0
        times = []
        for it in range(1, iterations + 1):
            t0 = time.perf_counter()
            trainer.train_step(it)
            times.append(time.perf_counter() - t0)
    params = sum(p.numel() for p in model.sam.parameters()) + sum(p.numel() for p in model.decoder.parameters())
    return {"model": name, "parameters_M": params / 1e6, "batch_size": batch_size, "patch": patch,
            "n_objects": n_objects, "first_iteration_s": t_first, "seconds_per_iteration": sum(times) / len(times),
            "iterations_per_s": len(times) / sum(times),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["tiny", "vit_b"],
                    help="vit_b, tiny, or small:WIDTH:DEPTH:IMG_SIZE:DECODER_FEATURES")
    ap.add_argument("--iterations", type=int, default=2, help="timed iterations after the first")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--patch", type=int, default=512)
    ap.add_argument("--n-objects", type=int, default=25)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.iterations, args.batch_size, args.patch, args.n_objects,
                                 args.threads)))
        return
    results = []
    for name in args.models:
        cmd = [sys.executable, __file__, "--one", name, "--iterations", str(args.iterations), "--batch-size",
               str(args.batch_size), "--patch", str(args.patch), "--n-objects", str(args.n_objects),
               "--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), file=sys.stderr)
    import torch

    print(json.dumps({"machine": f"{os.cpu_count()} cpus", "torch": torch.__version__, "results": results},
                     indent=1))


if __name__ == "__main__":
    main()
