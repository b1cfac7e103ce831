"""The UNETR decoder's optional image-skip branch (``image_conv``: a conv block on the model
input at full resolution, joined before ``decoder_head``), used by the embedded small model.

A decoder extended with :meth:`UNETRDecoder.with_image_skip` computes exactly what it did before
(the new input channels start at zero); the branch survives saving and loading (recognised from
the ``image_conv.*`` keys); every way of computing decoder maps (untiled, tiled, from stored
embeddings, the streamed AIS) hands the decoder the same input image.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pathosam
from pathosam.automatic import segment_nuclei
from pathosam.inference import decoder_maps, postprocessing_block
from pathosam.instances.ais import ais_from_maps
from pathosam.predictor import PathoSAM
from pathosam.models.unetr import UNETRDecoder, has_image_skip
from tests.test_small_models import _randomise, small_model


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(5)
    img = rng.integers(120, 200, (300, 260, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:300, :260]
    for r, c in rng.integers(15, 245, (20, 2)):
        img[(yy - r) ** 2 + (xx - c) ** 2 < 64] = (60, 30, 90)
    return img


@pytest.fixture(scope="module")
def skip_model(tmp_path_factory):
    """(a 256-input small model whose decoder has an active image branch, the same loaded back)."""
    base = small_model(256)
    dec = base.decoder.with_image_skip()
    _randomise(dec, 7)  # make the new branch matter
    model = PathoSAM(base.sam, dec, device="cpu", name="skip")
    paths = model.save(tmp_path_factory.mktemp("skip") / "skip.pt")
    return model, pathosam.load_model(paths[0], decoder=paths[1], device="cpu")


def test_extended_decoder_computes_the_same_maps():
    torch.manual_seed(0)
    dec = UNETRDecoder(3, True, features=8).eval()
    _randomise(dec, 1)
    emb = torch.randn(2, 256, 16, 16)
    img = torch.randn(2, 3, 256, 256)
    ext = dec.with_image_skip().eval()
    assert ext.image_skip and not dec.image_skip
    assert torch.equal(dec(emb), ext(emb, image=img))
    # the original keys keep their order; the branch comes last
    assert list(ext.state_dict())[: len(dec.state_dict())] == list(dec.state_dict())
    assert has_image_skip(ext.state_dict()) and not has_image_skip(dec.state_dict())
    with pytest.raises(ValueError, match="image"):
        ext(emb)
    # once the branch has weights, the maps depend on the image
    _randomise(ext, 2)
    assert not torch.allclose(ext(emb, image=img), ext(emb, image=img.flip(-1)))


def test_branch_is_saved_and_loaded(skip_model, image):
    model, loaded = skip_model
    assert loaded.needs_image() and loaded.decoder.image_skip
    a = decoder_maps(model, image, tile_shape=None)
    b = decoder_maps(loaded, image, tile_shape=None)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_every_path_gives_the_decoder_the_same_image(skip_model, image):
    _, model = skip_model
    ts, halo = (96, 96), (16, 16)
    untiled = decoder_maps(model, image, tile_shape=None)
    tiled = decoder_maps(model, image, tile_shape=ts, halo=halo, batch_size=2)
    emb_u = model.embed(image, progress=False)
    emb_t = model.embed(image, tile_shape=ts, halo=halo, progress=False)
    np.testing.assert_allclose(model.instance_maps(emb_u, image=image, progress=False), untiled, atol=1e-5)
    np.testing.assert_allclose(model.instance_maps(emb_t, image=image, progress=False, batch_size=3), tiled,
                               atol=1e-5)
    with pytest.raises(ValueError, match="image"):
        model.instance_maps(emb_t, progress=False)
    with pytest.raises(ValueError, match="image"):
        model.instance_maps(emb_t, image=image[:100], progress=False)
    t, s, o = model.prepare_input(image)
    with pytest.raises(ValueError, match="inputs"):
        model.decode(model.encode([t]), [s], [o])
    # the streamed tiled AIS (segment_nuclei) == post-processing of the stitched maps in the same
    # blocks (2 x 2 of these tiles, 32 px of context)
    seg = segment_nuclei(image, model, tile_shape=ts, halo=halo, progress=False)
    assert postprocessing_block(ts) == (192, 192)
    ref = ais_from_maps(tiled, tile_shape=(192, 192), halo=(32, 32))
    assert seg.labels.max() > 0
    assert np.array_equal(seg.labels > 0, ref > 0)
