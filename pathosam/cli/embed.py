"""``pathosam embed IMAGE -o OUT.zarr``: precomputed (tiled) image embeddings in a zarr cache."""

from __future__ import annotations

import argparse

from .common import EXIT_OK, UsageError, add_model_arguments, checked_output_dir, load_model_from_args, pair

def _embed(args: argparse.Namespace) -> int:
    from ..image import read_image

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
    p.add_argument("--tile-shape", type=pair, help="tile size in pixels, e.g. 384 (default: untiled)")
    p.add_argument("--halo", type=pair, help="halo per side in pixels, e.g. 64 (default 0 when tiled)")
    p.add_argument("--batch-size", type=int, default=1, help="tiles per encoder batch (default 1)")
    p.add_argument("--normalization", choices=["none", "minmax"], default="none",
                   help="none: RGB uint8 as is (PathoSAM training); minmax: per-channel stretch per tile")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_embed)
