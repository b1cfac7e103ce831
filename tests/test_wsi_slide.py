"""Lazy slide reading (OpenSlide and pyramidal OME-TIFF) and tissue detection."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from pathosam.wsi import is_slide, open_slide, tile_has_tissue, tissue_mask


@pytest.fixture(scope="module")
def svs(data_dir):
    path = data_dir / "wsi" / "CMU-1-Small-Region.svs"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture(scope="module")
def full(svs):
    with open_slide(svs) as s:
        return s.read(0, 0, *s.shape)


@pytest.fixture(scope="module")
def pyramid(full, tmp_path_factory):
    path = tmp_path_factory.mktemp("wsi") / "pyramid.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as w:
        w.write(full, tile=(256, 256), subifds=2, photometric="rgb",
                metadata={"axes": "YXS", "PhysicalSizeX": 0.499, "PhysicalSizeY": 0.499})
        w.write(full[::2, ::2], tile=(256, 256), subfiletype=1, photometric="rgb")
        w.write(full[::4, ::4], tile=(256, 256), subfiletype=1, photometric="rgb")
    return path


def test_openslide_metadata_and_regions(svs, full):
    with open_slide(svs) as s:
        assert s.backend == "openslide" and s.shape == (2967, 2220) and s.mpp == pytest.approx(0.499)
        assert full.shape == (2967, 2220, 3) and full.dtype == np.uint8
        np.testing.assert_array_equal(s.read(100, 200, 50, 60), full[100:150, 200:260])
        outside = s.read(-10, 2200, 30, 40)  # partly outside: white there
        assert (outside[:10] == 255).all() and (outside[:, 20:] == 255).all()
    assert is_slide(svs)


def test_pyramidal_ome_tiff(pyramid, full):
    with open_slide(pyramid) as s:
        assert s.backend == "tifffile" and s.mpp == pytest.approx(0.499)
        assert s.level_shapes == [(2967, 2220), (1484, 1110), (742, 555)]
        assert s.level_downsamples == pytest.approx([1, 2, 4], rel=1e-3)
        np.testing.assert_array_equal(s.read(100, 200, 300, 400), full[100:400, 200:600])
        np.testing.assert_array_equal(s.read(10, 20, 30, 40, level=2), full[::4, ::4][10:40, 20:60])
        np.testing.assert_array_equal(s.read(2960, 2210, 20, 20)[:7, :10], full[2960:, 2210:])
        assert s.best_level(3.0) == 1 and s.best_level(8) == 2 and s.best_level(1) == 0
        thumb, ds = s.thumbnail(512)
        assert max(thumb.shape[:2]) == 512 and ds == pytest.approx(2967 / 512, rel=1e-3)
    assert is_slide(pyramid)


def test_plain_tiff_and_errors(tmp_path, full):
    tifffile.imwrite(tmp_path / "plain.tif", full[:300, :400])
    with open_slide(tmp_path / "plain.tif") as s:
        assert s.mpp is None and s.shape == (300, 400)
    assert not is_slide(tmp_path / "plain.tif")
    (tmp_path / "bad.svs").write_bytes(b"not a slide")
    with pytest.raises(ValueError, match="cannot open as a slide"):
        open_slide(tmp_path / "bad.svs")
    with pytest.raises(FileNotFoundError):
        open_slide(tmp_path / "missing.svs")


def test_tissue_mask_on_the_real_slide(svs):
    with open_slide(svs) as s:
        thumb, ds = s.thumbnail(400)
    mask = tissue_mask(thumb)
    assert mask.shape == thumb.shape[:2]
    # the tissue strip covers roughly a third of this region; glass at the left is background
    assert 0.25 < mask.mean() < 0.5
    assert not mask[:, :20].any() and mask[200:300, 150:200].all()
    assert tile_has_tissue(mask, ds, ((1500, 1200), (1884, 1584)))
    assert not tile_has_tissue(mask, ds, ((1500, 0), (1884, 300)))


def test_tissue_mask_synthetic():
    thumb = np.full((100, 120, 3), 240, np.uint8)  # glass
    thumb[20:60, 30:90] = (180, 80, 150)  # stained tissue
    thumb[70:72, 5:7] = (150, 50, 120)  # dust speck, dropped
    mask = tissue_mask(thumb, min_area_px=20)
    assert mask[25:55, 35:85].all() and not mask[70, 5] and mask.sum() < 60 * 40 * 1.1
    assert not tissue_mask(np.full((50, 50, 3), 250, np.uint8)).any()  # empty slide
    with pytest.raises(ValueError, match="RGB uint8"):
        tissue_mask(np.zeros((10, 10), np.uint8))
