"""State-dict layouts of our modules equal the official SAM / micro-sam decoder layouts."""

from __future__ import annotations

import json

import pytest
import torch

from pathosam.models import SamConfig, build_sam, config_from_state_dict
from pathosam.models.unetr import UNETRDecoder


def _layout(module: torch.nn.Module) -> list[list]:
    return [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in module.state_dict().items()]


@pytest.fixture(scope="module")
def manifest(vectors):
    return json.loads((vectors / "state_shapes.json").read_text())


@pytest.mark.parametrize("arch", ["vit_b", "vit_l", "vit_h"])
def test_sam_presets_match_manifest(manifest, arch):
    with torch.device("meta"):
        sam = build_sam(arch)
    ref = manifest["sam"][arch]
    assert _layout(sam) == ref["keys"]
    assert sum(v.numel() for v in sam.state_dict().values()) == ref["n_elements"]


def test_custom_size_matches_tiny_manifest(manifest):
    with torch.device("meta"):
        sam = build_sam(SamConfig(64, 4, 4, (1, 3)))
    assert _layout(sam) == manifest["sam"]["tiny"]["keys"]


@pytest.mark.parametrize(
    "name,channels,transposed",
    [("transposed_3ch", 3, True), ("interp_3ch", 3, False), ("transposed_6ch", 6, True)],
)
def test_decoder_layouts_match_manifest(manifest, name, channels, transposed):
    with torch.device("meta"):
        dec = UNETRDecoder(channels, transposed)
    assert _layout(dec) == manifest["decoder"][name]["keys"]


@pytest.mark.parametrize("arch", ["vit_b", "vit_l", "vit_h"])
def test_architecture_recovered_from_weights(arch):
    with torch.device("meta"):
        sam = build_sam(arch)
    cfg = config_from_state_dict(sam.state_dict())
    assert cfg == sam.config


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="unknown SAM architecture"):
        build_sam("vit_x")
