"""``pathosam.segment_nuclei``: the streaming tiled pipeline (model -> maps -> seam-free AIS)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pathosam.instances import ais_from_maps
from pathosam.predictor import PathoSAM
from pathosam.automatic import segment, segment_nuclei
from pathosam.inference import resolve_tiling
from pathosam.semantic import nucleus_classes
from pathosam.tiling import tile_grid, tile_slices

from .test_tiled_ais import disk_maps


class MapsFromImage(PathoSAM):
    """Test double with PathoSAM's encode/decode interface: the "embedding" is the prepared input
    itself and the decoder maps are read back from the image's pixel values (red = distance,
    green = class), so the pipeline's tiling, stitching and bookkeeping can be checked exactly
    and quickly. The real model's maps are checked against the reference vectors elsewhere."""

    def __init__(self, class_scheme: str | None = None):  # noqa: D107 - no SAM weights needed
        self.device = torch.device("cpu")
        self.decoder = object()
        n = 5 if class_scheme == "consep" else 6  # CoNSeP's or PanNuke's maps
        self.semantic_decoder = SimpleNamespace(out_channels=n)
        self.class_scheme_name = class_scheme
        self.name = self.model_id = "maps-from-image"

    def encode(self, batch):
        return torch.stack([F.pad(t.float(), (0, 1024 - t.shape[2], 0, 1024 - t.shape[1])) for t in batch])

    def decode(self, features, input_sizes, original_sizes, what="instance", bn_mode="per_tile", inputs=None):
        out = []
        for x, ins, orig in zip(features, input_sizes, original_sizes):
            x = F.interpolate(x[None, :, : ins[0], : ins[1]], tuple(orig), mode="bilinear", align_corners=False)[0]
            d = (x[0] / 255).clamp(0, 1)
            if what == "instance":
                out.append(torch.stack([(d < 0.999).float(), d, d]).numpy())
            else:
                n = self.semantic_decoder.out_channels
                cls = torch.round(x[1] / 50).clamp(0, n - 1).long()
                out.append(F.one_hot(cls, n).permute(2, 0, 1).float().numpy() * 0.8 + 0.1)
        return out


def disk_image(shape=(300, 420), seed=0, n=60):
    rng = np.random.default_rng(seed)
    centres, radii = [], []
    while len(centres) < n:
        r, c, rad = rng.integers(0, shape[0]), rng.integers(0, shape[1]), rng.integers(5, 14)
        if all(np.hypot(r - r2, c - c2) >= rad + b + 1 for (r2, c2), b in zip(centres, radii)):
            centres.append((r, c))
            radii.append(rad)
    maps, truth = disk_maps(shape, centres, radii)
    image = np.zeros((*shape, 3), np.uint8)
    image[..., 0] = np.round(maps[1] * 255)
    image[..., 1] = np.where(truth > 0, 50 * (1 + truth % 5), 0)  # class 1..5 per disk
    return image, truth


def stitched_maps(model, image, tile_shape, halo, what):
    """Inner blocks of every tile's maps pasted together (the reference's map stitching)."""
    from pathosam.image import prepare_input

    tiles = tile_grid(image.shape[:2], tile_shape, halo)
    out = None
    for t in tiles:
        x, ins, orig = prepare_input(image[tile_slices(t.outer)])
        m = model.decode(model.encode([x]), [ins], [orig], what)[0]
        out = np.zeros((m.shape[0], *image.shape[:2]), np.float32) if out is None else out
        out[(slice(None), *tile_slices(t.inner))] = m[(slice(None), *tile_slices(t.inner_local))]
    return out


@pytest.mark.parametrize("batch_size", [1, 3])
def test_streaming_pipeline_equals_postprocessing_of_stitched_maps(batch_size):
    model = MapsFromImage()
    image, truth = disk_image()
    ts, halo = (128, 128), (32, 32)
    result = segment_nuclei(image, model, tile_shape=ts, halo=halo, batch_size=batch_size, classes=True,
                            progress=False, min_size=5)
    maps = stitched_maps(model, image, ts, halo, "instance")
    expected = ais_from_maps(maps, min_size=5)
    np.testing.assert_array_equal(result.labels, expected)
    np.testing.assert_array_equal(result.labels, ais_from_maps(maps, tile_shape=ts, halo=halo, min_size=5))
    assert result.n_objects == 60  # every disk found once
    classes, probs = nucleus_classes(expected, stitched_maps(model, image, ts, halo, "semantic"))
    np.testing.assert_array_equal(result.classes, classes)
    np.testing.assert_allclose(result.class_probabilities, probs, rtol=1e-5)
    # the classes are those painted into the image
    for i in range(1, result.n_objects + 1):
        disk = np.bincount(truth[result.labels == i]).argmax()
        assert result.classes[i] == 1 + disk % 5
    assert set(result.seconds) == {"model", "postprocessing"}
    assert result.parameters["min_size"] == 5 and result.tile_shape == ts and result.halo == halo


def test_untiled_and_auto_tiling():
    model = MapsFromImage()
    image, _ = disk_image((200, 240), seed=1)
    result = segment_nuclei(image, model, progress=False)  # auto: <= 512 px -> untiled
    assert result.tile_shape is None
    np.testing.assert_array_equal(result.labels, segment(image, model, tile_shape=None, progress=False))
    assert result.n_objects == 60
    assert resolve_tiling((600, 300), "auto", None) == ((384, 384), (64, 64))
    assert resolve_tiling((512, 512), "auto", None) == (None, None)
    assert resolve_tiling((600, 300), 256, 32) == ((256, 256), (32, 32))


def test_bad_arguments():
    model = MapsFromImage()
    image, _ = disk_image((100, 100), seed=2, n=5)
    with pytest.raises(ValueError, match="mode"):
        segment_nuclei(image, model, mode="watershed")
    with pytest.raises(TypeError, match="unknown ais parameter"):
        segment_nuclei(image, model, pred_iou_thresh=0.5)
    with pytest.raises(ValueError, match="too small"):
        segment_nuclei(np.zeros((1, 1, 3), np.uint8), model)
    with pytest.raises(ValueError, match="empty"):
        segment_nuclei(np.zeros((0, 5, 3), np.uint8), model)
    with pytest.raises(ValueError, match="halo given without tile_shape"):
        segment_nuclei(image, model, tile_shape=None, halo=(8, 8))
