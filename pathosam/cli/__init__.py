"""Command-line interface: ``pathosam <command> ...`` (also ``python -m pathosam``).

The CLI is a thin layer over the library, one module per subcommand (``segment``, ``models``,
``embed``, ``serve``, ``evaluate``, ``train``). Each has one ``add_<command>_parser`` function that
adds its subparser and sets ``handler`` (a function ``args -> int``) as default; :data:`COMMANDS`
lists them in order. No library module imports from this package.

Expected user errors (unknown model, missing file, failed download, hash mismatch) print a
one-line message to stderr, without a traceback, and give a non-zero exit status:
1 for failures, 2 for usage errors (as argparse does).
"""

import argparse
import sys
from collections.abc import Callable, Sequence

from .. import __version__, registry
from .common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, PROG, UsageError, error
from .embed import add_embed_parser
from .evaluate import add_evaluate_parser
from .models import add_models_parser
from .segment import add_segment_parser
from .serve import add_serve_parser
from .train import add_train_parser

__all__ = ["COMMANDS", "UsageError", "build_parser", "main"]

#: Top-level commands, in help order. Each adds its subparser and sets ``handler``.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_segment_parser,
    add_models_parser,
    add_embed_parser,
    add_serve_parser,
    add_evaluate_parser,
    add_train_parser,
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
        error(str(err))
        return EXIT_USAGE
    except (FileNotFoundError, IsADirectoryError, PermissionError) as err:
        error(str(err))
        return EXIT_FAILURE
    except (registry.ModelNotAvailableError, registry.HashMismatchError, ValueError) as err:
        error(str(err))  # CheckpointError and bad images are ValueErrors with a clear message
        return EXIT_FAILURE
    except KeyboardInterrupt:
        error("interrupted")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
