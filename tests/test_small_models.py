"""Small SAM-architecture models: another input size (256, 512) and a narrower UNETR decoder.

Everything is recovered from the weights: the input size from ``image_encoder.pos_embed``
(grid x 16), the window size from the windowed blocks' ``rel_pos_h``, the UNETR widths from the
decoder tensors. The whole pipeline (embeddings, decoder maps, AIS tiled and untiled, prompts,
AMG) runs at the model's geometry; the reference geometry (1024, 256 low-res) is unchanged.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pathosam
import pathosam.inference
from pathosam.embeddings import compute_embeddings
from pathosam.predictor import PathoSAM
from pathosam.models import SamConfig, build_sam, config_from_state_dict
from pathosam.models.checkpoint import read_checkpoint
from pathosam.models.unetr import UNETRDecoder, features_from_state_dict, unetr_features
from pathosam.interactive import logits_from_mask, segment_prompt

SMALL = dict(embed_dim=64, depth=2, num_heads=2, global_attn_indexes=(1,))


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere (the default init leaves pos_embed / rel_pos at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("weight") and p.dim() == 1:
                continue  # LayerNorm / BatchNorm scales stay 1
            p.copy_(torch.randn(p.shape, generator=g) * (0.02 if p.dim() > 1 else 0.01))


def small_model(img_size: int, features=16, window_size: int = 14, seed: int = 0) -> PathoSAM:
    sam = build_sam(SamConfig(**SMALL, img_size=img_size, window_size=window_size))
    _randomise(sam, seed)
    dec = UNETRDecoder(3, True, features=features)
    _randomise(dec, seed + 1)
    return PathoSAM(sam, dec, device="cpu", name=f"small_{img_size}")


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(3)
    img = rng.integers(120, 200, (300, 420, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:300, :420]
    for r, c in rng.integers(20, 280, (25, 2)):
        img[(yy - r) ** 2 + (xx - c * 1.4) ** 2 < 81] = (60, 30, 90)
    return img


@pytest.fixture(scope="module", params=[256, 512])
def saved(request, tmp_path_factory):
    """(model, its files in the released layout, the model loaded back from them)."""
    model = small_model(request.param)
    paths = model.save(tmp_path_factory.mktemp(f"small{request.param}") / "small.pt")
    loaded = pathosam.load_model(paths[0], decoder=paths[1], device="cpu")
    return model, paths, loaded


@pytest.fixture(scope="module")
def embs(saved, image):
    """Untiled and tiled (192 + 32 halo: 2 x 3 tiles) embeddings of ``image`` by the loaded model."""
    _, _, model = saved
    return (model.embed(image, progress=False),
            model.embed(image, tile_shape=(192, 192), halo=(32, 32), progress=False))


# ------------------------------------------------------------------------------ geometry
def test_reference_geometry_is_unchanged():
    cfg = SamConfig(64, 4, 4, (1, 3))
    assert (cfg.img_size, cfg.window_size) == (1024, 14)
    with torch.device("meta"):
        sam = build_sam(cfg)
        dec = UNETRDecoder()
    assert sam.img_size == 1024 and sam.embedding_shape == (256, 64, 64) and sam.mask_input_size == (256, 256)
    assert sam.prompt_encoder.image_embedding_size == (64, 64)
    assert sam.prompt_encoder.input_image_size == (1024, 1024)
    assert dec.features == (512, 256, 128, 64) == unetr_features(64)


@pytest.mark.parametrize("img_size,grid", [(256, 16), (512, 32), (1024, 64)])
def test_geometry_follows_the_input_size(img_size, grid):
    with torch.device("meta"):
        sam = build_sam(SamConfig(**SMALL, img_size=img_size))
    assert sam.img_size == img_size
    assert sam.embedding_shape == (256, grid, grid)
    assert sam.mask_input_size == (4 * grid, 4 * grid)
    assert sam.prompt_encoder.image_embedding_size == (grid, grid)
    assert sam.prompt_encoder.input_image_size == (img_size, img_size)
    assert tuple(sam.image_encoder.pos_embed.shape) == (1, grid, grid, 64)


@pytest.mark.parametrize("img_size,window", [(256, 14), (512, 14), (512, 16), (256, 8), (1024, 14)])
def test_config_recovered_from_weights(img_size, window):
    cfg = SamConfig(96, 4, 3, (1, 3), img_size=img_size, window_size=window)
    with torch.device("meta"):
        sam = build_sam(cfg)
    assert config_from_state_dict(sam.state_dict()) == cfg


def test_bad_input_size_is_refused():
    with pytest.raises(ValueError, match="multiple of 16"):
        SamConfig(**SMALL, img_size=500)


@pytest.mark.parametrize("features", [64, 32, 16, (256, 128, 64, 32), (64, 64, 32, 32)])
def test_unetr_widths_recovered_from_weights(features):
    with torch.device("meta"):
        dec = UNETRDecoder(3, True, features=features)
    assert features_from_state_dict(dec.state_dict()) == unetr_features(features) == dec.features


def test_unetr_output_is_16x_the_embedding_grid():
    dec = UNETRDecoder(3, False, features=8).eval()
    out = dec(torch.randn(1, 256, 8, 8))
    assert out.shape == (1, 3, 128, 128)


def test_bad_unetr_widths_are_refused():
    with pytest.raises(ValueError, match="must not increase"):
        UNETRDecoder(features=(32, 64, 128, 256))
    with pytest.raises(ValueError, match="4 positive widths"):
        UNETRDecoder(features=(64, 32))


def test_logits_from_mask_at_another_size():
    mask = np.zeros((300, 420), bool)
    mask[100:200, 50:150] = True
    ref = logits_from_mask(mask)
    small = logits_from_mask(mask, size=128)
    assert ref.shape == (1, 256, 256) and small.shape == (1, 128, 128)
    # 128 rows: 300 -> 91 rows of image, the rest padding (background)
    # the object: rows 100..200 -> 30.5..61, cols 50..150 -> 15.2..45.7
    assert (small[0, 95:] < 0).all() and (small[0, 33:59, 17:44] > 0).all() and (small[0, :, 48:] < 0).all()


def test_postprocess_masks_uses_the_instance_size():
    from pathosam.models.sam import Sam

    sam = build_sam(SamConfig(**SMALL, img_size=256))
    x = torch.randn(1, 1, 64, 64)
    a = sam.postprocess_masks(x, (183, 256), (300, 420))
    assert torch.equal(a, Sam.postprocess_masks(x, (183, 256), (300, 420), 256))
    assert not torch.equal(a, Sam.postprocess_masks(x, (183, 256), (300, 420)))  # SAM's 1024 by default


# ------------------------------------------------------------------------------ save / load
def test_saved_model_loads_with_identical_weights_and_outputs(saved, embs, image):
    model, paths, loaded = saved
    assert loaded.sam.config == model.sam.config
    assert loaded.img_size == model.img_size and loaded.decoder.features == (128, 64, 32, 16)
    for a, b in ((model.sam, loaded.sam), (model.decoder, loaded.decoder)):
        sa, sb = a.state_dict(), b.state_dict()
        assert list(sa) == list(sb)
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k
    e1, e2 = model.embed(image, progress=False), embs[0]
    np.testing.assert_array_equal(e1.features, e2.features)
    np.testing.assert_array_equal(model.instance_maps(e1, progress=False), loaded.instance_maps(e2, progress=False))


def test_single_file_layout_needs_no_arguments(saved, tmp_path):
    model, _, _ = saved
    path = model.save(tmp_path / "one.pt", layout="model_and_decoder")[0]
    loaded = pathosam.load_model(path, device="cpu")
    assert loaded.sam.config == model.sam.config and loaded.decoder.features == model.decoder.features


def test_saved_files_are_small(saved):
    _, paths, _ = saved
    sam_bytes, dec_bytes = (p.stat().st_size for p in paths)
    # SAM's prompt encoder + mask decoder alone are ~16 MB (fixed width 256); the ViT-B model is 375 MB
    assert sam_bytes < 25e6 and dec_bytes < 6e6
    assert read_checkpoint(paths[0]).layout == "sam" and read_checkpoint(paths[1]).layout == "decoder"


# ------------------------------------------------------------------------------ pipeline
def test_embeddings_and_maps(saved, embs):
    _, _, model = saved
    g = model.img_size // 16
    emb, tiled = embs
    assert emb.features.shape == (1, 256, g, g) and emb.feature_shape == (256, g, g)
    assert emb.input_sizes == [(round(300 * model.img_size / 420), model.img_size)]
    assert emb.signature["img_size"] == model.img_size and emb.signature["feature_shape"] == [256, g, g]
    maps = model.instance_maps(emb, progress=False)
    assert maps.shape == (3, 300, 420) and np.isfinite(maps).all()
    assert tiled.features.shape == (6, 256, g, g)
    assert model.instance_maps(tiled, progress=False).shape == (3, 300, 420)


def test_segment_nuclei_tiled_and_untiled(saved, image):
    _, _, model = saved
    for ts in (None, (192, 192)):
        seg = pathosam.segment_nuclei(image, model, tile_shape=ts, halo=(32, 32) if ts else None, progress=False)
        assert seg.labels.shape == image.shape[:2] and seg.labels.dtype == np.uint32
    maps = pathosam.inference.decoder_maps(model, image, tile_shape=(192, 192), halo=(32, 32))
    assert maps.shape == (3, 300, 420)


def test_prompts(saved, embs):
    _, _, model = saved
    low = model.mask_input_size
    assert low == (model.img_size // 4,) * 2
    for emb in embs:
        point = segment_prompt(model, emb, points=[[150, 100]])
        assert point.masks.shape == (1, 300, 420) and point.logits.shape == (1, *low)
        box = segment_prompt(model, emb, box=[120, 80, 180, 130], multimask=True)
        assert box.masks.shape == (3, 300, 420) and box.logits.shape == (3, *low)
        mask = np.zeros((300, 420), bool)
        mask[80:130, 120:180] = True
        from_mask = segment_prompt(model, emb, mask=mask)
        assert from_mask.masks.shape == (1, 300, 420)
        again = segment_prompt(model, emb, points=[[150, 100]], mask_input=from_mask.mask_input,
                               tile=from_mask.tile)
        assert again.masks.shape == (1, 300, 420)
        with pytest.raises(ValueError, match=f"mask_input must be \\(1, {low[0]}, {low[0]}\\)"):
            segment_prompt(model, emb, points=[[150, 100]], mask_input=np.zeros((1, 256, 256)), tile=point.tile)
    emb = embs[0]
    masks, iou, logits = model.predict_batch(
        emb, points=np.array([[[150, 100]], [[300, 200]]]), point_labels=np.ones((2, 1)),
        mask_input=np.zeros((2, 1, *low), np.float32),
    )
    assert masks.shape == (2, 1, 300, 420) and logits.shape == (2, 1, *low)
    one, _, _ = model.predict(emb, points=[[300, 200]], point_labels=[1], mask_input=np.zeros((1, *low)))
    np.testing.assert_array_equal(one, masks[1])


def test_amg(saved, embs, image):
    from pathosam.instances.amg import amg_from_embeddings, generate_mask_candidates

    _, _, model = saved
    emb = embs[0]
    cands = generate_mask_candidates(model, emb, points_per_side=4, points_per_batch=1, pred_iou_thresh=0.0,
                                     stability_score_thresh=0.0, progress=False)
    assert len(cands) == 4 * 4 * 3  # untiled: no crop edges to drop masks at
    # the grid masks are the prompted masks of the same points (same geometry in both paths)
    for k in (0, 5 * 3 + 2):
        rec = cands.crops[0][k]
        masks, _, _ = model.predict(emb, points=[rec.point], point_labels=[1], multimask=True)
        np.testing.assert_array_equal(rec.full_mask(image.shape[:2]), masks[k % 3])
    seg = pathosam.segment_nuclei(image, model, mode="amg", tile_shape=None, points_per_side=4,
                                  pred_iou_thresh=0.0, stability_score_thresh=0.0, progress=False)
    assert seg.labels.shape == image.shape[:2]
    labels = amg_from_embeddings(model, embs[1], points_per_side=4, pred_iou_thresh=0.0,
                                 stability_score_thresh=0.0, progress=False)
    assert labels.shape == image.shape[:2]


def test_caches_of_other_sizes_never_mix(image, tmp_path):
    """Same model id, another embedding shape: the zarr cache is refused."""
    def encoder(g):
        return lambda batch: np.zeros((len(batch), 256, g, g), np.float32)

    path = tmp_path / "emb.zarr"
    emb = compute_embeddings(encoder(16), image, "same-id", cache=path, progress=False,
                             img_size=256, feature_shape=(256, 16, 16))
    assert emb.feature_shape == (256, 16, 16)
    with pytest.raises(ValueError, match="different img_size, feature_shape"):
        compute_embeddings(encoder(32), image, "same-id", cache=path, progress=False,
                           img_size=512, feature_shape=(256, 32, 32))
    with pytest.raises(ValueError, match="encoder returned embeddings of shape"):
        compute_embeddings(encoder(16), image, "x", progress=False)  # defaults: SAM's (256, 64, 64)


def test_old_caches_without_geometry_still_load(tiny_model, image, tmp_path):
    import zarr

    path = tmp_path / "emb.zarr"
    first = tiny_model.embed(image, cache=path, progress=False)
    root = zarr.open_group(str(path), mode="r+")
    sig = dict(root.attrs["signature"])
    del sig["img_size"], sig["feature_shape"]  # as written before they were recorded
    root.attrs["signature"] = sig
    again = tiny_model.embed(image, cache=path, progress=False)
    np.testing.assert_array_equal(np.asarray(again.features), first.features)


def test_with_input_size_interpolates_the_positions_and_keeps_everything_else():
    from pathosam.models import with_input_size

    sam = build_sam(SamConfig(**SMALL, img_size=256, window_size=8))
    _randomise(sam, 3)
    same = with_input_size(sam, 256)
    for (k, a), b in zip(sam.state_dict().items(), same.state_dict().values()):
        assert torch.equal(a, b), k
    big = with_input_size(sam, 512)
    assert big.img_size == 512 and config_from_state_dict(big.state_dict()) == SamConfig(**SMALL, img_size=512, window_size=8)
    small_state, big_state = sam.state_dict(), big.state_dict()
    resized = {"image_encoder.pos_embed", "image_encoder.blocks.1.attn.rel_pos_h", "image_encoder.blocks.1.attn.rel_pos_w"}
    for k, v in small_state.items():
        if k not in resized:
            assert torch.equal(v, big_state[k]), k  # windowed blocks, prompt encoder, mask decoder
    assert big_state["image_encoder.pos_embed"].shape == (1, 32, 32, 64)
    assert big_state["image_encoder.blocks.1.attn.rel_pos_h"].shape[0] == 63
    # a smooth field stays the same field: the mean of the position embedding is kept
    pos = small_state["image_encoder.pos_embed"]
    assert torch.allclose(big_state["image_encoder.pos_embed"].mean((1, 2)), pos.mean((1, 2)), atol=0.01)
    with torch.no_grad():
        emb = big.image_encoder(big.preprocess(torch.rand(1, 3, 512, 512) * 255))
    assert emb.shape == (1, 256, 32, 32) and torch.isfinite(emb).all()
    with pytest.raises(ValueError, match="multiple of 16"):
        with_input_size(sam, 500)
