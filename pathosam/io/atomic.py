"""Atomic output: write to a temporary sibling, rename onto the final name only on success.

A file that exists under its final name is therefore always complete; a crashed or failed
write leaves nothing there (Conventions: "no partial output file is left behind looking
complete").

Temporary name: ``STEM.partial SUFFIX`` next to the target, keeping the *last* suffix so that
writers which choose a format from the suffix still work::

    labels.tif          -> labels.partial.tif
    cells.geojson.gz    -> cells.geojson.partial.gz
    table.parquet       -> table.partial.parquet
    out.zarr  (a dir)   -> out.partial.zarr
    result    (no dot)  -> result.partial

The name is fixed (not random), so a leftover from a killed process is simply overwritten by
the next run. Two processes must not write the same target at the same time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

PARTIAL = ".partial"


def partial_path(path: str | os.PathLike) -> Path:
    """The temporary sibling name :func:`atomic_write` uses for ``path`` (see module docstring)."""
    path = Path(path)
    suffix = path.suffix
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    return path.with_name(f"{stem}{PARTIAL}{suffix}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write to; move it onto ``path`` when the block succeeds.

    Parameters
    ----------
    path : str or os.PathLike
        Final file or directory name. Missing parent directories are created.

    Yields
    ------
    Path
        The temporary sibling (:func:`partial_path`), which does not exist on entry (a stale
        one is removed). Write a file or create a directory there.

    Notes
    -----
    On success the temporary path replaces ``path`` with :func:`os.replace` (atomic for files
    on one file system). An existing directory at ``path`` is first renamed aside and removed
    after the swap, since a non-empty directory cannot be replaced atomically. On any exception
    (including ``KeyboardInterrupt``) the temporary file or directory is removed and the
    exception propagates; ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    _remove(tmp)
    try:
        yield tmp
        if not (tmp.exists() or tmp.is_symlink()):
            raise FileNotFoundError(f"{path}: the writer produced nothing at {tmp}")
        if path.is_dir() and not path.is_symlink():
            old = path.with_name(f"{tmp.name}.old")
            _remove(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if tmp.is_dir() and path.exists():
                path.unlink()  # a directory cannot replace a file
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_file_set(directory: str | os.PathLike, names: Sequence[str],
                    replaces: Sequence[str] = ()) -> Iterator[Path]:
    """Write several files as one set: all new, or (on failure) all old.

    Parameters
    ----------
    directory : str or os.PathLike
        Where the files go (created if missing).
    names : sequence of str
        File names (no folders) that the block writes, each into the yielded staging folder.
    replaces : sequence of str
        File names in ``directory`` that belong to the same set (e.g. every output format of one
        image): those not in ``names`` are removed when the new set is committed, so that the
        folder never holds files of two runs side by side.

    Yields
    ------
    Path
        A fresh staging folder inside ``directory`` (``.FIRST.partial-set``, FIRST the first of
        ``replaces``, else of ``names``); write ``names`` there.

    Notes
    -----
    Only when the block succeeds and every name exists in the staging folder are the files moved
    onto their final names (one :func:`os.replace` each) and the stale ones of ``replaces``
    removed. On any exception (including ``KeyboardInterrupt``) the staging folder is removed and
    ``directory`` is left exactly as it was. A kill during the moves themselves (microseconds)
    can still leave a mix; the next run of the same set replaces it.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if not names:
        raise ValueError("atomic_file_set: no file names given")
    staging = directory / f".{(list(replaces) or list(names))[0]}.partial-set"
    _remove(staging)
    staging.mkdir()
    try:
        yield staging
        missing = [n for n in names if not (staging / n).exists()]
        if missing:
            raise FileNotFoundError(f"{directory}: the writer produced no {', '.join(missing)}")
        for n in names:
            target = directory / n
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(staging / n, target)
        for n in replaces:
            if n not in names:
                with contextlib.suppress(FileNotFoundError):
                    _remove(directory / n)
    finally:
        with contextlib.suppress(OSError):
            _remove(staging)


def prepare_output_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """Create the folder ``path`` if needed and check that files can be written there.

    Meant to run before any work, so that a bad ``-o`` is reported at once instead of after
    the first image. Raises ``NotADirectoryError`` / ``PermissionError`` / ``OSError`` with a
    one-line message naming the path and the cause (not a bare errno).
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise NotADirectoryError(f"{what} {p}: exists and is not a directory")
    parent = p
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"{what} {p}: cannot be created, {parent} is a file")
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".pathosam-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except PermissionError:
        raise PermissionError(f"{what} {p}: not writable (permission denied)") from None
    except OSError as err:
        raise OSError(f"{what} {p}: not writable ({err.strerror or err})") from None
    return p
