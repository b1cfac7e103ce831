"""The embedded small model against the classical baseline (accuracy) and ViT-B (CPU time).

Accuracy: AIS mSA (the model's registered post-processing, i.e. ``pathosam segment``'s defaults;
images tiled as ``pathosam segment`` does)
of the bundled model and of ``pathosam.evaluation.baseline.classical_nuclei`` on the validation
images the model never saw (listed in ``docs/models.md`` and ``RUN/data.json``), per dataset.
Interactive: one positive point at every ground-truth object's centre (the reference's
point-start protocol, no corrections), mSA of the merged masks, on crops of half the model's input
size (the image size the model embeds untiled at its training scale: 512 px for PathoSAM, 128 px
for the small model), averaged over all crops with objects.
Speed: seconds for the AIS decoder maps of a 512 x 512 image (the reference's tile: one 1024-input
tile for ViT-B; 9 tiles of 192 + 32 px at the small model's 256 px input), for the bundled model and
for ViT-B (random weights, same architecture as vit_b_histopathology), in the same run.

    python benchmarks/bench_embedded.py --data ../shared/data --val-list runs/embedded/data.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def per_tile_seconds(model, repeats: int = 3, side: int = 512, tiled: bool = True) -> float:
    """Median seconds for the AIS maps of a random ``side`` x ``side`` RGB image (auto tiling as
    ``pathosam segment``, or one untiled tile)."""
    from pathosam.inference import decoder_maps

    rng = np.random.default_rng(0)
    tile = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        decoder_maps(model, tile, tile_shape="auto" if tiled else None)
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


def outer_tile(model) -> int:
    """Side of one outer tile of ``pathosam segment``'s auto tiling for this model."""
    from pathosam.inference import auto_tiling

    _, tile, halo = auto_tiling(model.img_size)
    return tile[0] + 2 * halo[0]


def main() -> None:
    import torch

    import pathosam
    from pathosam.datasets import open_dataset
    from pathosam.evaluation.grid_search import evaluate_automatic, prepare_groundtruth
    from pathosam.evaluation.baseline import classical_nuclei
    from pathosam.evaluation.iterative_prompting import run_interactive
    from pathosam.evaluation.metrics import mean_segmentation_accuracy

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("PATHOSAM_SHARED", str(ROOT.parent / "shared")) + "/data")
    ap.add_argument("--val-list", default=str(ROOT / "docs" / "embedded_val.json"))
    ap.add_argument("--model", default="pathosam_small")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-vit-b", action="store_true", help="skip the ViT-B timing")
    ap.add_argument("--tta", action="store_true", help="also AIS with test-time augmentation (flips)")
    ap.add_argument("--interactive-objects", type=int, default=None, help="prompt at most this many objects")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = json.loads(Path(args.val_list).read_text())["val"]
    model = pathosam.load_model(args.model, device="cpu")
    res = {"model": args.model, "threads": args.threads, "torch": torch.__version__, "datasets": {}}
    by_ds: dict[str, list[str]] = {}
    for n in names:
        ds, name = n.split("/", 1)
        by_ds.setdefault(ds, []).append(name)
    for ds_name, items in by_ds.items():
        ds = open_dataset(Path(args.data) / ds_name, "folder").select(items)
        ev = evaluate_automatic(model, ds, "ais", progress=False)
        base = [mean_segmentation_accuracy(classical_nuclei(s.image), prepare_groundtruth(s.labels)) for s in ds]
        inter = []
        side = model.img_size // 2  # prompts on crops at the model's own scale (its untiled tile)
        for s in ds:
            for r0 in range(0, s.labels.shape[0] - side + 1, side):
                for c0 in range(0, s.labels.shape[1] - side + 1, side):
                    lab = s.labels[r0 : r0 + side, c0 : c0 + side]
                    if lab.max() == 0:
                        continue
                    r = run_interactive(model, s.image[r0 : r0 + side, c0 : c0 + side], lab, "point",
                                        n_iterations=1, keep_labels=False)
                    inter.append(float(r.msa[0]))
        res["datasets"][ds_name] = {
            "images": len(ds), "model_ais_mSA": float(ev.per_image["mSA"].mean()),
            "model_ais_SA50": float(ev.per_image["SA50"].mean()), "baseline_mSA": float(np.mean(base)),
            "model_point_prompt_mSA": float(np.mean(inter)),
            "model_seconds_per_image": float(ev.per_image["seconds"].mean()),
        }
        if args.tta:
            ev_tta = evaluate_automatic(model, ds, "ais", progress=False, tta=True)
            res["datasets"][ds_name]["model_ais_tta_mSA"] = float(ev_tta.per_image["mSA"].mean())
            res["datasets"][ds_name]["model_tta_seconds_per_image"] = float(ev_tta.per_image["seconds"].mean())
        print(json.dumps({ds_name: res["datasets"][ds_name]}))
    res["seconds_per_512px_image"] = {"embedded": per_tile_seconds(model)}
    res["seconds_per_tile"] = {"embedded": per_tile_seconds(model, side=outer_tile(model), tiled=False)}
    if not args.no_vit_b:
        from pathosam.predictor import PathoSAM
        from pathosam.models import build_sam
        from pathosam.models.unetr import UNETRDecoder

        vit_b = PathoSAM(build_sam("vit_b"), UNETRDecoder(3, True), device="cpu", name="vit_b (random weights)")
        res["seconds_per_512px_image"]["vit_b"] = per_tile_seconds(vit_b, repeats=2)
        res["seconds_per_tile"]["vit_b"] = res["seconds_per_512px_image"]["vit_b"]  # its tile is 512 px
        for k in ("seconds_per_512px_image", "seconds_per_tile"):
            res[f"speedup_vs_vit_b_{k[12:]}"] = res[k]["vit_b"] / res[k]["embedded"]
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
