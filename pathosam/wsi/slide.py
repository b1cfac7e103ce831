"""Lazy whole-slide reading: OpenSlide formats and plain / pyramidal (OME-)TIFF.

A :class:`Slide` reads rectangular regions of level 0 (or of a pyramid level) on demand; the
whole slide is never loaded. Coordinates are level-0 pixels, (row, col) order for shapes and
offsets; regions reaching outside the slide are padded with white (255), as OpenSlide renders
transparent areas over a white background.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..image import describe_error, tiff_mpp

#: Suffixes handled by OpenSlide first (TIFF-based ones fall back to tifffile if OpenSlide refuses).
OPENSLIDE_SUFFIXES = (".svs", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".bif", ".svslide", ".tif", ".tiff",
                      ".dcm")


class SlideReadError(ValueError):
    """A region of an opened slide cannot be decoded (corrupt or missing tile data)."""


class Slide:
    """A whole-slide image opened for lazy region reads.

    Attributes
    ----------
    path : Path
    shape : (int, int)
        Level-0 size (rows, cols) in pixels.
    mpp : float or None
        Level-0 pixel size in micrometres per pixel (mean of x and y), None when unknown.
    level_shapes : list of (int, int)
        (rows, cols) of every pyramid level, level 0 first.
    """

    path: Path
    shape: tuple[int, int]
    mpp: float | None
    level_shapes: list[tuple[int, int]]
    backend: str

    @property
    def level_downsamples(self) -> list[float]:
        return [self.shape[1] / s[1] for s in self.level_shapes]

    def read(self, row: int, col: int, height: int, width: int, level: int = 0) -> np.ndarray:
        """RGB uint8 (height, width, 3) region whose top-left corner is (row, col) in *level*
        pixels; parts outside the slide are white.

        Raises :class:`SlideReadError` (naming the file and the region) for whatever the backend
        raises while decoding (a corrupt or missing tile: ``OpenSlideError``, ``zlib.error``, ...).
        """
        try:
            return self._read(row, col, height, width, level)
        except Exception as err:  # noqa: BLE001 - any decoder failure is the file's (see image.read_image)
            raise SlideReadError(
                f"{self.path}: cannot read the region at row {row}, col {col} ({height} x {width} px, "
                f"level {level}): {describe_error(err)}"
            ) from None

    def _read(self, row: int, col: int, height: int, width: int, level: int) -> np.ndarray:
        raise NotImplementedError

    def best_level(self, downsample: float) -> int:
        """The coarsest level whose downsample does not exceed ``downsample`` (x 1.01 slack)."""
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample * 1.01:
                best = i
        return best

    def thumbnail(self, max_side: int = 2048) -> tuple[np.ndarray, float]:
        """RGB uint8 thumbnail with its longest side <= ``max_side``; returns (image, downsample),
        downsample = level-0 pixels per thumbnail pixel (same in x and y). Read from the
        coarsest level that is at most 2x coarser than needed, in strips (memory: one strip)."""
        from PIL import Image

        downsample = max(self.shape) / max_side if max(self.shape) > max_side else 1.0
        level = self.best_level(downsample * 2)
        lh, lw = self.level_shapes[level]
        oh, ow = max(1, round(self.shape[0] / downsample)), max(1, round(self.shape[1] / downsample))
        out = np.empty((oh, ow, 3), np.uint8)
        fy = lh / oh  # level rows per thumbnail row
        step = max(1, int(4096 * 1024 // max(lw, 1) / max(fy, 1)))  # thumbnail rows per strip (~4 M level px)
        for t0 in range(0, oh, step):
            t1 = min(t0 + step, oh)
            a0, a1 = int(np.floor(t0 * fy)), min(lh, int(np.ceil(t1 * fy)))
            strip = self.read(a0, 0, a1 - a0, lw, level)
            im = Image.fromarray(strip).resize((ow, t1 - t0), Image.BILINEAR, box=(0, t0 * fy - a0, lw, t1 * fy - a0))
            out[t0:t1] = np.asarray(im)
        return out, self.shape[1] / ow

    def close(self) -> None:  # pragma: no cover - trivial
        pass

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        mpp = f"{self.mpp:.4g} um/px" if self.mpp else "unknown pixel size"
        return f"<Slide {self.path.name}: {self.shape[0]}x{self.shape[1]} px, {len(self.level_shapes)} levels, {mpp}>"


def _pad_white(region: np.ndarray, height: int, width: int, r_off: int, c_off: int) -> np.ndarray:
    out = np.full((height, width, 3), 255, dtype=np.uint8)
    out[r_off : r_off + region.shape[0], c_off : c_off + region.shape[1]] = region
    return out


class OpenSlideSlide(Slide):
    """Backed by ``openslide.OpenSlide`` (Aperio, Hamamatsu, Leica, MIRAX, Philips, ...)."""

    backend = "openslide"

    def __init__(self, path: str | os.PathLike) -> None:
        import openslide

        self.path = Path(path)
        self._osr = openslide.OpenSlide(str(path))
        w, h = self._osr.dimensions
        self.shape = (h, w)
        self.level_shapes = [(lh, lw) for lw, lh in self._osr.level_dimensions]
        props = self._osr.properties
        try:
            self.mpp = (float(props["openslide.mpp-x"]) + float(props["openslide.mpp-y"])) / 2
        except (KeyError, ValueError):
            self.mpp = None

    def _read(self, row: int, col: int, height: int, width: int, level: int) -> np.ndarray:
        ds = self._osr.level_downsamples[level]
        # OpenSlide takes the top-left in level-0 pixels and the size in level pixels
        rgba = np.asarray(self._osr.read_region((round(col * ds), round(row * ds)), level, (width, height)))
        alpha = rgba[..., 3:4].astype(np.uint16)
        rgb = (rgba[..., :3].astype(np.uint16) * alpha + 255 * (255 - alpha) + 127) // 255
        return rgb.astype(np.uint8)

    def close(self) -> None:
        self._osr.close()


class TiffSlide(Slide):
    """Plain or pyramidal (OME-)TIFF read lazily through tifffile's zarr interface."""

    backend = "tifffile"

    def __init__(self, path: str | os.PathLike) -> None:
        import tifffile

        self.path = Path(path)
        self._tif = tifffile.TiffFile(str(path))
        if not self._tif.series:
            self._tif.close()
            raise ValueError("the TIFF holds no image (empty or truncated after its header)")
        series = self._tif.series[0]
        levels = series.levels
        self._axes = series.axes
        self._levels = []
        self.level_shapes = []
        import zarr

        for i, lvl in enumerate(levels):
            store = self._tif.series[0].aszarr(level=i)
            self._levels.append(zarr.open(store, mode="r"))
            self.level_shapes.append(self._rc_shape(lvl.shape))
        self.shape = self.level_shapes[0]
        self.mpp = tiff_mpp(self._tif)
        from ..image import tiff_truncation

        problem = tiff_truncation(self._tif, self.path.stat().st_size)
        if problem:
            self._tif.close()
            raise ValueError(problem)
        try:  # decode one tile of the coarsest level now: an unsupported compression fails at open
            self._read(0, 0, 1, 1, len(self.level_shapes) - 1)
        except Exception:
            self._tif.close()
            raise

    def _rc_shape(self, shape: tuple[int, ...]) -> tuple[int, int]:
        axes = self._axes
        if axes in ("YXS", "YX"):
            return shape[0], shape[1]
        if axes == "SYX" or axes == "CYX":
            return shape[1], shape[2]
        raise ValueError(f"{self.path}: unsupported TIFF layout (axes {axes!r}, shape {shape}); expected an RGB "
                         "or grayscale 2-D image")

    def _read(self, row: int, col: int, height: int, width: int, level: int) -> np.ndarray:
        H, W = self.level_shapes[level]
        r0, c0, r1, c1 = max(row, 0), max(col, 0), min(row + height, H), min(col + width, W)
        if r0 >= r1 or c0 >= c1:
            return np.full((height, width, 3), 255, np.uint8)
        arr = self._levels[level]
        if self._axes in ("SYX", "CYX"):
            region = np.moveaxis(np.asarray(arr[:, r0:r1, c0:c1]), 0, -1)
        else:
            region = np.asarray(arr[r0:r1, c0:c1])
        from ..image import to_rgb_uint8

        region = to_rgb_uint8(region) if region.dtype != np.uint8 or region.ndim == 2 or region.shape[2] != 3 else region
        if (r0, c0, r1, c1) != (row, col, row + height, col + width):
            region = _pad_white(region, height, width, r0 - row, c0 - col)
        return region

    def close(self) -> None:
        self._tif.close()


def open_slide(path: str | os.PathLike) -> Slide:
    """Open a slide with OpenSlide, else as a (pyramidal) TIFF; clear error otherwise."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"slide not found: {p}")
    errors = []
    if p.suffix.lower() in OPENSLIDE_SUFFIXES:
        try:
            import openslide

            if p.suffix.lower() not in (".tif", ".tiff") or openslide.OpenSlide.detect_format(str(p)) not in (
                None, "generic-tiff"):
                return OpenSlideSlide(p)
        except Exception as err:  # noqa: BLE001 - any OpenSlide failure: try tifffile next
            errors.append(f"OpenSlide: {err}")
    if p.suffix.lower() in (".tif", ".tiff", ".svs", ".btf", ".tf8", ".tf2"):
        try:
            return TiffSlide(p)
        except Exception as err:  # noqa: BLE001
            errors.append(f"tifffile: {err}")
    raise ValueError(f"{p}: cannot open as a slide ({'; '.join(errors) or 'unsupported file type'})")


def is_slide(path: str | os.PathLike, min_side: int = 10000) -> bool:
    """True for whole-slide formats (OpenSlide vendor formats) and TIFFs that are pyramidal or
    larger than ``min_side`` px on a side; ordinary images are False."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".svs", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".bif", ".svslide"):
        return True
    if suffix in (".tif", ".tiff"):
        try:
            import tifffile

            with tifffile.TiffFile(str(p)) as tif:
                s = tif.series[0]
                return len(s.levels) > 1 or max(s.shape[:2]) >= min_side
        except Exception:  # noqa: BLE001 - unreadable files are reported by the image reader
            return False
    return False
