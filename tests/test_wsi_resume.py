"""Resuming a killed or interrupted slide run redoes at most the model batch in flight.

"Recomputed" tiles = tiles that entered the model in the stopped run and again on resume =
started before the stop + through the model on resume - through the model in one uninterrupted
run. Bound (pathosam.wsi.pipeline): SIGKILL <= batch_size; KeyboardInterrupt 0.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pathosam.io.omezarr import read_label_zarr
from pathosam.wsi.pipeline import SlideOptions, segment_slide

from .test_segment import MapsFromImage, disk_image
from .test_wsi_pipeline import write_pyramid

ROOT = Path(__file__).resolve().parents[1]
BATCH = 2
OPTS = SlideOptions(tile_shape=(128, 128), halo=(32, 32), tissue=False, classes=True, batch_size=BATCH)


class CountingMaps(MapsFromImage):
    """:class:`MapsFromImage` that counts the tiles entering the model (optionally slowly, and
    written to a file after each batch starts, for a parent process to watch)."""

    def __init__(self, delay: float = 0.0, progress_file: Path | None = None) -> None:
        super().__init__()
        self.started, self.delay, self.progress_file = 0, delay, progress_file

    def encode(self, batch):
        self.started += len(batch)
        if self.progress_file is not None:
            tmp = self.progress_file.with_suffix(".tmp")
            tmp.write_text(str(self.started))
            os.replace(tmp, self.progress_file)
        time.sleep(self.delay)
        return super().encode(batch)


@pytest.fixture(scope="module")
def slide_and_reference(tmp_path_factory):
    """A 600 x 760 px synthetic slide (5 x 6 tiles of 128) and its uninterrupted run."""
    root = tmp_path_factory.mktemp("resume")
    image, _ = disk_image((600, 760), seed=6, n=90)
    write_pyramid(root / "s.ome.tif", image, 0.25)
    model = CountingMaps()
    man = segment_slide(root / "s.ome.tif", model, root / "ref", OPTS, progress=False)
    assert model.started == man["work_grid"]["tiles_through_model"] == 30
    return root / "s.ome.tif", root / "ref", man


def assert_same_outputs(a: Path, b: Path) -> None:
    for name in ("s.geojson.gz", "s.parquet", "s.tissue.png"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    np.testing.assert_array_equal(read_label_zarr(a / "s.ome.zarr"), read_label_zarr(b / "s.ome.zarr"))


def interrupt_after_blocks(n: int):
    """An ``on_saved`` callback raising KeyboardInterrupt (in the main thread, as Ctrl-C does)
    right after the ``n``-th block is saved."""
    blocks = []

    def on_saved(kind: str, index: int) -> None:
        if kind == "block":
            blocks.append(index)
            if len(blocks) == n:
                raise KeyboardInterrupt

    return on_saved


def test_keyboard_interrupt_saves_the_batch_in_flight_and_resume_recomputes_nothing(slide_and_reference, tmp_path):
    slide, ref_dir, ref = slide_and_reference
    first = CountingMaps()
    with pytest.raises(KeyboardInterrupt):
        segment_slide(slide, first, tmp_path, OPTS, progress=False, on_saved=interrupt_after_blocks(10))
    work = tmp_path / "s.work"
    assert len(list((work / "blocks").glob("*.npz"))) == 10
    # every tile that entered the model has its maps saved, or all blocks around it are saved
    assert first.started > 10 and list((work / "maps").glob("*.npz"))
    assert not list(work.rglob("*.partial*"))
    again = CountingMaps()
    man = segment_slide(slide, again, tmp_path, OPTS, progress=False)
    g = man["work_grid"]
    assert g["blocks_resumed"] == 10 and g["blocks_processed"] == 30 - 10
    assert again.started == g["tiles_through_model"]
    assert first.started + again.started - ref["work_grid"]["tiles_through_model"] == 0
    assert g["tiles_loaded"] > 0
    assert_same_outputs(ref_dir, tmp_path)
    assert not work.exists()


def test_sigkill_mid_run_then_resume_recomputes_at_most_one_batch(slide_and_reference, tmp_path):
    slide, ref_dir, ref = slide_and_reference
    total = ref["work_grid"]["tiles_through_model"]
    progress = tmp_path / "started"
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1])\n"
        "from tests.test_wsi_resume import CountingMaps, OPTS\n"
        "from pathosam.wsi.pipeline import segment_slide\n"
        "segment_slide(sys.argv[2], CountingMaps(0.1, Path(sys.argv[4])), sys.argv[3], OPTS, progress=False)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code, str(ROOT), str(slide), str(tmp_path), str(progress)])
    started, deadline = 0, time.monotonic() + 120
    while started < total // 2 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
        try:
            started = int(progress.read_text())
        except (FileNotFoundError, ValueError):
            pass
    child.send_signal(signal.SIGKILL)
    assert child.wait(30) == -signal.SIGKILL, "the run finished before it could be killed"
    started = int(progress.read_text())  # final count, after the kill
    assert total // 2 <= started < total
    maps_left = len(list((tmp_path / "s.work" / "maps").glob("*.npz")))
    assert maps_left > 0
    again = CountingMaps()
    man = segment_slide(slide, again, tmp_path, OPTS, progress=False)
    recomputed = started + again.started - total
    assert 0 <= recomputed <= BATCH, (started, again.started, total)
    assert man["work_grid"]["tiles_loaded"] == maps_left
    assert man["work_grid"]["blocks_resumed"] > 0
    assert_same_outputs(ref_dir, tmp_path)


def test_damaged_and_partial_files_are_redone_and_old_work_folders_resume(slide_and_reference, tmp_path):
    slide, ref_dir, ref = slide_and_reference
    for out, damage in ((tmp_path / "damaged", True), (tmp_path / "old", False)):
        first = CountingMaps()
        with pytest.raises(KeyboardInterrupt):
            segment_slide(slide, first, out, OPTS, progress=False, on_saved=interrupt_after_blocks(12))
        work = out / "s.work"
        maps = sorted((work / "maps").glob("*.npz"))
        if damage:  # files cut short under their final names (a machine crash), stale temporaries
            block = work / "blocks" / "3.npz"
            block.write_bytes(block.read_bytes()[:100])
            maps[0].write_bytes(maps[0].read_bytes()[:-10])
            (work / "blocks" / "40.123-456.partial.npz").write_bytes(b"half")
            (work / "maps" / "47.123-456.partial.npz").write_bytes(b"half")
        else:  # a work folder of a version that saved no maps
            for f in maps:
                f.unlink()
            (work / "maps").rmdir()
        again = CountingMaps()
        man = segment_slide(slide, again, out, OPTS, progress=False)
        g = man["work_grid"]
        assert g["blocks_resumed"] == (11 if damage else 12)
        assert g["tiles_loaded"] == (len(maps) - 1 if damage else 0)
        recomputed = first.started + again.started - ref["work_grid"]["tiles_through_model"]
        if damage:  # the damaged tile, and block 3's tiles whose maps were dropped once it was saved
            assert 1 <= recomputed <= 9
        else:
            assert recomputed > 0
        assert_same_outputs(ref_dir, out)


def test_slide_outputs_are_replaced_as_one_set(slide_and_reference, tmp_path, monkeypatch):
    """A new run (other settings) into a folder with an old set: if writing the outputs fails, the
    old set and its manifest stay whole and nothing is staged; on success all five are new."""
    import json
    import shutil

    import pathosam.io.geojson as geojson

    slide, ref, _ = slide_and_reference
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert sorted(before) == ["s.geojson.gz", "s.manifest.json", "s.parquet", "s.tissue.png"]
    other = SlideOptions(tile_shape=(128, 128), halo=(32, 32), tissue=False, classes=False, batch_size=BATCH)

    def failing(path, features, **kwargs):
        next(iter(features))  # some rows merged and written to the staged zarr / parquet
        raise OSError("disk full")

    monkeypatch.setattr(geojson, "write_features", failing)
    with pytest.raises(OSError, match="disk full"):
        segment_slide(slide, CountingMaps(), out, other, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not [p for p in out.iterdir() if "partial" in p.name]
    np.testing.assert_array_equal(read_label_zarr(out / "s.ome.zarr"), read_label_zarr(ref / "s.ome.zarr"))
    monkeypatch.undo()
    man = segment_slide(slide, CountingMaps(), out, other, progress=False)
    assert json.loads((out / "s.manifest.json").read_text())["signature"] == man["signature"]
    assert (out / "s.parquet").read_bytes() != before["s.parquet"]  # no class columns now
