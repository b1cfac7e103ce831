"""Milliseconds per interactive prompt once the image embedding is cached (ViT-B, random weights).

Measures, on one image:
  * the one-off embedding (image encoder) time, and the cost of an :class:`EmbeddingCache` hit
    (hashing the image) for the same image;
  * per prompt through :func:`pathosam.interactive.segment_prompt` (median and best of ``--repeats``):
    a single positive point (best of SAM's 3 masks), a box, a point correction that feeds the
    previous low-res logits back (2 points + ``mask_input``), and a binary mask prompt (box +
    logits derived from it); the same point prompt on a tiled embedding (``--tile``/``--halo``,
    one tile's outer block predicted and pasted into the full-size mask; tile features are
    random, which does not change the cost);
  * the ratio prompt time / embedding time.
Weights are random (``build_sam("vit_b")``, seeded): speed does not depend on their values.

    python benchmarks/bench_interactive.py --threads 2 [--size 1024] [--repeats 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch


def timed(fn, repeats: int) -> tuple[float, float]:
    """(median, best) milliseconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), min(times)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=1024, help="square image side in pixels")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--tile", type=int, default=384)
    ap.add_argument("--halo", type=int, default=64)
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from pathosam.embedding_cache import EmbeddingCache
    from pathosam.embeddings import ImageEmbeddings
    from pathosam.image import preprocess_shape
    from pathosam.predictor import PathoSAM
    from pathosam.models.sam import build_sam
    from pathosam.interactive import segment_prompt
    from pathosam.tiling import tile_grid

    model = PathoSAM(build_sam("vit_b"), device="cpu", name="vit_b_random")
    rng = np.random.default_rng(0)
    n = args.size
    image = rng.integers(0, 256, (n, n, 3), dtype=np.uint8)

    cache = EmbeddingCache(model, max_entries=2)
    t = time.perf_counter()
    emb = cache.get(image)
    embed_s = time.perf_counter() - t
    hit_ms, _ = timed(lambda: cache.get(image), args.repeats)
    assert cache.misses == 1

    c = n / 2
    point = dict(points=[(c, c)], point_labels=[1])
    first = segment_prompt(model, emb, **point)
    feedback = dict(points=[(c, c), (c + 20, c - 15)], point_labels=[1, 0], mask_input=first.mask_input)
    mask = np.zeros((n, n), bool)
    mask[int(c) - 20 : int(c) + 20, int(c) - 25 : int(c) + 25] = True
    prompts = {
        "point (best of 3)": point,
        "box": dict(box=(c - 30, c - 30, c + 30, c + 30)),
        "point + logits feedback": feedback,
        "mask prompt": dict(mask=mask),
    }
    results = {name: timed(lambda kw=kw: segment_prompt(model, emb, **kw), args.repeats) for name, kw in prompts.items()}

    # the same point on a tiled embedding (random tile features: the cost does not depend on them)
    tiles = tile_grid((n, n), (args.tile, args.tile), (args.halo, args.halo))
    sizes = [t.outer_shape for t in tiles]
    tiled = ImageEmbeddings(
        rng.standard_normal((len(tiles), 256, 64, 64), dtype=np.float32), [preprocess_shape(*s) for s in sizes],
        sizes, (n, n), (args.tile, args.tile), (args.halo, args.halo), tiles,
    )
    results[f"tiled {args.tile}+{args.halo}: point (best of 3)"] = timed(
        lambda: segment_prompt(model, tiled, **point), args.repeats
    )

    out = {
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": args.threads,
        "image": [n, n],
        "embedding_s": round(embed_s, 3),
        "cache_hit_ms": round(hit_ms, 2),
        "prompts_ms": {k: {"median": round(m, 1), "best": round(b, 1)} for k, (m, b) in results.items()},
        "prompt_over_embedding": {k: round(m / 1e3 / embed_s, 4) for k, (m, _) in results.items()},
    }
    print(f"ViT-B (random weights), {args.threads} threads, image {n}x{n}")
    print(f"  embedding (one-off): {embed_s:8.2f} s      cache hit: {hit_ms:.2f} ms")
    for k, (m, b) in results.items():
        print(f"  {k:<40s} median {m:7.1f} ms  best {b:7.1f} ms  = {m / 1e3 / embed_s:.4f} x embedding")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
