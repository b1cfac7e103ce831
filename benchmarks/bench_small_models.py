"""Encoder and instance-decoder seconds per 512 x 512 tile for small SAM-architecture models.

Models with random weights (speed does not depend on their values): the tiny reference
checkpoint of the shared vectors (ViT 64/4 at 1024 px, UNETR 64) when ``--shared`` holds it, and
small models (ViT width 64, depth 2) at 256 and 512 px input with UNETR width 16 (``--features``).
Each row is the best of ``--repeats``; ratios are to the first row measured in the same run.

    python benchmarks/bench_small_models.py --threads 1 [--shared ../shared] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import pathosam
from pathosam.predictor import PathoSAM
from pathosam.models import SamConfig, build_sam
from pathosam.models.unetr import UNETRDecoder


def _randomise(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not (name.endswith("weight") and p.dim() == 1):  # norm scales stay 1
                p.copy_(torch.randn(p.shape, generator=g) * (0.02 if p.dim() > 1 else 0.01))


def small_model(img_size: int, features: int) -> PathoSAM:
    sam = build_sam(SamConfig(embed_dim=64, depth=2, num_heads=2, global_attn_indexes=(1,), img_size=img_size,
                              window_size=14))
    _randomise(sam, 0)
    dec = UNETRDecoder(3, True, features=features)
    _randomise(dec, 1)
    return PathoSAM(sam, dec, device="cpu", name=f"small_{img_size}")


def tile_seconds(model: PathoSAM, tile: np.ndarray, repeats: int) -> tuple[float, float]:
    """Best (encoder, decoder) seconds for one tile."""
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        tensor, in_size, orig = model.prepare_input(tile)
        t0 = time.perf_counter()
        feats = model.encode([tensor])
        t1 = time.perf_counter()
        model.decode(feats, [in_size], [orig])
        t2 = time.perf_counter()
        best = (min(best[0], t1 - t0), min(best[1], t2 - t1))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--features", type=int, default=16, help="UNETR width of the small models")
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tile = np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    rows: list[tuple[str, PathoSAM]] = []
    tar = args.shared / "vectors" / "tiny_checkpoints.tar.xz"
    tmp = tempfile.TemporaryDirectory()
    if tar.is_file():
        with tarfile.open(tar, "r:xz") as t:
            t.extractall(tmp.name, filter="data")
        rows.append(("tiny reference (ViT 64/4, 1024, UNETR 64)",
                     pathosam.load_model(Path(tmp.name) / "tiny_sam.pt", decoder=Path(tmp.name) / "tiny_sam_decoder.pt",
                                         device="cpu")))
    for img_size in (256, 512):
        rows.append((f"small (ViT 64/2, {img_size}, UNETR {args.features})", small_model(img_size, args.features)))
    print(f"per 512x512 tile, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}:")
    first = None
    for name, model in rows:
        enc, dec = tile_seconds(model, tile, args.repeats)
        first = first or enc + dec
        print(f"  {name:45s} encoder {enc:7.3f} s  decoder {dec:7.3f} s  total {enc + dec:7.3f} s  "
              f"({first / (enc + dec):5.1f}x the first row)")


if __name__ == "__main__":
    main()
