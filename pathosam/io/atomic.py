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
from collections.abc import Iterator
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
