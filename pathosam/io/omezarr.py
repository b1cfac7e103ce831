"""OME-Zarr (NGFF 0.4) label images with a pyramid, written block by block (opens in napari).

Layout: a zarr v2 group with ``multiscales`` metadata; dataset ``"0"`` is full resolution,
``"1"``, ``"2"``, ... are 2x nearest-neighbour downsamples (labels must not be interpolated),
down to ``min_side`` pixels. Axes ``y``, ``x`` with a scale in micrometres when the pixel size
is known, else in pixels.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

NGFF_VERSION = "0.4"


def create_label_zarr(path: str | os.PathLike, shape: tuple[int, int], chunks: tuple[int, int],
                      pixel_size_um: float | None = None, name: str = "labels", min_side: int = 256):
    """Create the group and all (empty) pyramid arrays; returns (group, list of arrays)."""
    import zarr

    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    arrays, datasets = [], []
    level, (h, w) = 0, shape
    unit_scale = pixel_size_um if pixel_size_um else 1.0
    while True:
        arr = root.create_array(str(level), shape=(h, w), chunks=(min(chunks[0], max(h, 1)), min(chunks[1], max(w, 1))),
                                dtype="uint32", fill_value=0, chunk_key_encoding={"name": "v2", "separator": "/"})
        arrays.append(arr)
        f = 2**level
        datasets.append({"path": str(level),
                         "coordinateTransformations": [{"type": "scale", "scale": [unit_scale * f, unit_scale * f]}]})
        if max(h, w) <= min_side:
            break
        level, h, w = level + 1, -(-h // 2), -(-w // 2)
    unit = {"unit": "micrometer"} if pixel_size_um else {}
    root.attrs["multiscales"] = [{
        "version": NGFF_VERSION, "name": name,
        "axes": [{"name": "y", "type": "space", **unit}, {"name": "x", "type": "space", **unit}],
        "datasets": datasets,
    }]
    root.attrs["image-label"] = {"version": NGFF_VERSION}
    return root, arrays


def build_pyramid(arrays, block: int = 2048) -> None:
    """Fill levels 1.. of ``arrays`` from level 0 by 2x nearest-neighbour downsampling, block by
    block (memory: one block of ``block`` x ``block`` pixels)."""
    for src, dst in zip(arrays[:-1], arrays[1:]):
        H, W = src.shape
        for r in range(0, H, block):
            for c in range(0, W, block):
                dst[r // 2 : (min(r + block, H) + 1) // 2, c // 2 : (min(c + block, W) + 1) // 2] = \
                    np.asarray(src[r : min(r + block, H) : 2, c : min(c + block, W) : 2])


def read_label_zarr(path: str | os.PathLike, level: int = 0) -> np.ndarray:
    """Read one pyramid level of an OME-Zarr label image written by :func:`create_label_zarr`."""
    import zarr

    root = zarr.open_group(str(Path(path)), mode="r")
    return np.asarray(root[str(level)])
