"""A seeded corpus of broken image and slide files, for the bad-input tests.

Every variant is derived from a small valid file of each format we read (TIFF uncompressed,
zlib strips and tiles, PNG, JPEG, pyramidal OME-TIFF, and the shared SVS when present):
truncated at several offsets, bytes flipped in the data, a garbled header, a wrong suffix,
plus decompression bombs (headers declaring 100000 x 100000 px with almost no data).
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

TRUNCATE_AT = (0, 8, 0.05, 0.25, 0.5, 0.75, 0.95, -1)  # absolute bytes, fractions of the size, -1 = all but one


def _image(rng: np.random.Generator, shape=(96, 128)) -> np.ndarray:
    """Smooth RGB uint8 content (compresses like a real image, not like noise)."""
    y, x = np.mgrid[: shape[0], : shape[1]]
    base = np.stack([np.sin(x / 7.0), np.cos(y / 5.0), np.sin((x + y) / 11.0)], axis=-1)
    return ((base + 1) * 100 + rng.integers(0, 40, (*shape, 3))).astype(np.uint8)


def valid_images(rng: np.random.Generator) -> dict[str, bytes]:
    """name (with suffix) -> bytes of a valid small image, one per in-memory format."""
    img = _image(rng)
    out: dict[str, bytes] = {}
    for name, kwargs in {"raw.tif": {}, "zlib.tif": {"compression": "zlib", "rowsperstrip": 8},
                         "tiled.tif": {"compression": "zlib", "tile": (32, 32)}}.items():
        buf = io.BytesIO()
        tifffile.imwrite(buf, img, photometric="rgb", **kwargs)
        out[name] = buf.getvalue()
    for name, fmt in (("image.png", "PNG"), ("image.jpg", "JPEG")):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format=fmt)
        out[name] = buf.getvalue()
    return out


def pyramid_bytes(rng: np.random.Generator, shape=(512, 512)) -> bytes:
    """A pyramidal OME-TIFF (zlib tiles of 128 px, levels 1, 1/2, 1/4): taken as a slide."""
    img = _image(rng, shape)
    buf = io.BytesIO()
    with tifffile.TiffWriter(buf, ome=True) as w:
        w.write(img, tile=(128, 128), subifds=2, photometric="rgb", compression="zlib",
                metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25})
        w.write(img[::2, ::2], tile=(128, 128), subfiletype=1, photometric="rgb", compression="zlib")
        w.write(img[::4, ::4], tile=(128, 128), subfiletype=1, photometric="rgb", compression="zlib")
    return buf.getvalue()


def broken_variants(data: bytes, rng: np.random.Generator) -> dict[str, bytes]:
    """Truncations, flipped data bytes and a garbled header of one valid file."""
    n = len(data)
    out: dict[str, bytes] = {}
    for t in TRUNCATE_AT:
        cut = n - 1 if t == -1 else (int(t) if isinstance(t, int) else int(n * t))
        out[f"trunc{cut}"] = data[:cut]
    for k, count in enumerate((1, 16, 256)):
        b = bytearray(data)
        for i in rng.integers(n // 4, n, count):
            b[i] ^= int(rng.integers(1, 256))
        out[f"flip{k}"] = bytes(b)
    b = bytearray(data)
    b[:16] = rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
    out["header"] = bytes(b)
    return out


def corrupt_tile(data: bytes, level: int = 0, index: int = 0) -> bytes:
    """``data`` (a tiled TIFF) with the bytes of one tile of one level replaced by garbage: the
    file opens and its coarse levels read, but that tile does not decode."""
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.series[0].levels[level].pages[0]
        offset, count = page.dataoffsets[index], page.databytecounts[index]
    b = bytearray(data)
    b[offset : offset + count] = bytes((i * 37 + 11) % 256 for i in range(count))
    return bytes(b)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(side: int = 100_000) -> bytes:
    """A 69-byte PNG whose header declares side x side RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0")) \
        + _png_chunk(b"IEND", b"")


def tiff_bomb(side: int = 100_000) -> bytes:
    """A classic TIFF whose one IFD declares side x side RGB pixels in one strip past the end."""
    entries = [(256, 4, 1, side), (257, 4, 1, side), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 2),
               (273, 4, 1, 4096), (277, 3, 1, 3), (278, 4, 1, side), (279, 4, 1, side * side * 3 % (1 << 32))]
    ifd = struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        packed = struct.pack("<H", value) + b"\0\0" if typ == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, typ, count) + packed
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\0\0\0\0"


def jpeg_bomb(side: int = 65_000) -> bytes:
    """A JPEG whose start-of-frame declares side x side pixels (JPEG's maximum is 65535)."""
    good = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 100, 50)).save(good, format="JPEG")
    data = bytearray(good.getvalue())
    i = data.index(b"\xff\xc0")  # baseline SOF0: marker, length, precision, height, width
    data[i + 5 : i + 9] = struct.pack(">HH", side, side)
    return bytes(data)


def write_corpus(folder: Path, seed: int = 0, svs: Path | None = None) -> dict[str, list[Path]]:
    """Write the corpus into ``folder``; returns {"images": [...], "slides": [...], "valid": [...]}.

    ``images`` are in-memory image files (read with :func:`pathosam.image.read_image`),
    ``slides`` are slide files (opened with :func:`pathosam.wsi.open_slide`).
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[Path]] = {"images": [], "slides": [], "valid": []}

    def put(group: str, name: str, data: bytes) -> None:
        p = folder / name
        p.write_bytes(data)
        files[group].append(p)

    valid = valid_images(rng)
    for name, data in valid.items():
        put("valid", f"valid_{name}", data)
        stem, suffix = name.rsplit(".", 1)
        for kind, broken in broken_variants(data, rng).items():
            put("images", f"{stem}_{kind}.{suffix}", broken)
    # wrong suffixes: readable content under another format's name, and non-images
    put("images", "png_named.tif", valid["image.png"])
    put("images", "jpeg_named.png", valid["image.jpg"])
    put("images", "tiff_named.jpg", valid["zlib.tif"])
    put("images", "text_named.png", b"this is not an image\n" * 10)
    put("images", "html_named.tif", b"<html><body>404 Not Found</body></html>")
    put("images", "bomb.png", png_bomb())
    put("images", "bomb.jpg", jpeg_bomb())
    put("images", "bomb_small.tif", tiff_bomb(9000))  # taken as an image, over the in-memory limit? no: 81 Mpx, truncated
    put("slides", "slide_bomb.tif", tiff_bomb())  # 100000 px: taken as a slide
    pyramid = pyramid_bytes(rng)
    put("valid", "valid_pyramid.ome.tif", pyramid)
    put("slides", "pyramid_badtile.ome.tif", corrupt_tile(pyramid, level=0, index=5))
    for kind, broken in broken_variants(pyramid, rng).items():
        put("slides", f"pyramid_{kind}.ome.tif", broken)
    if svs is not None and svs.is_file():
        data = svs.read_bytes()
        for kind, broken in broken_variants(data, rng).items():
            put("slides", f"cmu_{kind}.svs", broken)
    return files
