"""``pathosam models {list,fetch,path,import,verify}``: the model-weights cache."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .. import registry
from .common import EXIT_FAILURE, EXIT_OK, UsageError, error

def _check_names(names: Sequence[str]) -> None:
    unknown = [n for n in names if not registry.is_registered(n)]
    if unknown:
        label = "model" if len(unknown) == 1 else "models"
        raise UsageError(
            f"unknown {label} {', '.join(map(repr, unknown))}; registered models: {', '.join(registry.names())}"
        )



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
            error(str(err))
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
        error(f"{err}; nothing was imported")
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
        error(
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
