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

#: Top-level commands, in help order. Each adds its subparser and sets ``handler``.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_models_parser,
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
    except (registry.ModelNotAvailableError, registry.HashMismatchError) as err:
        _error(str(err))
        return EXIT_FAILURE
    except KeyboardInterrupt:
        _error("interrupted")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
