"""AISParams / AMGParams as the one source of post-processing defaults: the CLI options, the
per-model defaults on every loading path, the evaluation grid, the conversion rule."""

from __future__ import annotations

from dataclasses import asdict, fields

import numpy as np
import pytest

from pathosam import registry
from pathosam.instances.params import AISParams, AMGParams


def test_cli_options_are_generated_from_the_fields():
    from pathosam.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["segment", "x.tif", "-o", "out"])
    for cls in (AISParams, AMGParams):
        for f in fields(cls):
            assert getattr(args, f.name) is None, f.name  # not given: the model's / the library's default
    args = parser.parse_args(["segment", "x.tif", "-o", "out", "--seeds", "shape", "--min-size", "7",
                              "--crop-nms-thresh", "0.5"])
    assert (args.seeds, args.min_size, args.crop_nms_thresh) == ("shape", 7, 0.5)
    with pytest.raises(SystemExit):
        parser.parse_args(["segment", "x.tif", "-o", "out", "--seeds", "blob"])
    args = parser.parse_args(["evaluate", "--data", "d", "-o", "o"])
    assert args.points_per_side == AMGParams().points_per_side


def test_ais_from_maps_defaults_and_params_object():
    from pathosam.instances import ais_from_maps

    rng = np.random.default_rng(0)
    maps = rng.random((3, 48, 48)).astype(np.float32)
    p = AISParams(min_size=5, seeds="shape")
    np.testing.assert_array_equal(ais_from_maps(maps, params=p), ais_from_maps(maps, min_size=5, seeds="shape"))
    # an explicit argument overrides the params object
    np.testing.assert_array_equal(ais_from_maps(maps, params=p, min_size=0), ais_from_maps(maps, seeds="shape"))
    with pytest.raises(ValueError, match="seeds"):
        ais_from_maps(maps, seeds="blob")


def test_settings_equal_single_calls_for_shape_seeds():
    from pathosam.instances import ais_from_maps
    from pathosam.instances.ais import ais_from_maps_settings

    rng = np.random.default_rng(1)
    maps = rng.random((3, 40, 50)).astype(np.float32)
    settings = [AISParams(seeds="shape", seed_dynamic=d, min_size=m) for d in (1.0, 2.0) for m in (0, 10)]
    for p, seg in ais_from_maps_settings(maps, settings):
        np.testing.assert_array_equal(seg, ais_from_maps(maps, params=p))


def test_grid_of_a_shape_seed_model_searches_its_seed_parameters():
    from pathosam.evaluation.grid_search import AIS_GRID, AIS_SHAPE_GRID, ais_grid_labels, default_grid

    assert default_grid("ais") == AIS_GRID
    grid = default_grid("ais", "shape", quick=True)
    assert {"seed_dynamic", "seed_center_weight", "min_size"} <= set(grid) and grid["seeds"] == ("shape",)
    assert 100 in AIS_SHAPE_GRID["min_size"] and AISParams().seed_dynamic in AIS_SHAPE_GRID["seed_dynamic"]
    maps = np.random.default_rng(2).random((3, 32, 32)).astype(np.float32)
    base = registry.ais_defaults(registry.get(registry.DEFAULT_MODEL))
    params = [p for p, _ in ais_grid_labels(maps, {"min_size": (0, 50)}, base)]
    assert [p["seeds"] for p in params] == ["shape", "shape"] and [p["min_size"] for p in params] == [0, 50]


def test_registered_file_loaded_by_path_gets_its_defaults():
    path = registry.path(registry.DEFAULT_MODEL)
    entry = registry.entry_of_file(registry.file_hash(path))
    assert entry is not None and entry.name == registry.DEFAULT_MODEL
    assert registry.ais_defaults(entry) == dict(entry.ais_defaults) and registry.entry_of_file("0" * 32) is None


def test_embedded_model_by_file_path_has_the_registry_defaults():
    import pathosam

    model = pathosam.load_model(str(registry.path(registry.DEFAULT_MODEL)), device="cpu", progress=False)
    assert model.ais_defaults == dict(registry.get(registry.DEFAULT_MODEL).ais_defaults)


def test_one_conversion_rule_for_8_bit_values_in_other_dtypes():
    from pathosam.image import to_rgb_uint8

    img = np.full((4, 4, 3), 200, np.uint16)
    img[0, 0] = 10
    np.testing.assert_array_equal(to_rgb_uint8(img), img.astype(np.uint8))  # cast, not stretched
    assert to_rgb_uint8(img.astype(np.float64)).max() == 200
    assert to_rgb_uint8(img * 2).max() == 255  # beyond 8 bits: min-max scaled


def test_amg_params_validate():
    with pytest.raises(ValueError, match="points_per_side"):
        AMGParams(points_per_side=0)
    assert asdict(AMGParams())["pred_iou_thresh"] == AMGParams().pred_iou_thresh
