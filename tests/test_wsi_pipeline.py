"""Whole-slide pipeline: outputs, seams, resume (a fast test model reads maps from the pixels)."""

from __future__ import annotations

import gzip
import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import shapely.geometry
import tifffile

from pathosam.automatic import segment_nuclei
from pathosam.inference import postprocessing_block
from pathosam.instances.tiled import AISParams
from pathosam.tiling import tile_grid
from pathosam.io.omezarr import read_label_zarr
from pathosam.wsi.pipeline import SlideOptions, segment_slide

from .test_segment import MapsFromImage, disk_image


def write_pyramid(path, image, mpp):
    with tifffile.TiffWriter(path, ome=True) as w:
        w.write(image, tile=(256, 256), subifds=1, photometric="rgb",
                metadata={"axes": "YXS", "PhysicalSizeX": mpp, "PhysicalSizeY": mpp})
        w.write(image[::2, ::2], tile=(256, 256), subfiletype=1, photometric="rgb")


def load_outputs(out, name):
    labels = read_label_zarr(out / f"{name}.ome.zarr")
    features = json.loads(gzip.open(out / f"{name}.geojson.gz").read())["features"]
    table = pd.read_parquet(out / f"{name}.parquet")
    manifest = json.loads((out / f"{name}.manifest.json").read_text())
    return labels, features, table, manifest


def test_synthetic_slide_no_seams_and_consistent_outputs(tmp_path):
    image, truth = disk_image((700, 820), seed=3, n=150)
    write_pyramid(tmp_path / "disks.ome.tif", image, 0.5)
    opts = SlideOptions(target_mpp=None, tile_shape=(128, 128), halo=(32, 32), tissue=False, classes=True,
                        ais=AISParams(min_size=5))
    man = segment_slide(tmp_path / "disks.ome.tif", MapsFromImage(), tmp_path / "out", opts, progress=False)
    labels, features, table, _ = load_outputs(tmp_path / "out", "disks")
    assert labels.shape == truth.shape and man["nuclei"] == 150 == labels.max()
    for k in range(1, 151):  # every disk exactly one nucleus, whatever tile borders it crosses
        ids = np.unique(labels[truth == k])
        assert len(ids[ids > 0]) == 1
    assert len(features) == len(table) == 150
    table = table.set_index("id")
    for f in features:
        row = table.loc[f["properties"]["measurements"]["Label id"]]
        geom = shapely.geometry.shape(f["geometry"])
        assert geom.is_valid and geom.area == pytest.approx(row["area"])
        assert f["properties"]["classification"]["name"] == row["class_name"]
    assert sorted(f["properties"]["measurements"]["Label id"] for f in features) == list(range(1, 151))
    rows, cols = np.nonzero(labels)
    ids = labels[rows, cols].astype(np.int64)
    area = np.bincount(ids)[1:]
    np.testing.assert_allclose(table["centroid_x"], np.bincount(ids, cols + 0.5)[1:] / area)
    np.testing.assert_array_equal(table["area"], area)
    # pyramid level 1 is the 2x nearest-neighbour downsample
    np.testing.assert_array_equal(read_label_zarr(tmp_path / "out" / "disks.ome.zarr", 1), labels[::2, ::2])
    assert not (tmp_path / "out" / "disks.work").exists()


def test_blocks_of_several_model_tiles_equal_the_image_run(tmp_path):
    """Model tiles smaller than MIN_BLOCK are read, saved and post-processed in blocks of whole
    tiles (64 px tiles: 2 x 2 = 128 px blocks, 96 px: 192 px), as ``segment_nuclei`` does."""
    image, _ = disk_image((500, 610), seed=6, n=90)
    write_pyramid(tmp_path / "s.ome.tif", image, 0.5)
    for tile in (64, 96):
        opts = SlideOptions(target_mpp=None, tile_shape=(tile, tile), halo=(32, 32), tissue=False,
                            ais=AISParams(min_size=5))
        man = segment_slide(tmp_path / "s.ome.tif", MapsFromImage(), tmp_path / str(tile), opts, progress=False)
        g = man["work_grid"]
        assert g["block_shape"] == [2 * tile] * 2 == list(postprocessing_block((tile, tile)))
        assert g["tiles_through_model"] == g["tiles"] == len(tile_grid((500, 610), (tile, tile), (0, 0)))
        assert g["blocks"] == len(tile_grid((500, 610), (2 * tile, 2 * tile), (0, 0)))
        labels = load_outputs(tmp_path / str(tile), "s")[0]
        ref = segment_nuclei(image, MapsFromImage(), "ais", tile_shape=(tile, tile), halo=(32, 32), min_size=5,
                             progress=False)
        assert man["nuclei"] == ref.labels.max() > 80
        np.testing.assert_array_equal(labels, ref.labels)


@pytest.mark.parametrize("tile", [128, 64])
def test_resume_after_a_kill_gives_identical_output(tmp_path, tile):
    image, _ = disk_image((500, 600), seed=4, n=80)
    write_pyramid(tmp_path / "s.ome.tif", image, 0.25)
    opts = SlideOptions(tile_shape=(tile, tile), halo=(32, 32), tissue=False, classes=True)
    ref = segment_slide(tmp_path / "s.ome.tif", MapsFromImage(), tmp_path / "a", opts, progress=False)
    blocks = []

    def stop_at_seventh_block(kind, index):  # a Ctrl-C right after the 7th block is saved
        if kind == "block":
            blocks.append(index)
            if len(blocks) == 7:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        segment_slide(tmp_path / "s.ome.tif", MapsFromImage(), tmp_path / "b", opts, progress=False,
                      on_saved=stop_at_seventh_block)
    assert len(list((tmp_path / "b" / "s.work" / "blocks").glob("*.npz"))) == 7
    assert not (tmp_path / "b" / "s.manifest.json").exists()
    res = segment_slide(tmp_path / "s.ome.tif", MapsFromImage(), tmp_path / "b", opts, progress=False)
    assert res["work_grid"]["blocks_resumed"] == 7
    assert res["work_grid"]["tiles_through_model"] < ref["work_grid"]["tiles_through_model"]
    for name in ("s.geojson.gz", "s.parquet", "s.tissue.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    np.testing.assert_array_equal(read_label_zarr(tmp_path / "a" / "s.ome.zarr"),
                                  read_label_zarr(tmp_path / "b" / "s.ome.zarr"))
    # processed in narrow column bands (tile maps held per band, not per slide width): same output
    import pathosam.wsi.pipeline as pipeline

    monkey = pytest.MonkeyPatch()
    monkey.setattr(pipeline, "BAND_COLUMNS", 2)
    try:
        banded = segment_slide(tmp_path / "s.ome.tif", MapsFromImage(), tmp_path / "c", opts, progress=False)
    finally:
        monkey.undo()
    assert banded["work_grid"]["blocks_computed"] > ref["work_grid"]["blocks_computed"]  # band edges twice
    # ... but loaded from the work folder the second time, not put through the model again
    assert banded["work_grid"]["tiles_through_model"] == ref["work_grid"]["tiles_through_model"]
    assert banded["work_grid"]["tiles_loaded"] > 0
    for name in ("s.geojson.gz", "s.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "c" / name).read_bytes(), name
    # a finished slide is skipped
    again = segment_slide(tmp_path / "s.ome.tif", MapsFromImage(), tmp_path / "b", opts, progress=False)
    assert again.get("skipped") is True


def test_real_slide_rescaled_with_tissue_mask(data_dir, tmp_path):
    svs = data_dir / "wsi" / "CMU-1-Small-Region.svs"
    if not svs.is_file():
        pytest.skip("CMU-1-Small-Region.svs not present")
    opts = SlideOptions(target_mpp=0.499 * 1.5, roi=(0, 1200, 1200, 1500), tile_shape=(256, 256), halo=(64, 64),
                        ais=AISParams(foreground_threshold=0.3))
    man = segment_slide(svs, MapsFromImage(), tmp_path, opts, progress=False)
    labels, features, table, manifest = load_outputs(tmp_path, "CMU-1-Small-Region")
    assert labels.shape == (1000, 800) and manifest["work_grid"]["scale"] == pytest.approx(2 / 3)
    assert 0 < man["work_grid"]["tiles_with_tissue"] < man["work_grid"]["tiles"]  # glass tiles skipped
    assert man["work_grid"]["tiles_through_model"] == man["work_grid"]["tiles_with_tissue"]
    assert len(features) == len(table) == labels.max() > 0
    # coordinates are level-0 slide pixels inside the ROI
    assert table["centroid_x"].between(0, 1200).all() and table["centroid_y"].between(1200, 2700).all()
    for f in features[:50]:
        assert shapely.geometry.shape(f["geometry"]).is_valid
    with pytest.raises(ValueError, match="ROI"):
        segment_slide(svs, MapsFromImage(), tmp_path / "x", SlideOptions(roi=(2000, 0, 500, 100)), progress=False)
    # small model tiles in blocks of 2 x 2: the glass tiles of a block with tissue are skipped too
    small = segment_slide(svs, MapsFromImage(), tmp_path / "small", replace(opts, tile_shape=(64, 64), halo=(16, 16)),
                          progress=False)["work_grid"]
    assert small["block_shape"] == [128, 128] and small["blocks"] < small["tiles"]
    assert 0 < small["tiles_through_model"] == small["tiles_with_tissue"] < small["tiles"]


def test_dask_two_workers_equal_single_process(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    image, _ = disk_image((520, 640), seed=5, n=90)
    write_pyramid(tmp_path / "d.ome.tif", image, 0.25)
    opts = SlideOptions(tile_shape=(128, 128), halo=(32, 32), tissue=False, classes=True)
    segment_slide(tmp_path / "d.ome.tif", MapsFromImage(), tmp_path / "single", opts, progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        man = segment_slide(tmp_path / "d.ome.tif", MapsFromImage(), tmp_path / "dask", opts, progress=False,
                            client=client, rows_per_task=2)
    assert man["work_grid"]["dask_tasks"] >= 2
    for name in ("d.geojson.gz", "d.parquet"):
        assert (tmp_path / "single" / name).read_bytes() == (tmp_path / "dask" / name).read_bytes(), name
    np.testing.assert_array_equal(read_label_zarr(tmp_path / "single" / "d.ome.zarr"),
                                  read_label_zarr(tmp_path / "dask" / "d.ome.zarr"))


def test_cli_slide_end_to_end_tiny_model_on_a_pyramid_of_the_real_slide(data_dir, tiny_files, tmp_path, capsys):
    from pathosam.cli import main
    from pathosam.wsi import open_slide

    svs = data_dir / "wsi" / "CMU-1-Small-Region.svs"
    if not svs.is_file():
        pytest.skip("CMU-1-Small-Region.svs not present")
    with open_slide(svs) as s:
        full = s.read(0, 0, *s.shape)
    write_pyramid(tmp_path / "cmu.ome.tif", full, 0.499)
    args = ["segment", str(tmp_path / "cmu.ome.tif"), "-o", str(tmp_path / "out"), "-c", str(tiny_files["tiny_sam.pt"]),
            "--decoder", str(tiny_files["tiny_sam_decoder.pt"]), "-d", "cpu", "--target-mpp", "0.499",
            "--roi", "700", "1300", "400", "380", "--tile-shape", "256", "--foreground-threshold", "0.1",
            "--center-distance-threshold", "0.9", "--boundary-distance-threshold", "0.9", "-q"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "cmu.ome.tif:" in out and "(slide," in out and "segmented 1 of 1 images" in out
    labels, features, table, manifest = load_outputs(tmp_path / "out", "cmu")
    assert labels.shape == (380, 400) and manifest["model"]["name"] == "tiny_sam.pt"
    assert len(features) == len(table) == labels.max() > 0
    assert all(shapely.geometry.shape(f["geometry"]).is_valid for f in features)
    assert table["centroid_x"].between(700, 1100).all() and table["centroid_y"].between(1300, 1680).all()
    # the same command again: the finished slide is skipped
    assert main(args) == 0
    assert "already done" in capsys.readouterr().out
    # a slide without pixel size needs --mpp or --no-rescale
    tifffile.imwrite(tmp_path / "nompp.tif", full[:600, :600], tile=(256, 256), photometric="rgb")
    nompp = ["segment", str(tmp_path / "nompp.tif"), "-o", str(tmp_path / "o2"), "-c", str(tiny_files["tiny_sam.pt"]),
             "--decoder", str(tiny_files["tiny_sam_decoder.pt"]), "-d", "cpu", "-q"]
    from pathosam.wsi import is_slide

    if is_slide(tmp_path / "nompp.tif"):
        assert main(nompp) == 1 and "--mpp" in capsys.readouterr().err


def test_tta_slide_run_same_nuclei_for_an_equivariant_model_and_own_signature(tmp_path):
    from pathosam.wsi.pipeline import _signature
    from pathosam.wsi.slide import open_slide

    image, _ = disk_image((300, 400), seed=4, n=40)
    write_pyramid(tmp_path / "d.ome.tif", image, 0.5)
    base = dict(target_mpp=None, tile_shape=(128, 128), halo=(32, 32), tissue=False, ais=AISParams(min_size=5))
    segment_slide(tmp_path / "d.ome.tif", MapsFromImage(), tmp_path / "plain", SlideOptions(**base), progress=False)
    segment_slide(tmp_path / "d.ome.tif", MapsFromImage(), tmp_path / "tta", SlideOptions(**base, tta=True),
                  progress=False)
    plain, tta = (read_label_zarr(tmp_path / o / "d.ome.zarr") for o in ("plain", "tta"))
    np.testing.assert_array_equal(tta, plain)
    assert plain.max() == 40
    slide = open_slide(tmp_path / "d.ome.tif")
    sig_plain = _signature(slide, MapsFromImage(), SlideOptions(**base))
    sig_tta = _signature(slide, MapsFromImage(), SlideOptions(**base, tta=True))
    assert "tta" not in json.dumps(sig_plain) and sig_tta != sig_plain  # old runs stay resumable


def test_shape_seed_slide_run_and_signature(tmp_path):
    from pathosam.evaluation.metrics import mean_segmentation_accuracy
    from pathosam.wsi.pipeline import _signature
    from pathosam.wsi.slide import open_slide

    image, _ = disk_image((300, 400), seed=5, n=40)
    write_pyramid(tmp_path / "d.ome.tif", image, 0.5)
    base = dict(target_mpp=None, tile_shape=(128, 128), halo=(32, 32), tissue=False)
    opts = {seeds: SlideOptions(**base, ais=AISParams(min_size=5, seeds=seeds)) for seeds in ("distance", "shape")}
    for seeds, o in opts.items():
        segment_slide(tmp_path / "d.ome.tif", MapsFromImage(), tmp_path / seeds, o, progress=False)
    ref, shape = (read_label_zarr(tmp_path / seeds / "d.ome.zarr") for seeds in opts)
    # separate round disks: both seed rules find each of the 40 once, with (nearly) the same pixels
    assert ref.max() == shape.max() == 40
    assert mean_segmentation_accuracy(shape, ref) > 0.9  # measured 0.944
    slide = open_slide(tmp_path / "d.ome.tif")
    sig_ref, sig_shape = (_signature(slide, MapsFromImage(), o) for o in opts.values())
    assert "seed" not in json.dumps(sig_ref) and sig_shape != sig_ref  # earlier runs stay resumable
    assert sig_shape["options"]["ais"]["seeds"] == "shape"
