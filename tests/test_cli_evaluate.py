"""``pathosam evaluate`` end to end with the tiny reference model on the shared data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pathosam.cli import main


def _model_args(tiny_files) -> list[str]:
    return ["--checkpoint", str(tiny_files["tiny_sam.pt"]), "--decoder", str(tiny_files["tiny_sam_decoder.pt"]),
            "--device", "cpu", "-q"]


def test_evaluate_ais_on_monuseg_with_grid_search(data_dir, tiny_files, tmp_path, capsys):
    out = tmp_path / "report"
    code = main(["evaluate", "--data", str(data_dir / "monuseg"), "--max-images", "2", "--no-tiling",
                 "--val-data", str(data_dir / "gbm40"), "--grid", "quick", "--overlays", "1", "-o", str(out),
                 *_model_args(tiny_files)])
    assert code == 0
    assert "ais: 2 images, mSA" in capsys.readouterr().out
    per_image = pd.read_csv(out / "per_image.csv")
    assert len(per_image) == 2 and per_image["mSA"].between(0, 1).all() and (per_image["n_gt"] > 100).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_images"] == 2 and summary["mSA"] == pytest.approx(per_image["mSA"].mean())
    grid = pd.read_csv(out / "grid_search.csv")
    assert len(grid) == 18  # the quick AIS grid: 3 x 3 x 1 x 2 settings
    best = grid.loc[grid["mSA"].idxmax()]
    assert summary["params"]["center_distance_threshold"] == best["center_distance_threshold"]
    for png in [out / "thresholds.png", *sorted((out / "overlays").glob("*.png"))]:
        with Image.open(png) as im:
            assert im.format == "PNG" and min(im.size) > 100
    assert len(list((out / "overlays").glob("*.png"))) == 1


def test_evaluate_interactive_point(data_dir, tiny_files, tmp_path, capsys):
    out = tmp_path / "inter"
    code = main(["evaluate", "--data", str(data_dir / "gbm40"), "--max-images", "1", "--mode", "interactive-point",
                 "--iterations", "3", "--max-objects", "4", "-o", str(out), *_model_args(tiny_files)])
    assert code == 0
    assert "interactive-point: 1 images" in capsys.readouterr().out
    rows = pd.read_csv(out / "iterative_prompts_start_point.csv")
    assert list(rows.columns) == ["iteration", "mSA", "SA50", "SA75"] and list(rows["iteration"]) == [0, 1, 2]
    assert np.isfinite(rows[["mSA", "SA50", "SA75"]].to_numpy()).all()
    with Image.open(out / "iterative_prompts_start_point.png") as im:
        assert im.format == "PNG"


def test_evaluate_usage_errors(data_dir, tmp_path, capsys):
    code = main(["evaluate", "--data", str(data_dir / "gbm40"), "--mode", "interactive-box", "--val-data",
                 str(data_dir / "gbm40"), "-o", str(tmp_path)])
    assert code == 2 and "grid search" in capsys.readouterr().err
    code = main(["evaluate", "--data", str(tmp_path / "missing"), "-o", str(tmp_path)])
    assert code != 0


def test_evaluate_ais_with_tta_on_the_embedded_model(data_dir, tmp_path, capsys):
    runs = {}
    for tta in (False, True):
        out = tmp_path / f"tta{tta}"
        args = ["evaluate", "--data", str(data_dir / "gbm40"), "--max-images", "1", "--overlays", "0", "-o", str(out),
                "--model", "pathosam_small", "--device", "cpu", "-q"]
        assert main(args + (["--tta"] if tta else [])) == 0
        runs[tta] = json.loads((out / "summary.json").read_text())
    assert runs[True]["tta"] is True and "tta" not in runs[False]
    assert 0.3 < runs[True]["mSA"] < 1 and runs[True]["mSA"] != runs[False]["mSA"]  # other maps, other nuclei
    code = main(["evaluate", "--data", str(data_dir / "gbm40"), "--mode", "amg", "--tta", "-o", str(tmp_path / "x")])
    assert code == 2 and "--tta" in capsys.readouterr().err
