"""Accuracy and speed of bf16 inference against fp32 on the shared real nucleus images.

For each model (``--models``) and dataset under ``$PATHOSAM_SHARED/data`` (gbm40, cpm15, monuseg,
consep; the first ``--n-images`` sorted names), the AIS labels of
``pathosam.segment_nuclei(image, model, precision=p)`` for p = fp32 and bf16 (run alternately,
same process) are compared:

  * mSA(bf16 labels, fp32 labels): how far bf16 moves the result (1.0 = identical instances),
  * mSA vs the ground truth for fp32 and for bf16, and their difference,
  * seconds per image for each precision and their ratio.

Prompted masks (``--prompted-models``, default pathosam_small): on a centred crop of
``model.img_size`` px of each image, embedded untiled in each precision, one positive point inside
each of up to ``--max-prompts`` ground-truth nuclei (the nucleus pixel nearest its centroid),
``predict(..., precision=p)`` where predict takes a precision (else its prompt encoder and mask
decoder compute in float32 and only the embedding is bf16); reports the mean and min
IoU(bf16 mask, fp32 mask) and the mean IoU vs the ground-truth nucleus of each.

Models: ``pathosam_small`` (shipped, trained weights) and ``tiny`` (the tiny reference
checkpoint of ``vectors/tiny_checkpoints.tar.xz``: 1024 px input, slow on a CPU, so it gets
``--tiny-images`` images per dataset, centre-cropped to at most ``--tiny-crop`` px).

Acceptance (the precision issue), per model and dataset ("pass" column): mean mSA(bf16, fp32) >= 0.98,
|mean mSA_gt(bf16) - mean mSA_gt(fp32)| <= 0.005, mean prompted IoU(bf16, fp32) >= 0.97 (the min and
the number of prompts below 0.97 are reported next to it). Where neither precision finds a nucleus
(the tiny model's random weights), mSA(bf16, fp32) is n/a and the instance-map differences tell.

    PATHOSAM_SHARED=/work/shared python benchmarks/bench_precision.py --json /tmp/bench_precision.json
    python benchmarks/bench_precision.py --models pathosam_small --datasets gbm40 --n-images 1   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("gbm40", "cpm15", "monuseg", "consep")
PRECISIONS = ("fp32", "bf16")
#: acceptance thresholds of the issue
MIN_MSA_VS_FP32 = 0.98
MAX_MSA_GT_DIFF = 0.005
MIN_PROMPT_IOU = 0.97


def shared() -> Path:
    return Path(os.environ.get("PATHOSAM_SHARED", ROOT.parent / "shared"))


def code_version() -> dict:
    """git HEAD and a hash of the pathosam sources as measured (the working tree may differ from HEAD)."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted((ROOT / "pathosam").rglob("*.py")):
        h.update(f.relative_to(ROOT).as_posix().encode() + b"\0" + f.read_bytes())
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "pathosam"], capture_output=True,
                           text=True, check=False).stdout.strip()
    return {"git_head": head, "pathosam_modified_vs_head": bool(dirty), "pathosam_sources_sha256": h.hexdigest()[:16]}


def machine_info(threads: int) -> dict:
    """CPU model name (lscpu), its bf16-relevant flags, torch version and threads."""
    from pathosam.precision import cpu_model, native_bf16, platform_note

    return {"cpu": cpu_model(), "cpu_flags": platform_note(), "native_bf16": native_bf16("cpu"), "cpus": os.cpu_count(),
            "torch_threads": threads, "torch": torch.__version__, "python": platform.python_version()}


# ------------------------------------------------------------------------------ data, models


def image_names(dataset: str, n: int) -> list[str]:
    return sorted(p.stem for p in (shared() / "data" / dataset / "images").glob("*.tif"))[:n]


def read_pair(dataset: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    import tifffile

    folder = shared() / "data" / dataset
    return tifffile.imread(folder / "images" / f"{name}.tif"), tifffile.imread(folder / "labels" / f"{name}.tif")


def centre_crop(a: np.ndarray, size: int | None) -> np.ndarray:
    """The centred ``size`` x ``size`` crop of ``a`` (sides smaller than ``size`` kept whole)."""
    if size is None:
        return a
    h, w = a.shape[:2]
    r, c = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return a[r : r + size, c : c + size]


def load(name: str, tmp: Path):
    """``pathosam_small`` etc. from the registry; ``tiny`` from the shared reference archive."""
    import pathosam

    if name != "tiny":
        return pathosam.load_model(name, device="cpu", progress=False)
    wanted = {"tiny_sam.pt", "tiny_sam_decoder.pt"}
    with tarfile.open(shared() / "vectors/tiny_checkpoints.tar.xz") as tar:
        tar.extractall(tmp, members=[m for m in tar.getmembers() if m.name in wanted], filter="data")
    return pathosam.load_model(tmp / "tiny_sam.pt", decoder=tmp / "tiny_sam_decoder.pt", device="cpu",
                               progress=False)


# ------------------------------------------------------------------------------ measurements


def msa(seg: np.ndarray, gt: np.ndarray) -> float:
    from pathosam.evaluation.metrics.accuracy import mean_segmentation_accuracy

    return float(mean_segmentation_accuracy(seg, gt))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def ais_image(model, image: np.ndarray, gt: np.ndarray, order: tuple[str, ...]) -> dict:
    """AIS labels in each precision (in ``order``): seconds, mSA vs ground truth, mSA(bf16, fp32)
    (None when neither finds a nucleus: the metric is 0 there by definition), and the max / mean
    abs difference of the instance maps (captured per tile with ``on_tiles``, no extra run)."""
    import pathosam

    labels, seconds, maps = {}, {}, {}
    for p in order:
        maps[p] = []
        t = time.perf_counter()
        labels[p] = pathosam.segment_nuclei(image, model, progress=False, precision=p,
                                            on_tiles=lambda _, m, p=p: maps[p].extend(x.copy() for x in m)).labels
        seconds[p] = time.perf_counter() - t
    diffs = [np.abs(a - b) for a, b in zip(maps["bf16"], maps["fp32"])]
    both_empty = labels["bf16"].max() == 0 and labels["fp32"].max() == 0
    return {"shape": list(image.shape[:2]), "seconds": seconds,
            "nuclei": {p: int(labels[p].max()) for p in PRECISIONS},
            "msa_gt": {p: msa(labels[p], gt) for p in PRECISIONS},
            "msa_bf16_vs_fp32": None if both_empty else msa(labels["bf16"], labels["fp32"]),
            "identical_labels": bool(np.array_equal(labels["bf16"], labels["fp32"])),
            "maps_max_abs_diff": float(max(d.max() for d in diffs)),
            "maps_mean_abs_diff": float(np.mean([d.mean() for d in diffs]))}


def predict_takes_precision(model) -> bool:
    """Whether ``model.predict`` has a ``precision=`` argument (else its prompt path is float32)."""
    import inspect

    return "precision" in inspect.signature(model.predict).parameters


def centre_points(gt: np.ndarray, max_n: int) -> list[tuple[int, int, int]]:
    """(label, x, y): for up to ``max_n`` nuclei (in label order) the pixel nearest the centroid."""
    out = []
    for i in [i for i in np.unique(gt) if i != 0][:max_n]:
        rows, cols = np.nonzero(gt == i)
        k = np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2)
        out.append((int(i), int(cols[k]), int(rows[k])))
    return out


def prompted_image(model, image: np.ndarray, gt: np.ndarray, max_n: int, order: tuple[str, ...]) -> dict:
    """One positive point per nucleus on an untiled embedding of ``image`` (<= img_size px):
    IoU(bf16 mask, fp32 mask) per nucleus and each mask's IoU with its ground-truth nucleus."""
    points = centre_points(gt, max_n)
    masks, seconds = {}, {}
    for p in order:
        kw = {"precision": p} if predict_takes_precision(model) else {}  # else: mask decoder always fp32
        t = time.perf_counter()
        emb = model.embed(image, tile_shape=None, precision=p, progress=False)
        masks[p] = [model.predict(emb, points=[[x, y]], point_labels=[1], **kw)[0][0] for _, x, y in points]
        seconds[p] = time.perf_counter() - t
    ious = [iou(a, b) for a, b in zip(masks["bf16"], masks["fp32"])]
    return {"shape": list(image.shape[:2]), "prompts": len(points), "seconds": seconds, "iou_bf16_vs_fp32": ious,
            "iou_gt": {p: [iou(m, gt == i) for m, (i, _, _) in zip(masks[p], points)] for p in PRECISIONS}}


# ------------------------------------------------------------------------------ summary


def summarise(model: str, dataset: str, ais: list[dict], prompted: list[dict]) -> dict:
    row = {"model": model, "dataset": dataset, "images": len(ais)}
    if ais:
        gt = {p: float(np.mean([r["msa_gt"][p] for r in ais])) for p in PRECISIONS}
        sec = {p: float(np.mean([r["seconds"][p] for r in ais])) for p in PRECISIONS}
        vs = [r["msa_bf16_vs_fp32"] for r in ais if r["msa_bf16_vs_fp32"] is not None]
        row.update({"msa_bf16_vs_fp32": float(np.mean(vs)) if vs else None,
                    "msa_bf16_vs_fp32_min": float(np.min(vs)) if vs else None,
                    "msa_gt_fp32": gt["fp32"], "msa_gt_bf16": gt["bf16"], "msa_gt_diff": gt["bf16"] - gt["fp32"],
                    "s_per_image_fp32": sec["fp32"], "s_per_image_bf16": sec["bf16"],
                    "speedup_fp32_over_bf16": sec["fp32"] / sec["bf16"],
                    "nuclei_fp32": sum(r["nuclei"]["fp32"] for r in ais),
                    "nuclei_bf16": sum(r["nuclei"]["bf16"] for r in ais),
                    "identical_label_images": sum(r["identical_labels"] for r in ais),
                    "maps_max_abs_diff": max(r["maps_max_abs_diff"] for r in ais),
                    "maps_mean_abs_diff": float(np.mean([r["maps_mean_abs_diff"] for r in ais]))})
        row["ais_pass"] = ((not vs or row["msa_bf16_vs_fp32"] >= MIN_MSA_VS_FP32)
                           and abs(row["msa_gt_diff"]) <= MAX_MSA_GT_DIFF)
    if prompted:
        ious = [v for r in prompted for v in r["iou_bf16_vs_fp32"]]
        row.update({"prompts": len(ious), "prompt_iou_mean": float(np.mean(ious)) if ious else None,
                    "prompt_iou_min": float(np.min(ious)) if ious else None,
                    "prompt_iou_gt_fp32": float(np.mean([v for r in prompted for v in r["iou_gt"]["fp32"]])),
                    "prompt_iou_gt_bf16": float(np.mean([v for r in prompted for v in r["iou_gt"]["bf16"]]))})
        row["prompts_below_min_iou"] = int(sum(v < MIN_PROMPT_IOU for v in ious))
        row["prompt_pass"] = bool(ious) and float(np.mean(ious)) >= MIN_PROMPT_IOU
    return row


def fmt(v, spec: str = ".4f") -> str:
    return "–" if v is None else format(v, spec)


def markdown(rows: list[dict]) -> str:
    head = ("| model | dataset | imgs | nuclei fp32 / bf16 | maps max / mean abs diff | mSA(bf16, fp32) mean (min) "
            "| mSA gt fp32 | mSA gt bf16 | Δ | s/img fp32 | s/img bf16 | fp32/bf16 | prompts "
            "| IoU(bf16, fp32) mean / min (n < 0.97) | IoU gt fp32 / bf16 | pass |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        ok = [r[k] for k in ("ais_pass", "prompt_pass") if k in r]
        verdict = "yes" if all(ok) else "NO"
        if not r.get("prompts") and not r.get("nuclei_fp32") and not r.get("nuclei_bf16"):
            verdict = "n/a (no nuclei)"  # nothing to compare but the maps
        lines.append(
            f"| {r['model']} | {r['dataset']} | {r['images']} | {r.get('nuclei_fp32', '–')} / {r.get('nuclei_bf16', '–')} "
            f"| {fmt(r.get('maps_max_abs_diff'), '.2g')} / {fmt(r.get('maps_mean_abs_diff'), '.2g')} "
            f"| {fmt(r.get('msa_bf16_vs_fp32'))} ({fmt(r.get('msa_bf16_vs_fp32_min'))}) "
            f"| {fmt(r.get('msa_gt_fp32'))} | {fmt(r.get('msa_gt_bf16'))} | {fmt(r.get('msa_gt_diff'), '+.4f')} "
            f"| {fmt(r.get('s_per_image_fp32'), '.2f')} | {fmt(r.get('s_per_image_bf16'), '.2f')} "
            f"| {fmt(r.get('speedup_fp32_over_bf16'), '.2f')} | {r.get('prompts', '–')} "
            f"| {fmt(r.get('prompt_iou_mean'))} / {fmt(r.get('prompt_iou_min'))} ({r.get('prompts_below_min_iou', '–')}) "
            f"| {fmt(r.get('prompt_iou_gt_fp32'))} / {fmt(r.get('prompt_iou_gt_bf16'))} "
            f"| {verdict} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ main


def bench_model(name: str, model, args) -> tuple[list[dict], list[dict]]:
    """Rows (one per dataset) and per-image records of one model."""
    tiny = name == "tiny"
    n = args.tiny_images if tiny else args.n_images
    crop = args.tiny_crop if tiny else None
    prompted_on = name in args.prompted_models
    rows, records = [], []
    # warm-up of both precisions (bf16 weight copies are made on first use): not timed
    warm = centre_crop(read_pair(args.datasets[0], image_names(args.datasets[0], 1)[0])[0], 256)
    for p in PRECISIONS:
        model.embed(warm, tile_shape=None, precision=p, progress=False)
    k = 0
    for ds in args.datasets:
        ais, prompted = [], []
        for img_name in image_names(ds, n):
            image, gt = read_pair(ds, img_name)
            image, gt = centre_crop(image, crop), centre_crop(gt, crop)
            order = PRECISIONS if k % 2 == 0 else PRECISIONS[::-1]  # alternate which precision runs first
            k += 1
            r = ais_image(model, image, gt, order)
            ais.append(r)
            rec = {"model": name, "dataset": ds, "image": img_name, "ais": r}
            if prompted_on:
                size = model.img_size
                prompted.append(prompted_image(model, centre_crop(image, size), centre_crop(gt, size),
                                               args.max_prompts, order))
                rec["prompted"] = prompted[-1]
            records.append(rec)
            msg = (f"{name} {ds} {img_name} {image.shape[0]}x{image.shape[1]}: nuclei {r['nuclei']['fp32']}/"
                   f"{r['nuclei']['bf16']}, maps max diff {r['maps_max_abs_diff']:.3g}, mSA(bf16,fp32) "
                   f"{fmt(r['msa_bf16_vs_fp32'])}, gt {r['msa_gt']['fp32']:.4f}/{r['msa_gt']['bf16']:.4f}, "
                   f"s {r['seconds']['fp32']:.1f}/{r['seconds']['bf16']:.1f}")
            if prompted_on:
                ious = prompted[-1]["iou_bf16_vs_fp32"]
                msg += f"; prompted IoU mean {np.mean(ious):.4f} min {np.min(ious):.4f} ({len(ious)})"
            print(msg, flush=True)
        rows.append(summarise(name, ds, ais, prompted))
    return rows, records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["pathosam_small", "tiny"])
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    ap.add_argument("--n-images", type=int, default=3, help="images per dataset (sorted names)")
    ap.add_argument("--tiny-images", type=int, default=1, help="images per dataset for the tiny model")
    ap.add_argument("--tiny-crop", type=int, default=512, help="tiny model: centre crop to at most this many px")
    ap.add_argument("--prompted-models", nargs="*", default=["pathosam_small"])
    ap.add_argument("--max-prompts", type=int, default=50, help="prompted nuclei per image")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    info = {**machine_info(args.threads), **code_version()}
    print(json.dumps(info), flush=True)
    rows, records = [], []
    with tempfile.TemporaryDirectory(prefix="bench_precision_") as tmp:
        for name in args.models:
            model = load(name, Path(tmp))
            if name in args.prompted_models:
                info[f"{name}_prompt_path"] = ("predict(precision=p)" if predict_takes_precision(model)
                                               else "predict has no precision=: prompt path float32, bf16 embedding")
            r, rec = bench_model(name, model, args)
            rows += r
            records += rec
            del model
    table = markdown(rows)
    print(f"\n{info['cpu']} ({info['cpu_flags']}; native bf16: {info['native_bf16']}), torch {info['torch']}, "
          f"{args.threads} thread(s)\n")
    print(table)
    res = {"machine": info, "acceptance": {"msa_bf16_vs_fp32_min": MIN_MSA_VS_FP32,
                                           "msa_gt_abs_diff_max": MAX_MSA_GT_DIFF, "prompt_iou_min": MIN_PROMPT_IOU},
           "args": vars(args), "rows": rows, "table": table, "images": records}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
