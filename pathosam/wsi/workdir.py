"""The work folder of a slide run (``OUT/NAME.work``): what a killed run leaves for the next one.

Layout::

    job.json        the run's signature; a folder with another signature is started afresh
    labels.zarr     uint32 labels at model resolution, block-local ids (one chunk per block)
    blocks/I.npz    block I post-processed: anchors, per-nucleus stats (+ class feature sums)
    maps/I.npz      tile I's model output (inner decoder maps, + class features): saved by the
                    model stage as soon as a batch leaves the model, deleted once every block
                    around the tile is saved

Disk held by ``maps/``: the tiles with an unfinished block around them, i.e. about two rows of
a band of tile columns plus, between bands, the two tile columns at the band's edge (loaded, not
recomputed, by the next band); 1.8 MB per 384 x 384 tile (3 float32 maps), 8.3 MB with classes.

Every file is written under a unique temporary name and renamed (atomic on one file system), so
a file under its final name is complete; leftovers of a killed writer (``*.partial*``) are
removed when the folder is opened, and a final-name file that does not read back (e.g. cut by a
crash of the machine) is deleted and its work redone, never trusted. A block's labels are written
to ``labels.zarr`` (zarr writes chunks atomically too) before its ``.npz``, so a saved block's
labels are always there. Several processes (Dask workers) may share the folder: a tile needed
by two of them may be computed by both; the last rename wins, with the same content.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..instances.tiled import BlockResult

PARTIAL = ".partial"


def _atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` to a name unique to this process and thread, then rename onto ``path``."""
    tmp = path.with_name(f"{path.stem}.{os.getpid()}-{threading.get_ident()}{PARTIAL}{path.suffix}")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _readable(path: Path, keys: Iterable[str]) -> bool:
    """Whether ``path`` is a complete ``.npz`` holding ``keys`` (its zip directory, which is
    written last, reads back and every member passes its CRC check)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            return {f"{k}.npy" for k in keys} <= names and z.testzip() is None
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return False


class WorkDir:
    """Files of one slide run's work folder (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.blocks = self.path / "blocks"
        self.maps = self.path / "maps"

    def open(self, signature: dict, shape: tuple[int, int], chunks: tuple[int, int]) -> None:
        """Keep the folder if it belongs to the run of ``signature`` (removing leftovers of killed
        writers), else start it afresh with an empty label array of ``shape``."""
        import zarr

        if self.path.exists():
            job = self.path / "job.json"
            try:
                old = json.loads(job.read_text()) if job.is_file() else None
            except ValueError:
                old = None
            if old != signature:
                shutil.rmtree(self.path)
        if not self.path.exists():
            self.blocks.mkdir(parents=True)
            zarr.open_array(str(self.path / "labels.zarr"), mode="w", shape=shape, chunks=chunks, dtype="uint32",
                            fill_value=0)
            (self.path / "job.json").write_text(json.dumps(signature))  # last: the folder is ready
        self.maps.mkdir(exist_ok=True)  # absent in folders of earlier versions
        for folder in (self.blocks, self.maps):
            for f in folder.glob(f"*{PARTIAL}*"):
                f.unlink(missing_ok=True)

    # ------------------------------------------------------------------ blocks
    def save_block(self, result: BlockResult) -> None:
        arrays = {"anchors": result.anchors, "stats": result.stats}
        if result.features is not None:
            arrays["features"] = result.features
        _atomic_savez(self.blocks / f"{result.index}.npz", arrays)

    def done_blocks(self, check: bool = False) -> set[int]:
        """Indices of the saved blocks; ``check``: read each file back and delete (so redo) those
        that do not."""
        done = set()
        for f in self.blocks.glob("*.npz"):
            if PARTIAL in f.name:
                continue
            if check and not _readable(f, ("anchors", "stats")):
                f.unlink(missing_ok=True)
                continue
            done.add(int(f.stem))
        return done

    def block_saved(self, index: int) -> bool:
        return (self.blocks / f"{index}.npz").is_file()

    def load_block(self, index: int) -> BlockResult:
        with np.load(self.blocks / f"{index}.npz") as z:
            return BlockResult(index, None, z["anchors"], z["stats"], z["features"] if "features" in z else None)

    # ------------------------------------------------------------------ tile maps
    def save_maps(self, index: int, maps: np.ndarray, features: np.ndarray | None) -> None:
        """Save tile ``index``'s inner maps (and class features)."""
        arrays = {"maps": maps} if features is None else {"maps": maps, "features": features}
        _atomic_savez(self.maps / f"{index}.npz", arrays)

    def load_maps(self, index: int) -> tuple[np.ndarray, np.ndarray | None] | None:
        """Tile ``index``'s saved maps and features, or None when not saved; a file that does not
        read back is deleted (None)."""
        path = self.maps / f"{index}.npz"
        if not path.is_file():
            return None
        try:
            with np.load(path) as z:
                return z["maps"], (z["features"] if "features" in z else None)
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
            path.unlink(missing_ok=True)
            return None

    def drop_maps(self, index: int) -> None:
        (self.maps / f"{index}.npz").unlink(missing_ok=True)

    def n_maps(self) -> int:
        return sum(1 for f in self.maps.glob("*.npz") if PARTIAL not in f.name)
