"""Class schemes of semantic decoders: PanNuke (6 maps) and CoNSeP (5 maps) through the model,
per-nucleus classes, tables and GeoJSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import pathosam
from pathosam.semantic import CONSEP, PANNUKE, class_features, class_scheme, classes_from_sums, nucleus_classes


def test_scheme_lookup():
    assert class_scheme(6) is PANNUKE and class_scheme(5, "consep") is CONSEP
    custom = class_scheme(4)
    assert custom.name == "custom" and custom.names == ("background", "class1", "class2", "class3")
    with pytest.raises(ValueError, match="class scheme 'consep' has 5 classes .* the semantic decoder 6"):
        class_scheme(6, "consep")
    with pytest.raises(ValueError, match="unknown class scheme 'lizard'"):
        class_scheme(7, "lizard")
    # the names say their scheme; PanNuke's and CoNSeP's never collide
    assert not set(PANNUKE.names[1:]) & set(CONSEP.names[1:])
    assert all("(CoNSeP)" in n for n in CONSEP.names[1:])


def test_five_class_maps_give_per_nucleus_classes():
    labels = np.zeros((6, 8), np.uint32)
    labels[:, :4], labels[:, 4:] = 1, 2
    maps = np.zeros((5, 6, 8), np.float32)
    maps[0] = 0.1
    maps[3, :, :4] = 0.9          # nucleus 1: class 3 everywhere
    maps[4, :, 4:] = 0.8          # nucleus 2: class 4 on 3 of 4 columns, class 2 on one
    maps[4, :, 7], maps[2, :, 7] = 0.0, 0.7
    classes, probs = nucleus_classes(labels, maps)
    assert classes.tolist() == [0, 3, 4]
    assert probs[1] == pytest.approx(1.0) and 0.5 < probs[2] < 1.0
    assert class_features(maps).shape == (9, 6, 8)
    with pytest.raises(ValueError, match=r"\(N, 2C - 1\)"):
        classes_from_sums(np.zeros((3, 10)))


@pytest.fixture(scope="module")
def consep_files(tmp_path_factory):
    """A tiny random model file and a 5-class semantic decoder file (an untrained class head)."""
    from pathosam.models.unetr import UNETRDecoder
    from pathosam.training.models import new_model

    out = tmp_path_factory.mktemp("consep_head")
    m = new_model(32, 2, img_size=128, decoder_features=8, seed=1)
    torch.save({"model_state": m.sam.state_dict(), "decoder_state": m.decoder.state_dict()}, out / "model.pt")
    torch.manual_seed(2)
    head = UNETRDecoder(5, True, embed_dim=m.sam.image_encoder.out_chans, features=8)
    torch.save(head.state_dict(), out / "head.pt")
    return out / "model.pt", out / "head.pt"


def test_model_scheme_from_load_model(consep_files):
    model_file, head = consep_files
    m = pathosam.load_model(model_file, semantic_decoder=head, class_scheme="consep", device="cpu")
    assert m.class_scheme is CONSEP
    plain = pathosam.load_model(model_file, semantic_decoder=head, device="cpu")
    assert plain.class_scheme.name == "custom"  # 5 maps, no scheme named: generic names
    assert pathosam.load_model(model_file, device="cpu").class_scheme is None
    with pytest.raises(ValueError, match=r"head\.pt: class scheme 'pannuke' has 6 classes"):
        pathosam.load_model(model_file, semantic_decoder=head, class_scheme="pannuke", device="cpu")


def test_segment_writes_consep_class_names(consep_files, tmp_path):
    from pathosam.automatic import save_segmentation

    model_file, head = consep_files
    m = pathosam.load_model(model_file, semantic_decoder=head, class_scheme="consep", device="cpu")
    image = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    res = pathosam.segment_nuclei(image, m, classes=True, progress=False, min_size=0,
                                  foreground_threshold=0.0)  # random weights: call everything foreground
    assert res.class_names == CONSEP.id_names
    assert res.n_objects > 0 and res.classes.shape == (res.n_objects + 1,)
    table = res.table()
    assert set(table["class_name"]) <= set(CONSEP.names[1:]) | {""}
    save_segmentation(res, tmp_path, "tile", formats=("geojson",))
    feats = json.loads((tmp_path / "tile.geojson").read_text())["features"]
    named = [f["properties"]["classification"] for f in feats if "classification" in f["properties"]]
    assert named and {c["name"] for c in named} <= set(CONSEP.names[1:])
    colours = {"other (CoNSeP)": [160, 160, 160], "inflammatory (CoNSeP)": [0, 255, 0],
               "epithelial (CoNSeP)": [255, 165, 0], "spindle-shaped (CoNSeP)": [0, 0, 255]}
    assert all(c["color"] == colours[c["name"]] for c in named)
