"""``pathosam evaluate``: score a model on an annotated dataset (automatic or interactive)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def add_evaluate_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``pathosam evaluate``."""
    from .common import pair, add_model_arguments

    p = subparsers.add_parser(
        "evaluate",
        help="score a model on annotated images (mSA, SA50/75, F1, PQ, AJI; report and plots)",
        description="Evaluate automatic (AIS, AMG) or interactive segmentation on an annotated dataset "
                    "the way the PathoSAM paper does: AIS/AMG post-processing chosen by the reference's grid "
                    "search on --val-data/--val-split (else defaults), iterative prompting with 7 corrections. "
                    "Writes per-image CSV, summary CSV/JSON and PNG plots to OUTDIR.",
    )
    p.add_argument("--data", required=True, metavar="DIR", help="test data (any supported dataset layout)")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="report directory")
    p.add_argument("--format", default="auto", help="dataset format (default: detect; see --list-formats)")
    p.add_argument("--split", help="split of --data to test on (e.g. test, fold3)")
    p.add_argument("--val-data", metavar="DIR", help="validation data for the grid search (AIS/AMG)")
    p.add_argument("--val-split", help="split of the validation data (of --val-data, else of --data)")
    p.add_argument("--mode", choices=["ais", "amg", "interactive-point", "interactive-box"], default="ais")
    p.add_argument("--grid", choices=["reference", "quick"], default="reference",
                   help="grid to search with validation data: the reference's (450 AIS / 195 AMG settings; "
                        "for a model with shape seeds such as pathosam_small its seed parameters and size "
                        "filter, 144 settings) or a quick coarse one")
    p.add_argument("--max-images", type=int, help="only the first N test (and validation) images")
    p.add_argument("--pad-to", type=pair, help="zero-pad smaller images to this size, e.g. 512 (the reference "
                                               "pads 256 px PanNuke/NuClick/SRSA-Net images for ViT models)")
    p.add_argument("--tile-shape", type=pair, help="tile size in pixels (default: 384 for images > 512 px)")
    p.add_argument("--halo", type=pair, help="halo per side in pixels (default 64)")
    p.add_argument("--no-tiling", action="store_true", help="never tile")
    p.add_argument("--tta", action="store_true", help="AIS: average the decoder maps over flips (4x slower)")
    from ..instances.params import AMGParams
    from .segment import add_parameter_options

    add_parameter_options(p, AMGParams, only=("points_per_side",), default_none=False)
    p.add_argument("--iterations", type=int, default=8, help="interactive: initial prompt + corrections (8)")
    p.add_argument("--use-masks", action="store_true", help="interactive: feed back the previous mask logits")
    p.add_argument("--max-objects", type=int, help="interactive: prompt a seeded subset of objects (not the "
                                                   "reference protocol; for quick checks)")
    p.add_argument("--seed", type=int, default=0, help="interactive: seed of the correction points (0)")
    p.add_argument("--overlays", type=int, default=4, help="overlay PNGs of the first N images (4)")
    add_model_arguments(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_evaluate)


def _open(path: str, fmt: str, split: str | None, limit: int | None):
    from ..datasets import open_dataset

    ds = open_dataset(path, fmt, split=split)
    if len(ds) == 0:
        from .common import UsageError

        raise UsageError(f"{path}: no images found" + (f" in split {split!r}" if split else ""))
    return ds[:limit] if limit else ds


def _evaluate(args: argparse.Namespace) -> int:
    from .common import UsageError, checked_output_dir, load_model_from_args

    if args.no_tiling and (args.tile_shape or args.halo):
        raise UsageError("--no-tiling cannot be combined with --tile-shape/--halo")
    if args.tta and args.mode != "ais":
        raise UsageError("--tta averages the AIS decoder maps: it needs --mode ais")
    test = _open(args.data, args.format, args.split, args.max_images)
    val = None
    if args.val_data or args.val_split:
        if args.mode.startswith("interactive"):
            raise UsageError("--val-data/--val-split are for the AIS/AMG grid search, not interactive modes")
        val = _open(args.val_data or args.data, args.format, args.val_split, args.max_images)
        if not args.val_data and args.val_split == args.split:
            raise UsageError("the validation split must differ from the test split")
    checked_output_dir(args.output)
    model = load_model_from_args(args)
    out = Path(args.output)
    progress = not args.quiet
    info = {"model": model.name, "model_id": model.model_id, "data": str(args.data), "split": args.split,
            "format": test.name if hasattr(test, "name") else args.format}
    if args.tta:
        info["tta"] = True
    t0 = time.perf_counter()
    if args.mode.startswith("interactive"):
        from ..evaluation.iterative_prompting import evaluate_interactive
        from ..evaluation.report import write_iteration_report
        from ..io.table import write_table

        start = args.mode.split("-")[1]
        per_image, means = evaluate_interactive(model, test, start, args.iterations, args.use_masks, args.seed,
                                                max_objects=args.max_objects, progress=progress)
        out.mkdir(parents=True, exist_ok=True)
        write_table(per_image, csv_path=out / "per_image.csv")
        files = write_iteration_report(means.to_dict("records"), out, start, args.use_masks)
        last = means.iloc[-1] if len(means) else None
        summary = {**info, "mode": args.mode, "n_images": int(per_image["name"].nunique()),
                   "seconds": time.perf_counter() - t0, "iterations": means.to_dict("records")}
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        line = (f"{args.mode}: {summary['n_images']} images, mSA {means.iloc[0]['mSA']:.3f} -> {last['mSA']:.3f} "
                f"after {len(means) - 1} corrections" if last is not None else f"{args.mode}: no images")
        print(f"{line}; report: {files['csv']}", file=sys.stdout)
        return 0

    from ..automatic import ais_params
    from ..evaluation.grid_search import default_grid, evaluate_automatic
    from ..evaluation.report import write_automatic_report

    # the model's own seed rule is searched (pathosam_small: shape seeds and its size filter)
    grid = default_grid(args.mode, ais_params(model).seeds, quick=args.grid == "quick")
    tile_shape = None if args.no_tiling else (args.tile_shape or "auto")
    ev = evaluate_automatic(model, test, args.mode, val=val, grid=grid, tile_shape=tile_shape, halo=args.halo,
                            pad_to=args.pad_to, points_per_side=args.points_per_side,
                            keep_predictions=args.overlays, progress=progress, tta=args.tta)
    write_automatic_report(ev, out, {**info, "seconds": time.perf_counter() - t0,
                                     "grid_search": "none" if val is None else args.grid})
    s = ev.summary()
    print(f"{args.mode}: {s['n_images']} images, mSA {s['mSA']:.3f}, SA50 {s['SA50']:.3f}, SA75 {s['SA75']:.3f}, "
          f"F1@0.5 {s['f1@0.50']:.3f}, PQ {s['PQ']:.3f}, AJI {s['AJI']:.3f}; report: {out / 'summary.csv'}")
    return 0
