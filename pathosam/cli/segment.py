"""``pathosam segment IMAGE... -o OUTDIR``: automatic nucleus segmentation of images and slides.

Each file is segmented inside one per-file boundary: whatever fails for a file is reported in one
line and the batch goes on (exit status 1 at the end).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import fields

from ..precision import bf16_hint, describe
from .common import (EXIT_FAILURE, EXIT_OK, UsageError, add_model_arguments, checked_output_dir, error,
                     load_model_from_args, pair)

from ..instances.params import AISParams, AMGParams, parameter_help


def add_parameter_options(group: argparse._ArgumentGroup, cls: type, only: Sequence[str] | None = None,
                          default_none: bool = True) -> None:
    """One option per field of ``cls`` (:class:`AISParams` / :class:`AMGParams`), or of the fields
    named in ``only``: ``--field-name``, typed like the field's default, with its choices and its
    help line (help, default, unit). With ``default_none`` the option's value is None when not
    given (so that a model's own defaults can apply), else the field's default."""
    for f in fields(cls):
        if only is not None and f.name not in only:
            continue
        kind = ({"choices": f.metadata["choices"]} if f.metadata.get("choices") else
                {"type": type(f.default), "metavar": "N" if isinstance(f.default, int) else "X"})
        group.add_argument("--" + f.name.replace("_", "-"), dest=f.name, help=parameter_help(f),
                           default=None if default_none else f.default, **kind)


def parameter_values(args: argparse.Namespace, cls: type) -> dict:
    """The options of :func:`add_parameter_options` that were given: ``{field: value}``."""
    return {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}


def _expand_inputs(items: Sequence[str]) -> list[str]:
    """Files as given; directories replaced by their image files (sorted, not recursive)."""
    from pathlib import Path

    from ..image import IMAGE_SUFFIXES

    files: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(str(f) for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UsageError(f"{item}: directory contains no {'/'.join(IMAGE_SUFFIXES)} images")
            files += found
        else:
            files.append(item)
    return files


def _report_failure(path: str, err: Exception) -> None:
    """One line for a file that failed; the batch goes on. Expected failures (bad file, bad value,
    disk) print their message; anything else is named as unexpected (traceback with PATHOSAM_DEBUG=1)."""
    import os

    msg = " ".join(str(err).split()) or type(err).__name__
    if not isinstance(err, (ValueError, OSError)):
        msg = f"unexpected {type(err).__name__}: {msg} (PATHOSAM_DEBUG=1 shows the traceback; please report it)"
        if os.environ.get("PATHOSAM_DEBUG"):
            import traceback

            traceback.print_exception(err, file=sys.stderr)
    error(msg if path in msg else f"{path}: {msg}")


def _segment_image(args: argparse.Namespace, path: str, name: str, model, formats, params) -> int:
    """The image path of ``pathosam segment``: read, segment, write the output set; returns the
    number of nuclei."""
    import os
    import time

    from ..automatic import save_segmentation, segment_nuclei
    from ..image import pixel_size, read_image

    if os.path.abspath(os.path.join(args.output, f"{name}.tif")) == os.path.abspath(path):
        raise ValueError("the label TIFF would overwrite the input; choose another output directory")
    image = read_image(path)
    t0 = time.perf_counter()
    result = segment_nuclei(image, model, mode=args.mode,
                            tile_shape=None if args.no_tiling else (args.tile_shape or "auto"), halo=args.halo,
                            batch_size=args.batch_size, classes=args.classes, normalization=args.normalization,
                            progress=not args.quiet, tta=args.tta, **params)
    mpp = args.mpp or pixel_size(path)  # area_um2 in the table where the pixel size is known
    save_segmentation(result, args.output, name, formats, progress=False, mpp=mpp)
    tiling = f"tiled {result.tile_shape[0]}x{result.tile_shape[1]}+{result.halo[0]}" if result.tile_shape else "untiled"
    print(f"{path}: {result.n_objects} nuclei ({image.shape[0]}x{image.shape[1]} px, {tiling}, "
          f"{time.perf_counter() - t0:.1f} s) -> {os.path.join(args.output, name)}.*")
    return result.n_objects


def _segment(args: argparse.Namespace) -> int:
    import time

    from ..automatic import OUTPUT_FORMATS, image_name
    from ..wsi import is_slide

    inputs = _expand_inputs(args.images)
    names: dict[str, str] = {}
    for f in inputs:
        n = image_name(f)
        if n in names:
            raise UsageError(f"{f} and {names[n]} would both write {n}.* in {args.output}; segment them separately")
        names[n] = f
    formats = tuple(args.formats.split(","))
    if not set(formats) <= set(OUTPUT_FORMATS):
        raise UsageError(f"--formats: unknown {', '.join(sorted(set(formats) - set(OUTPUT_FORMATS)))}; "
                         f"choose among {', '.join(OUTPUT_FORMATS)}")
    if args.no_tiling and args.halo is not None:
        raise UsageError("--halo cannot be combined with --no-tiling")
    if args.tta and args.mode != "ais":
        raise UsageError("--tta averages the AIS decoder maps: it needs --mode ais")
    cls = AISParams if args.mode == "ais" else AMGParams
    params = parameter_values(args, cls)
    try:  # bad post-processing values: say so before loading the model
        cls(**params)
    except ValueError as err:
        raise UsageError(str(err)) from None
    checked_output_dir(args.output)  # a bad -o is found before any work
    model = load_model_from_args(args, classes=args.classes)
    print(f"model: {model.name} on {model.device} ({describe(model.precision, model.device)}); mode {args.mode}"
          f"{' with tta' if args.tta else ''}", file=sys.stderr)
    hint = bf16_hint(model.precision, model.device)
    if hint and not getattr(args, "quiet", False):
        print(f"note: {hint}", file=sys.stderr)
    slides = {p for p in inputs if is_slide(p)}  # reads each TIFF header once
    client = _dask_client(args) if slides else None
    t_start = time.perf_counter()
    failed: list[str] = []
    n_nuclei = 0
    for path in inputs:
        name = image_name(path)
        try:  # the per-file boundary: whatever fails for this file, the batch goes on
            if path in slides:
                n_nuclei += _segment_one_slide(args, path, name, model, client, params)
            else:
                n_nuclei += _segment_image(args, path, name, model, formats, params)
        except Exception as err:  # noqa: BLE001 - reported in one line; KeyboardInterrupt ends the batch
            _report_failure(path, err)
            failed.append(path)
    if client is not None:
        client.close()
    done = len(inputs) - len(failed)
    summary = f"segmented {done} of {len(inputs)} images, {n_nuclei} nuclei, in {time.perf_counter() - t_start:.1f} s"
    print(summary + (f"; failed: {', '.join(failed)}" if failed else ""))
    return EXIT_FAILURE if failed else EXIT_OK


def _dask_client(args: argparse.Namespace):
    """A Dask client for --workers N (local cluster) or --scheduler ADDRESS, else None."""
    if not args.workers and not args.scheduler:
        return None
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise UsageError("--workers/--scheduler need Dask: pip install 'pathosam[dask]'") from None
    if args.scheduler:
        return Client(args.scheduler)
    from ..threads import worker_environment

    # each worker its share of the cores, threads sleeping while they wait (pathosam.threads)
    return Client(LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=None,
                               env=worker_environment(args.workers)))


def _segment_one_slide(args: argparse.Namespace, path: str, name: str, model, client, params: dict) -> int:
    """The whole-slide path of ``pathosam segment`` (``params``: the AIS options given); returns
    the number of nuclei."""
    import time

    from ..wsi.pipeline import SlideOptions, segment_slide

    if args.mode != "ais":
        raise ValueError("whole slides are segmented with --mode ais")
    from ..automatic import ais_params
    from ..inference import auto_tiling

    _, auto_tile, auto_halo = auto_tiling(model.img_size)  # 384 + 64 for SAM-size models
    options = SlideOptions(
        target_mpp=None if args.no_rescale else args.target_mpp, mpp=args.mpp,
        roi=tuple(args.roi) if args.roi else None, tile_shape=args.tile_shape or auto_tile,
        halo=args.halo or auto_halo,
        batch_size=args.batch_size, classes=args.classes, tissue=not args.no_tissue_mask,
        normalization=args.normalization, ais=ais_params(model, params), tta=args.tta,
    )
    t0 = time.perf_counter()
    man = segment_slide(path, model, args.output, options, name=name, progress=not args.quiet, client=client)
    g = man["work_grid"]
    if man.get("skipped"):
        print(f"{path}: already done ({man['nuclei']} nuclei), skipped")
    else:
        print(f"{path}: {man['nuclei']} nuclei (slide, {g['tiles_through_model']} of {g['tiles']} tiles with tissue "
              f"through the model, {time.perf_counter() - t0:.1f} s) -> {args.output}/{name}.ome.zarr, "
              f".geojson.gz, .parquet")
    return int(man["nuclei"])


def add_segment_parser(subparsers: argparse._SubParsersAction) -> None:
    """``pathosam segment IMAGE... -o OUTDIR``: automatic nucleus segmentation (AIS or AMG)."""
    p = subparsers.add_parser(
        "segment", help="segment all nuclei of images (label TIFF, QuPath GeoJSON, table)",
        description="Segment every nucleus of each IMAGE (TIFF, PNG, JPEG; a directory means its "
        "images) and write OUTDIR/NAME.tif (uint32 labels), NAME.geojson (QuPath detections), "
        "NAME.csv and NAME.parquet (one row per nucleus). Images larger than 512 px are tiled "
        "(384 + 64 halo) unless --tile-shape/--no-tiling say otherwise; tiling leaves no seams. "
        "A file that fails is reported and skipped; the exit status is then 1.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or directories")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output directory")
    p.add_argument("--mode", choices=["ais", "amg"], default="ais",
                   help="ais: decoder + watershed (default); amg: SAM automatic mask generation")
    add_model_arguments(p)
    p.add_argument("--classes", action="store_true", help="classify nuclei with the model's semantic decoder (pathosam_small: CoNSeP's 4 "
                   "classes, offline; vit_b_histopathology: PanNuke's 5)")
    p.add_argument("--semantic-decoder", metavar="FILE", help="semantic decoder file for --classes")
    p.add_argument("--class-scheme", choices=["pannuke", "consep"],
                   help="classes of a --semantic-decoder FILE (default: PanNuke for 6 classes)")
    p.add_argument("--tile-shape", type=pair, help="tile size in pixels (default: 384 for images > 512 px)")
    p.add_argument("--halo", type=pair, help="halo per side in pixels (default 64)")
    p.add_argument("--no-tiling", action="store_true", help="never tile (large images are downscaled to 1024)")
    p.add_argument("--batch-size", type=int, default=1, help="tiles per model call (default 1)")
    p.add_argument("--normalization", choices=["none", "minmax"], default="none",
                   help="none: RGB uint8 as is (default); minmax: per-channel stretch per tile")
    p.add_argument("--tta", action="store_true",
                   help="AIS: average the decoder maps of each tile and its 3 flips (about 4x slower, "
                        "smoother outlines, fewer split nuclei)")
    p.add_argument("--formats", default="tif,geojson,csv,parquet",
                   help="comma-separated outputs among tif, geojson, geojson.gz, csv, parquet (default: all but .gz)")
    g = p.add_argument_group("AIS post-processing (defaults: the registered model's own where it has them, "
                             "e.g. pathosam_small's shape seeds and 100 px size filter, whether named or "
                             "loaded by file; else the reference's, shown here)")
    add_parameter_options(g, AISParams)
    add_parameter_options(p.add_argument_group("AMG (SAM automatic mask generation)"), AMGParams)
    g = p.add_argument_group("whole slides (SVS, NDPI, MRXS, ... and pyramidal or very large TIFF)")
    g.add_argument("--target-mpp", type=float, default=0.25,
                   help="model resolution in um/px; slides are rescaled to it (default 0.25 = 40x)")
    g.add_argument("--mpp", type=float, help="pixel size in um/px (overrides the file's metadata; images too: area_um2)")
    g.add_argument("--no-rescale", action="store_true", help="use the slide's pixels as they are")
    g.add_argument("--no-tissue-mask", action="store_true", help="also run the model on background tiles")
    g.add_argument("--roi", type=int, nargs=4, metavar=("X", "Y", "W", "H"),
                   help="only this region (level-0 pixels: left, top, width, height)")
    g.add_argument("--workers", type=int, help="spread tiles over N local Dask worker processes")
    g.add_argument("--scheduler", metavar="ADDRESS", help="use an existing Dask cluster (tcp://host:8786)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_segment)
