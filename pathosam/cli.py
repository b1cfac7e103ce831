"""Command-line interface: ``pathosam <command> ...`` (also ``python -m pathosam``).

The CLI is a thin layer over the library. Each top-level command is one ``add_<command>_parser``
function that adds its subparser and sets ``handler`` (a function ``args -> int``) as default;
:data:`COMMANDS` lists them in order, so a new command (``segment``, ``serve``, ``evaluate``,
``train``, ...) is one more function appended there.

Expected user errors (unknown model, missing file, failed download, hash mismatch) print a
one-line message to stderr, without a traceback, and give a non-zero exit status:
1 for failures, 2 for usage errors (as argparse does).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from . import __version__, registry

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

PROG = "pathosam"


class UsageError(Exception):
    """A user error detected after parsing (e.g. an unknown model name): exit status 2."""


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def checked_output_dir(path: str) -> None:
    """Create the output folder ``path`` and check it is writable, before any work: a bad ``-o``
    is a usage error naming the path and the cause (exit 2)."""
    from .io import prepare_output_dir

    try:
        prepare_output_dir(path)
    except OSError as err:
        raise UsageError(str(err)) from None


def _check_names(names: Sequence[str]) -> None:
    unknown = [n for n in names if not registry.is_registered(n)]
    if unknown:
        label = "model" if len(unknown) == 1 else "models"
        raise UsageError(
            f"unknown {label} {', '.join(map(repr, unknown))}; registered models: {', '.join(registry.names())}"
        )


# ---------------------------------------------------------------------------------------------
# pathosam models ...


def _models_list(args: argparse.Namespace) -> int:
    rows = []
    for name in registry.names():
        e = registry.get(name)
        size = f"~{e.approx_size_mb} MB" if e.approx_size_mb else "?"
        rows.append((name, e.description, size, "yes" if registry.path(name).is_file() else "no"))
    header = ("NAME", "DESCRIPTION", "SIZE", "CACHED")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print()
    print(f"cache: {registry.cache_dir() / 'models'}")
    return EXIT_OK


def _models_fetch(args: argparse.Namespace) -> int:
    _check_names(args.names)
    todo: list[str] = []
    for name in args.names:
        decoder = registry.get(name).decoder
        for n in (name, decoder) if (decoder and not args.no_decoder) else (name,):
            if n not in todo:
                todo.append(n)
    failed = 0
    for name in todo:
        try:
            p = registry.fetch(name, progress=not args.quiet)
        except (registry.ModelNotAvailableError, registry.HashMismatchError) as err:
            _error(str(err))
            failed += 1
        else:
            print(f"{name}: {p}")
    return EXIT_FAILURE if failed else EXIT_OK


def _models_path(args: argparse.Namespace) -> int:
    _check_names([args.name])
    print(registry.path(args.name))
    return EXIT_OK


def _models_import(args: argparse.Namespace) -> int:
    _check_names([args.name])
    try:
        p = registry.import_file(args.name, args.file, verify=not args.no_verify)
    except registry.HashMismatchError as err:
        _error(f"{err}; nothing was imported")
        return EXIT_FAILURE
    print(f"{args.name}: imported to {p}" + (" (not verified)" if args.no_verify else ""))
    return EXIT_OK


def _models_verify(args: argparse.Namespace) -> int:
    names = args.names or registry.names()
    _check_names(names)
    status = registry.verify_cache(names)
    width = max(len(n) for n in status)
    bad = 0
    for name, s in status.items():
        if s.startswith("hash mismatch"):
            bad += 1
            print(f"{name.ljust(width)}  MISMATCH  {registry.path(name)}")
        else:
            print(f"{name.ljust(width)}  {s}")
    if bad:
        _error(
            f"{bad} cached file(s) do not match their registered hash; delete them and run "
            "'pathosam models fetch NAME', or import a good copy with 'pathosam models import NAME FILE'"
        )
        return EXIT_FAILURE
    return EXIT_OK


def add_models_parser(subparsers: argparse._SubParsersAction) -> None:
    """``pathosam models {list,fetch,path,import,verify}``: manage the model-weights cache."""
    p = subparsers.add_parser(
        "models", help="list, download, import and verify model weights",
        description="Manage the model cache ($PATHOSAM_CACHE_DIR, else the user cache directory). "
        "Set PATHOSAM_OFFLINE=1 to forbid downloads.",
    )
    sub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    s = sub.add_parser("list", help="list registered models and whether they are cached")
    s.set_defaults(handler=_models_list)

    s = sub.add_parser("fetch", help="download models into the cache (with their decoders)")
    s.add_argument("names", nargs="+", metavar="NAME")
    s.add_argument("--no-decoder", action="store_true", help="do not also fetch the registered decoder")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(handler=_models_fetch)

    s = sub.add_parser("path", help="print the cache path of a model file (whether or not it exists)")
    s.add_argument("name", metavar="NAME")
    s.set_defaults(handler=_models_path)

    s = sub.add_parser("import", help="copy a hand-downloaded file into the cache (hash-verified)")
    s.add_argument("name", metavar="NAME")
    s.add_argument("file", metavar="FILE")
    s.add_argument("--no-verify", action="store_true", help="skip the hash check")
    s.set_defaults(handler=_models_import)

    s = sub.add_parser("verify", help="check the hashes of cached files")
    s.add_argument("names", nargs="*", metavar="NAME", help="only these models (default: all)")
    s.set_defaults(handler=_models_verify)


# ---------------------------------------------------------------------------------------------
# pathosam embed ...


def _pair(text: str) -> tuple[int, int]:
    parts = text.replace("x", ",").split(",")
    if len(parts) == 1:
        parts = parts * 2
    try:
        a, b = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or N,M (e.g. 384 or 384,384), got {text!r}") from None
    return a, b


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """``--model`` / ``--checkpoint`` / ``--decoder`` / ``--device``, shared by model commands."""
    p.add_argument("-m", "--model", default=None,
                   help="registry name or weights file (default: the embedded small model pathosam_small; "
                        "vit_b_histopathology for the published PathoSAM ViT-B)")
    p.add_argument("-c", "--checkpoint", help="weights file in any reference layout (overrides --model)")
    p.add_argument("--decoder", help="separate instance-decoder file")
    p.add_argument("-d", "--device", default="auto", help="cpu, cuda, mps or auto (default)")


def load_model_from_args(args: argparse.Namespace, classes: bool = False):
    """The model named by ``--model``/``--checkpoint``/``--decoder`` (+ a semantic decoder when
    ``classes``: ``--semantic-decoder FILE`` or the registry model's own)."""
    from .model import load_model

    name = args.checkpoint or args.model
    if name is None:
        name = registry.DEFAULT_MODEL
        if not getattr(args, "quiet", False):
            print(f"using the embedded model {name} (small, fast on CPU; docs/models.md); "
                  "--model vit_b_histopathology for the published PathoSAM", file=sys.stderr)
    semantic = None
    if classes:
        semantic = getattr(args, "semantic_decoder", None)
        if semantic is None:
            entry = registry.get(name) if registry.is_registered(name) else None
            if entry is None or not entry.semantic_decoder:
                raise UsageError(f"--classes needs a semantic decoder: {name!r} has none registered; "
                                 "pass --semantic-decoder FILE (or use --model vit_b_histopathology)")
            semantic = True
    return load_model(name, decoder=args.decoder, semantic_decoder=semantic, device=args.device,
                      progress=not getattr(args, "quiet", False))


def _embed(args: argparse.Namespace) -> int:
    from .image import read_image

    if args.halo is not None and args.tile_shape is None:
        raise UsageError("--halo needs --tile-shape")
    import os

    checked_output_dir(os.path.dirname(os.path.abspath(args.output)))
    image = read_image(args.image)
    model = load_model_from_args(args)
    out = args.output
    emb = model.embed(image, tile_shape=args.tile_shape, halo=args.halo, batch_size=args.batch_size,
                      normalization=args.normalization, cache=out, progress=not args.quiet)
    what = f"{len(emb)} tiles" if emb.tiled else "1 image"
    print(f"{args.image}: embeddings of {what} ({emb.image_shape[0]}x{emb.image_shape[1]} px) in {out}")
    return EXIT_OK


def add_embed_parser(subparsers: argparse._SubParsersAction) -> None:
    """``pathosam embed IMAGE -o OUT.zarr``: precompute (tiled) image embeddings into a zarr cache."""
    p = subparsers.add_parser(
        "embed", help="compute image embeddings into a zarr cache",
        description="Compute the SAM image embeddings of IMAGE (whole or tiled) and store them in a "
        "zarr cache that model.embed(..., cache=OUT) and later commands reuse. An existing cache "
        "made for another image, model or tiling is refused.",
    )
    p.add_argument("image", metavar="IMAGE", help="TIFF, PNG or JPEG image")
    p.add_argument("-o", "--output", required=True, metavar="OUT.zarr", help="zarr cache to write (or reuse)")
    add_model_arguments(p)
    p.add_argument("--tile-shape", type=_pair, help="tile size in pixels, e.g. 384 (default: untiled)")
    p.add_argument("--halo", type=_pair, help="halo per side in pixels, e.g. 64 (default 0 when tiled)")
    p.add_argument("--batch-size", type=int, default=1, help="tiles per encoder batch (default 1)")
    p.add_argument("--normalization", choices=["none", "minmax"], default="none",
                   help="none: RGB uint8 as is (PathoSAM training); minmax: per-channel stretch per tile")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_embed)


# ---------------------------------------------------------------------------------------------
# pathosam segment ...

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
AIS_OPTIONS = ("center_distance_threshold", "boundary_distance_threshold", "foreground_threshold",
               "foreground_smoothing", "distance_smoothing", "min_size", "seeds", "seed_dynamic",
               "seed_center_weight")
AMG_OPTIONS = ("points_per_side", "points_per_batch", "pred_iou_thresh", "stability_score_thresh",
               "box_nms_thresh", "min_mask_region_area", "min_object_size")


def _expand_inputs(items: Sequence[str]) -> list[str]:
    """Files as given; directories replaced by their image files (sorted, not recursive)."""
    from pathlib import Path

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
    _error(msg if path in msg else f"{path}: {msg}")


def _segment_image(args: argparse.Namespace, path: str, name: str, model, formats, params) -> int:
    """The image path of ``pathosam segment``: read, segment, write the output set; returns the
    number of nuclei."""
    import os
    import time

    from .automatic import save_segmentation, segment_nuclei
    from .image import read_image

    if os.path.abspath(os.path.join(args.output, f"{name}.tif")) == os.path.abspath(path):
        raise ValueError("the label TIFF would overwrite the input; choose another output directory")
    image = read_image(path)
    t0 = time.perf_counter()
    result = segment_nuclei(image, model, mode=args.mode,
                            tile_shape=None if args.no_tiling else (args.tile_shape or "auto"), halo=args.halo,
                            batch_size=args.batch_size, classes=args.classes, normalization=args.normalization,
                            progress=not args.quiet, tta=args.tta, **params)
    save_segmentation(result, args.output, name, formats, progress=False)
    tiling = f"tiled {result.tile_shape[0]}x{result.tile_shape[1]}+{result.halo[0]}" if result.tile_shape else "untiled"
    print(f"{path}: {result.n_objects} nuclei ({image.shape[0]}x{image.shape[1]} px, {tiling}, "
          f"{time.perf_counter() - t0:.1f} s) -> {os.path.join(args.output, name)}.*")
    return result.n_objects


def _segment(args: argparse.Namespace) -> int:
    import time

    from .automatic import OUTPUT_FORMATS, image_name
    from .wsi import is_slide

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
    params = {k: getattr(args, k) for k in (AIS_OPTIONS if args.mode == "ais" else AMG_OPTIONS)
              if getattr(args, k) is not None}
    if args.mode == "ais":  # bad post-processing values: say so before loading the model
        from .instances.tiled import AISParams

        try:
            AISParams(**params)
        except ValueError as err:
            raise UsageError(str(err)) from None
    checked_output_dir(args.output)  # a bad -o is found before any work
    model = load_model_from_args(args, classes=args.classes)
    print(f"model: {model.name} on {model.device}; mode {args.mode}{' with tta' if args.tta else ''}",
          file=sys.stderr)
    client = _dask_client(args) if any(is_slide(p) for p in inputs) else None
    t_start = time.perf_counter()
    failed: list[str] = []
    n_nuclei = 0
    for path in inputs:
        name = image_name(path)
        try:  # the per-file boundary: whatever fails for this file, the batch goes on
            if is_slide(path):
                n_nuclei += _segment_one_slide(args, path, name, model, client)
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
    return Client(LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=None))


def _segment_one_slide(args: argparse.Namespace, path: str, name: str, model, client) -> int:
    """The whole-slide path of ``pathosam segment``; returns the number of nuclei."""
    import time

    from .wsi.pipeline import SlideOptions, segment_slide

    if args.mode != "ais":
        raise ValueError("whole slides are segmented with --mode ais")
    params = {k: getattr(args, k) for k in AIS_OPTIONS if getattr(args, k) is not None}
    from .automatic import ais_params, auto_tiling

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
    p.add_argument("--classes", action="store_true", help="classify nuclei (PanNuke) with the semantic decoder")
    p.add_argument("--semantic-decoder", metavar="FILE", help="semantic decoder file for --classes")
    p.add_argument("--tile-shape", type=_pair, help="tile size in pixels (default: 384 for images > 512 px)")
    p.add_argument("--halo", type=_pair, help="halo per side in pixels (default 64)")
    p.add_argument("--no-tiling", action="store_true", help="never tile (large images are downscaled to 1024)")
    p.add_argument("--batch-size", type=int, default=1, help="tiles per model call (default 1)")
    p.add_argument("--normalization", choices=["none", "minmax"], default="none",
                   help="none: RGB uint8 as is (default); minmax: per-channel stretch per tile")
    p.add_argument("--tta", action="store_true",
                   help="AIS: average the decoder maps of each tile and its 3 flips (about 4x slower, "
                        "smoother outlines, fewer split nuclei)")
    p.add_argument("--formats", default="tif,geojson,csv,parquet",
                   help="comma-separated outputs among tif, geojson, geojson.gz, csv, parquet (default: all but .gz)")
    g = p.add_argument_group("AIS post-processing (defaults: the reference's, or the registered model's own, "
                             "e.g. pathosam_small's size filter; see `pathosam models list`)")
    g.add_argument("--center-distance-threshold", type=float, help="seed threshold on the centre distance (0.5)")
    g.add_argument("--boundary-distance-threshold", type=float, help="seed threshold on the boundary distance (0.5)")
    g.add_argument("--foreground-threshold", type=float, help="foreground probability threshold (0.5)")
    g.add_argument("--foreground-smoothing", type=float, help="Gaussian sigma of the foreground map, px (1.0)")
    g.add_argument("--distance-smoothing", type=float, help="Gaussian sigma of the distance maps, px (1.6)")
    g.add_argument("--min-size", type=int, help="remove nuclei smaller than this many pixels (0)")
    g.add_argument("--seeds", choices=["distance", "shape"],
                   help="distance: the reference's seeds (both distance thresholds); shape: maxima of the "
                        "foreground's distance transform, one seed per blob (pathosam_small's default)")
    g.add_argument("--seed-dynamic", type=float, help="shape seeds: minimum height of a maximum, px (2)")
    g.add_argument("--seed-center-weight", type=float,
                   help="shape seeds: weight of the centre distance map, px (10; 0 = mask shape only)")
    g = p.add_argument_group("AMG (SAM defaults)")
    g.add_argument("--points-per-side", type=int, help="point grid per image or tile (32)")
    g.add_argument("--points-per-batch", type=int, help="points per mask-decoder call (64)")
    g.add_argument("--pred-iou-thresh", type=float, help="minimum predicted IoU (0.88)")
    g.add_argument("--stability-score-thresh", type=float, help="minimum stability score (0.95)")
    g.add_argument("--box-nms-thresh", type=float, help="box NMS IoU threshold (0.7)")
    g.add_argument("--min-mask-region-area", type=int, help="remove holes/islands below this area (0)")
    g.add_argument("--min-object-size", type=int, help="drop objects below this many pixels (0)")
    g = p.add_argument_group("whole slides (SVS, NDPI, MRXS, ... and pyramidal or very large TIFF)")
    g.add_argument("--target-mpp", type=float, default=0.25,
                   help="model resolution in um/px; slides are rescaled to it (default 0.25 = 40x)")
    g.add_argument("--mpp", type=float, help="the slide's pixel size in um/px (overrides its metadata)")
    g.add_argument("--no-rescale", action="store_true", help="use the slide's pixels as they are")
    g.add_argument("--no-tissue-mask", action="store_true", help="also run the model on background tiles")
    g.add_argument("--roi", type=int, nargs=4, metavar=("X", "Y", "W", "H"),
                   help="only this region (level-0 pixels: left, top, width, height)")
    g.add_argument("--workers", type=int, help="spread tiles over N local Dask worker processes")
    g.add_argument("--scheduler", metavar="ADDRESS", help="use an existing Dask cluster (tcp://host:8786)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_segment)


# ---------------------------------------------------------------------------------------------
# pathosam serve ...


class _ModelAction(argparse.Action):
    """``--model X``: append a served model (the first given is the default)."""

    def __call__(self, parser, namespace, values, option_string=None):
        from .server.config import ServedModel

        served = list(getattr(namespace, "served", None) or [])
        served.append(ServedModel(values))
        namespace.served = served


class _DecoderAction(argparse.Action):
    """``--decoder FILE``: the instance decoder of the ``--model`` given just before."""

    def __call__(self, parser, namespace, values, option_string=None):
        from dataclasses import replace

        served = list(getattr(namespace, "served", None) or [])
        if not served:
            parser.error("--decoder must follow the --model it belongs to")
        served[-1] = replace(served[-1], decoder=values)
        namespace.served = served


def _serve(args: argparse.Namespace) -> int:
    from .server import serve
    from .server.config import ServedModel, ServerConfig

    if args.port < 0 or args.port > 65535:
        raise UsageError(f"--port must be 0..65535, got {args.port}")
    if args.max_request_mb <= 0 or args.max_image_pixels <= 0:
        raise UsageError("--max-request-mb and --max-image-pixels must be positive")
    for flag, value in (("--max-request-seconds", args.max_request_seconds), ("--body-timeout", args.body_timeout)):
        if not value >= 0 or value == float("inf"):
            raise UsageError(f"{flag} must be a number of seconds >= 0 (0 = no limit), got {value}")
    config = ServerConfig(
        models=args.served or [ServedModel(registry.DEFAULT_MODEL)], device=args.device,
        allow_downloads=args.allow_downloads or args.allow_remote_weights,
        allow_remote_weights=args.allow_remote_weights, max_request_mb=args.max_request_mb,
        max_image_pixels=args.max_image_pixels, embedding_cache=args.embedding_cache,
        max_loaded_models=args.max_loaded_models, max_request_seconds=args.max_request_seconds,
        body_timeout=args.body_timeout,
    )
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"{PROG}: warning: serving on {args.host}: the server has no authentication; anyone who can "
              "reach this address can use it", file=sys.stderr)
    what = (", ".join(m.model for m in config.models) if args.served else
            f"the embedded model {registry.DEFAULT_MODEL} (no --model given; listed as vit_b)")
    print(f"{PROG} serve: loading {what}; QuPath SAM extension server URL: "
          f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}/sam/", file=sys.stderr)
    serve(config, host=args.host, port=args.port, log_level=args.log_level)
    return EXIT_OK


def add_serve_parser(subparsers: argparse._SubParsersAction) -> None:
    """``pathosam serve``: SAM-API compatible HTTP server for the QuPath SAM extension."""
    p = subparsers.add_parser(
        "serve", help="HTTP server for the QuPath SAM extension (SAM-API compatible)",
        description="Serve PathoSAM over HTTP with the SAM-API protocol that qupath-extension-sam "
        "speaks: set the extension's server URL to http://HOST:PORT/sam/. Prompts (boxes, points) "
        "give SAM masks; 'auto mask' gives AIS nuclei when the model has a decoder, else SAM's AMG. "
        "Only the models given here and cached registered models are loaded; requested URLs are "
        "resolved offline to them (see docs of pathosam.server).",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("-m", "--model", action=_ModelAction, metavar="NAME_OR_FILE", dest="served",
                   help="registry name or weights file to serve; repeat for several, the first is the "
                   f"default (default: the embedded model {registry.DEFAULT_MODEL})")
    p.add_argument("--decoder", action=_DecoderAction, metavar="FILE", dest="served",
                   help="instance-decoder file of the --model given just before it")
    p.add_argument("-d", "--device", default="auto", help="cpu, cuda, mps or auto (default)")
    p.add_argument("--allow-downloads", action="store_true",
                   help="download registered (hash-verified) models that are not cached when requested")
    p.add_argument("--allow-remote-weights", action="store_true",
                   help="also download and load weights from any http(s) URL a client sends (off: only "
                   "registered models and the --model files)")
    p.add_argument("--max-request-mb", type=float, default=64.0, help="largest request body in MiB (default 64)")
    p.add_argument("--max-image-pixels", type=int, default=4096 * 4096,
                   help="largest image, width x height (default 4096*4096)")
    p.add_argument("--embedding-cache", type=int, default=4, help="image embeddings kept in memory (default 4)")
    p.add_argument("--max-loaded-models", type=int, default=1, help="models kept in memory at once (default 1)")
    p.add_argument("--max-request-seconds", type=float, default=300.0,
                   help="time limit of one request's model work; a longer automask is stopped and answered "
                   "503 (default 300; 0 = none). Prompts never wait behind an automask")
    p.add_argument("--body-timeout", type=float, default=60.0,
                   help="seconds within which a request body must arrive, else 408 (default 60; 0 = none)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="server log level (default info)")
    p.set_defaults(handler=_serve, served=None)


def _add_evaluate_parser(subparsers: argparse._SubParsersAction) -> None:
    from .evaluation.command import add_evaluate_parser

    add_evaluate_parser(subparsers)


def _add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    from .training.command import add_train_parser

    add_train_parser(subparsers)


# ---------------------------------------------------------------------------------------------

#: Top-level commands, in help order. Each adds its subparser and sets ``handler``.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_segment_parser,
    add_models_parser,
    add_embed_parser,
    add_serve_parser,
    _add_evaluate_parser,
    _add_train_parser,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Nucleus segmentation in histopathology images with PathoSAM."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``) and return the exit status."""
    import logging

    logging.getLogger("tifffile").setLevel(logging.CRITICAL)  # our own one-line errors say what failed
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, argparse usage errors
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_USAGE)
    try:
        return args.handler(args)
    except UsageError as err:
        _error(str(err))
        return EXIT_USAGE
    except (FileNotFoundError, IsADirectoryError, PermissionError) as err:
        _error(str(err))
        return EXIT_FAILURE
    except (registry.ModelNotAvailableError, registry.HashMismatchError, ValueError) as err:
        _error(str(err))  # CheckpointError and bad images are ValueErrors with a clear message
        return EXIT_FAILURE
    except KeyboardInterrupt:
        _error("interrupted")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
