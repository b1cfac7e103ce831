"""Bad input never ends a batch: a seeded corpus of broken files of every format we read, the
per-file boundary of `pathosam segment`, output folders checked before the work, and an image's
outputs written as one set."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from pathosam.automatic import save_segmentation, segment_nuclei
from pathosam.cli import main
from pathosam.image import ImageReadError, check_image, read_image
from pathosam.io import atomic_file_set, prepare_output_dir
from pathosam.wsi import open_slide

from .broken_files import valid_images, write_corpus
from .conftest import DATA


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    return write_corpus(folder, seed=0, svs=DATA / "wsi" / "CMU-1-Small-Region.svs")


def _one_line_naming(err: Exception, path: Path) -> None:
    msg = str(err)
    assert msg.startswith(str(path)), msg
    assert "\n" not in msg, msg


def test_read_image_corpus(corpus):
    """Every broken image raises ImageReadError naming the file (never zlib.error, IndexError,
    DecompressionBombError, ...), or decodes to a valid image; valid files read exactly."""
    t0 = time.perf_counter()
    refused = set()
    for path in corpus["images"]:
        try:
            image = read_image(path)
        except ImageReadError as err:
            _one_line_naming(err, path)
            refused.add(path.name)
        else:
            check_image(image, path.name)
    assert time.perf_counter() - t0 < 30  # the bombs are refused from their headers, not decoded
    # the cases that must be refused (not zero-filled or half-decoded)
    must = [p.name for p in corpus["images"] if "_trunc" in p.name]
    lossless_ok = {"image_trunc28832.png"}  # a PNG missing only the last byte of its end chunk decodes fully
    assert set(must) - lossless_ok <= refused
    for name in ("bomb.png", "bomb.jpg", "bomb_small.tif", "text_named.png", "html_named.tif",
                 "zlib_flip0.tif", "tiled_flip0.tif", "image_header.png", "raw_header.tif"):
        assert name in refused, name
    for name in ("bomb.png", "bomb.jpg"):
        with pytest.raises(ImageReadError, match="Mpx"):
            read_image(next(p for p in corpus["images"] if p.name == name))


def test_wrong_suffix_and_valid_files_read(corpus):
    originals = valid_images(np.random.default_rng(0))
    by_name = {p.name: p for p in corpus["images"] + corpus["valid"]}
    png = read_image(by_name["valid_image.png"])
    for name in ("valid_raw.tif", "valid_zlib.tif", "valid_tiled.tif", "png_named.tif", "tiff_named.jpg"):
        np.testing.assert_array_equal(read_image(by_name[name]), png)  # content, not suffix, decides
    assert read_image(by_name["jpeg_named.png"]).shape == png.shape
    assert len(originals) == 5


def test_open_slide_corpus(corpus):
    """Broken slides fail at open or at the first region read, with one line naming the file."""
    failed = set()
    for path in corpus["slides"]:
        try:
            with open_slide(path) as s:
                s.thumbnail(256)
                s.read(0, 0, *s.shape)
        except ValueError as err:  # ImageReadError / SlideReadError are ValueErrors
            _one_line_naming(err, path)
            failed.add(path.name)
    names = {p.name for p in corpus["slides"]}
    assert {"slide_bomb.tif", "pyramid_badtile.ome.tif", "pyramid_header.ome.tif", "pyramid_trunc8.ome.tif"} <= failed
    assert {n for n in names if "_trunc" in n and n.startswith("pyramid") and "1018252" not in n} <= failed
    with pytest.raises(ValueError, match="region at row 0, col 0"):
        with open_slide(next(p for p in corpus["slides"] if p.name == "pyramid_badtile.ome.tif")) as s:
            s.read(0, 0, 256, 256)


def test_segment_batch_goes_on_past_broken_files(corpus, tmp_path, capsys):
    """`pathosam segment BROKEN... GOOD -o out`: one line per broken file, the good file written,
    no output of a broken file, exit status 1, no traceback."""
    by_name = {p.name: p for p in corpus["images"] + corpus["slides"] + corpus["valid"]}
    broken = ["zlib_trunc18435.tif", "zlib_flip0.tif", "bomb.png", "image_trunc8.jpg", "image_trunc7208.png",
              "text_named.png", "raw_trunc8.tif", "slide_bomb.tif", "pyramid_trunc254563.ome.tif",
              "pyramid_badtile.ome.tif"]
    broken += [n for n in ("cmu_flip1.svs", "cmu_trunc484738.svs") if n in by_name]
    good = "valid_image.png"
    out = tmp_path / "out"
    args = [str(by_name[n]) for n in broken[:5]] + [str(by_name[good])] + [str(by_name[n]) for n in broken[5:]]
    code = main(["segment", *args, "-o", str(out), "-q", "--no-tissue-mask"])
    err = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in err.err + err.out
    lines = [ln for ln in err.err.splitlines() if ln.startswith("pathosam: error:")]
    assert len(lines) == len(broken), err.err
    for name in broken:
        assert sum(str(by_name[name]) in ln for ln in lines) == 1, (name, err.err)
    assert f"segmented 1 of {len(broken) + 1} images" in err.out
    written = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert [w for w in written if w.startswith("valid_image.")] == [
        "valid_image.csv", "valid_image.geojson", "valid_image.parquet", "valid_image.tif"]
    stems = {n.split(".")[0] for n in broken}
    assert not [w for w in written if w.split(".")[0] in stems and not w.endswith((".work", ".tissue.png"))
                and "manifest" not in w], written


@pytest.mark.parametrize("case", ["file", "under_file", "not_writable"])
def test_output_dir_checked_before_the_work(case, tmp_path, capsys, corpus):
    good = next(p for p in corpus["valid"] if p.name == "valid_image.png")
    if case == "file":
        out = tmp_path / "out"
        out.write_text("x")
        expected = "exists and is not a directory"
    elif case == "under_file":
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "sub" / "out"
        expected = "is a file"
    else:
        out = Path("/sys/pathosam-test-out")
        try:
            out.mkdir()
        except OSError:
            pass
        else:  # pragma: no cover - a writable /sys: no read-only place to test with
            out.rmdir()
            pytest.skip("/sys is writable here")
        expected = "not writable"
    t0 = time.perf_counter()
    code = main(["segment", str(good), "-o", str(out), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and str(out) in err, err
    assert "model:" not in err and "Traceback" not in err  # refused before the model was loaded
    assert time.perf_counter() - t0 < 5
    with pytest.raises(OSError, match=expected):
        prepare_output_dir(out)


def test_prepare_output_dir_creates(tmp_path):
    out = prepare_output_dir(tmp_path / "a" / "b")
    assert out.is_dir() and list(out.iterdir()) == []


def test_file_set_all_or_nothing(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    for n in ("x.tif", "x.csv", "x.geojson"):
        (d / n).write_text(f"old {n}")
    with pytest.raises(RuntimeError), atomic_file_set(d, ["x.tif", "x.csv"], replaces=["x.tif", "x.csv"]) as tmp:
        (tmp / "x.tif").write_text("new")
        raise RuntimeError("the csv writer failed")
    assert {p.name: p.read_text() for p in d.iterdir()} == {n: f"old {n}" for n in ("x.tif", "x.csv", "x.geojson")}
    with pytest.raises(KeyboardInterrupt), atomic_file_set(d, ["x.tif"]) as tmp:
        (tmp / "x.tif").write_text("new")
        raise KeyboardInterrupt
    assert (d / "x.tif").read_text() == "old x.tif"
    with pytest.raises(FileNotFoundError, match="x.csv"), atomic_file_set(d, ["x.tif", "x.csv"]) as tmp:
        (tmp / "x.tif").write_text("new")  # the csv was never written
    assert (d / "x.tif").read_text() == "old x.tif"
    with atomic_file_set(d, ["x.tif"], replaces=["x.tif", "x.csv", "x.geojson"]) as tmp:
        (tmp / "x.tif").write_text("new")
    assert {p.name: p.read_text() for p in d.iterdir()} == {"x.tif": "new"}  # no stale csv / geojson


def test_rerun_into_old_folder_never_mixes(tmp_path, monkeypatch):
    """A format that fails to write leaves the old set whole; a run with fewer formats removes
    the image's outputs of the formats it did not write."""
    import pathosam
    import pathosam.io as pio

    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    model = pathosam.load_model("pathosam_small", device="cpu")
    result = segment_nuclei(image, model, tile_shape=None)
    out = tmp_path / "out"
    save_segmentation(result, out, "im")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["im.csv", "im.geojson", "im.parquet", "im.tif"]

    def broken_table(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pio, "write_table", broken_table)
    with pytest.raises(OSError, match="disk full"):
        save_segmentation(result, out, "im")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # all old, nothing staged left
    monkeypatch.undo()
    save_segmentation(result, out, "im", formats=("tif", "geojson.gz"))
    assert sorted(p.name for p in out.iterdir()) == ["im.geojson.gz", "im.tif"]


@pytest.mark.parametrize("command", ["evaluate", "train", "embed"])
def test_other_commands_check_their_output_first(command, tmp_path, capsys, corpus, data_dir):
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "out"
    good = next(p for p in corpus["valid"] if p.name == "valid_image.png")
    argv = {"evaluate": ["evaluate", "--data", str(data_dir / "gbm40"), "-o", str(out), "-q"],
            "train": ["train", "--data", str(data_dir / "gbm40"), "--out", str(out), "-q"],
            "embed": ["embed", str(good), "-o", str(out / "emb.zarr"), "-q"]}[command]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "is a file" in err and "Traceback" not in err, err


def test_image_pixel_size_gives_area_in_um2(tmp_path, corpus, capsys):
    """`pathosam segment` passes the image's pixel size (TIFF resolution, or --mpp) to the table."""
    import pandas as pd
    import tifffile

    from pathosam.image import pixel_size

    rgb = read_image(next(p for p in corpus["valid"] if p.name == "valid_image.png"))
    tif = tmp_path / "res.tif"
    tifffile.imwrite(tif, rgb, photometric="rgb", resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    assert pixel_size(tif) == pytest.approx(0.5)
    assert pixel_size(next(p for p in corpus["valid"] if p.name == "valid_image.png")) is None
    assert pixel_size(next(p for p in corpus["images"] if p.name == "raw_trunc8.tif")) is None
    out = tmp_path / "out"
    assert main(["segment", str(tif), "-o", str(out), "-q"]) == 0
    table = pd.read_parquet(out / "res.parquet")
    assert len(table) and np.allclose(table["area_um2"], table["area"] * 0.25)
    assert main(["segment", str(tif), "-o", str(out), "-q", "--mpp", "0.25"]) == 0
    assert np.allclose(pd.read_parquet(out / "res.parquet")["area_um2"], table["area"] * 0.0625)
