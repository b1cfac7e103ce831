"""``pathosam serve``: the SAM-API compatible HTTP server for the QuPath SAM extension."""

from __future__ import annotations

import argparse
import sys

from .. import registry
from .common import EXIT_OK, PROG, UsageError, add_precision_argument, check_precision

class _ModelAction(argparse.Action):
    """``--model X``: append a served model (the first given is the default)."""

    def __call__(self, parser, namespace, values, option_string=None):
        from ..server.config import ServedModel

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
    from ..server import serve
    from ..server.config import ServedModel, ServerConfig

    if args.port < 0 or args.port > 65535:
        raise UsageError(f"--port must be 0..65535, got {args.port}")
    if args.max_request_mb <= 0 or args.max_image_pixels <= 0:
        raise UsageError("--max-request-mb and --max-image-pixels must be positive")
    for flag, value in (("--max-request-seconds", args.max_request_seconds), ("--body-timeout", args.body_timeout)):
        if not value >= 0 or value == float("inf"):
            raise UsageError(f"{flag} must be a number of seconds >= 0 (0 = no limit), got {value}")
    check_precision(args)
    config = ServerConfig(
        models=args.served or [ServedModel(registry.DEFAULT_MODEL)], device=args.device, precision=args.precision,
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
    add_precision_argument(p)
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
