"""pathosam_small on CoNSeP's validation tiles: instances (AIS mSA vs the classical baseline) and
nucleus classes scored as CoNSeP is (detection F1, per-class F1 of matched nuclei at IoU 0.5,
HoVer-Net's F_c, confusion matrix; counts pooled over all tiles).

The validation tiles are the seeded split the training used (``pathosam train --val-fraction 0.25
--seed 0``, whole source images: ``split_names(..., groups=ds.sources)``): 7 of CoNSeP's 27 training
images, 112 tiles of 256 px. mSA is averaged over the tiles with nuclei; tiles without nuclei are
reported as false-positive counts. "Classes of the true nuclei" scores the class head alone: each
ground-truth nucleus gets the majority class of the head's maps inside it.

    python benchmarks/bench_consep.py [--semantic-decoder FILE] [--model FILE_OR_NAME] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def validation_tiles(root: Path, fraction: float = 0.25, seed: int = 0):
    """The CoNSeP tiles of ``pathosam train``'s validation split (``--val-fraction``, ``--seed``)."""
    from pathosam.datasets import open_dataset, split_names

    ds = open_dataset(root)
    return ds.select(split_names(ds.names, (fraction, 0.0), seed=seed, groups=ds.sources)["val"])


def main() -> None:
    import torch

    import pathosam
    from pathosam.automatic import segment_nuclei
    from pathosam.evaluation.baseline import classical_nuclei
    from pathosam.evaluation.grid_search import prepare_groundtruth
    from pathosam.evaluation.metrics import (ClassificationCounts, classification_counts, classification_scores,
                                             mean_segmentation_accuracy)
    from pathosam.inference import input_size, resolve_tiling
    from pathosam.semantic import nucleus_classes

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("PATHOSAM_SHARED", str(ROOT.parent / "shared")) + "/data/consep")
    ap.add_argument("--model", default="pathosam_small")
    ap.add_argument("--semantic-decoder", help="class head file (default: the model's registered one)")
    ap.add_argument("--no-classes", action="store_true", help="instances only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, help="first N validation tiles only (a quick check)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    classes = not args.no_classes
    sem = (args.semantic_decoder or True) if classes else None
    model = pathosam.load_model(args.model, semantic_decoder=sem, device="cpu",
                                class_scheme="consep" if args.semantic_decoder else None)
    tiles = validation_tiles(Path(args.data))
    if args.limit:
        tiles = tiles.select(tiles.names[: args.limit])
    k = model.class_scheme.n_classes if classes else 0
    pooled = ClassificationCounts.empty(k) if classes else None
    oracle = ClassificationCounts.empty(k) if classes else None
    msa, base, empty_fp, seconds = [], [], [], 0.0
    for s in tiles:
        t0 = time.perf_counter()
        res = segment_nuclei(s.image, model, classes=classes, progress=False)
        seconds += time.perf_counter() - t0
        gt = s.labels
        if gt.max() == 0:
            empty_fp.append(int(res.labels.max()))
        else:
            msa.append(mean_segmentation_accuracy(res.labels, prepare_groundtruth(gt)))
            base.append(mean_segmentation_accuracy(classical_nuclei(s.image), prepare_groundtruth(gt)))
        if classes:
            pooled += classification_counts(res.labels, gt, res.classes, s.classes, k)
            ts, hl = resolve_tiling(s.image.shape[:2], "auto", None, input_size(model))
            maps = model.semantic_maps(model.embed(s.image, tile_shape=ts, halo=hl, progress=False), image=s.image,
                                       progress=False)
            gt_cls, _ = nucleus_classes(gt, maps)
            oracle += classification_counts(gt, gt, gt_cls, s.classes, k)
    out = {"model": model.model_id, "tiles": len(tiles), "tiles_with_nuclei": len(msa),
           "model_ais_mSA": float(np.mean(msa)), "baseline_mSA": float(np.mean(base)),
           "empty_tiles_false_nuclei": empty_fp, "seconds_per_tile": seconds / max(len(tiles), 1),
           "threads": args.threads, "torch": torch.__version__}
    if classes:
        names = model.class_scheme.names
        out["class_names"] = list(names)
        out["classes_of_predicted_nuclei"] = classification_scores(pooled)
        out["classes_of_true_nuclei"] = classification_scores(oracle)
        print(markdown(out["classes_of_predicted_nuclei"], names))
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


def markdown(scores: dict, names) -> str:
    """Per-class table and confusion matrix (rows true, columns predicted) as markdown."""
    d = scores["detection"]
    lines = [f"detection F1 {d['f1']:.3f} (precision {d['precision']:.3f}, recall {d['recall']:.3f}); "
             f"class accuracy of matched nuclei {scores['accuracy']:.3f}", "",
             "| class | F1 (matched) | HoVer-Net F_c | true nuclei (matched) |", "|---|---|---|---|"]
    for c, v in scores["classes"].items():
        lines.append(f"| {names[c]} | {v['f1']:.3f} | {v['hovernet_f']:.3f} | {v['n_true']} |")
    lines += ["", "| true \\ predicted | " + " | ".join(names[1:]) + " | none |", "|---" * (len(names) + 1) + "|"]
    cm = np.asarray(scores["confusion"])
    for c in range(1, len(names)):
        lines.append(f"| {names[c]} | " + " | ".join(str(v) for v in cm[c, 1:]) + f" | {cm[c, 0]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
