"""Training data pipeline: padding, rejection sampling, augmentation alignment, determinism,
class-balanced weights, HED jitter, and a run over the real GBM40 tiles."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.color import hed2rgb, rgb2hed

from pathosam.training.class_balance import class_balanced_weights, class_counts
from pathosam.training.crops import MinInstanceSampler, ensure_patch_shape, random_crop_origin, relabel_instances
from pathosam.training.data import EpochIndexSampler, TrainingPatches
from pathosam.training.stain import HEDJitter, hed_jitter


@dataclass
class Sample:
    name: str
    image: np.ndarray
    labels: np.ndarray
    classes: np.ndarray | None = None


def blobs(shape=(96, 128), n=12, seed=0, radius=5):
    """Random RGB image and disk instances (ids 1..n) with a class map (id % 3 + 1)."""
    rng = np.random.default_rng(seed)
    H, W = shape
    labels = np.zeros(shape, np.uint32)
    rr, cc = np.mgrid[:H, :W]
    for i in range(1, n + 1):
        r, c = rng.integers(radius, H - radius), rng.integers(radius, W - radius)
        labels[(rr - r) ** 2 + (cc - c) ** 2 <= radius**2] = i
    image = rng.integers(0, 256, (H, W, 3)).astype(np.uint8)
    classes = np.where(labels > 0, labels % 3 + 1, 0).astype(np.uint8)
    return Sample(f"blobs{seed}", image, labels, classes)


# ------------------------------------------------------------------------------------ padding


def test_ensure_patch_shape_pads_bottom_right_with_zeros():
    a = np.arange(1, 1 + 3 * 5 * 3, dtype=np.uint8).reshape(3, 5, 3)
    p = ensure_patch_shape(a, (8, 6))
    assert p.shape == (8, 6, 3) and p.dtype == a.dtype
    np.testing.assert_array_equal(p[:3, :5], a)  # content stays top-left
    assert not p[3:].any() and not p[:, 5:].any()
    big = np.ones((10, 10))
    assert ensure_patch_shape(big, (8, 8)) is big  # no copy when large enough
    assert ensure_patch_shape(np.ones((4, 20)), (8, 8)).shape == (8, 20)  # only the short axis


def test_small_image_patch_is_padded_in_pipeline():
    s = blobs((40, 30), n=5, seed=1)
    ds = TrainingPatches([s], (64, 64), sampler=None, flips=False, relabel=False, with_semantic=True)
    out = ds[0]
    assert out["image"].shape == (3, 64, 64) and out["image"].dtype == torch.float32
    assert out["labels"].shape == (1, 64, 64) and out["labels"].dtype == torch.float32
    assert out["semantic"].shape == (64, 64) and out["semantic"].dtype == torch.int64
    assert out["origin"].tolist() == [0, 0]
    img = out["image"].numpy()
    np.testing.assert_array_equal(img[:, :40, :30], s.image.transpose(2, 0, 1).astype(np.float32))
    assert img[:, 40:].max() == 0 and img[:, :, 30:].max() == 0  # raw 0..255, zero padding
    np.testing.assert_array_equal(out["labels"][0, :40, :30].numpy(), s.labels)
    assert out["labels"][0, 40:].max() == 0 and out["semantic"][:, 30:].max() == 0


def test_crop_origin_uniform_over_all_positions():
    rng = np.random.default_rng(0)
    seen = {random_crop_origin((6, 5), (4, 4), rng) for _ in range(400)}
    assert seen == {(r, c) for r in range(3) for c in range(2)}
    assert random_crop_origin((3, 9), (4, 9), rng) == (0, 0)


# ------------------------------------------------------------------------------------ sampler


def test_min_instance_sampler_counts_background_and_min_size():
    lab = np.zeros((20, 20), np.uint32)
    lab[:5, :5] = 1  # 25 px
    lab[10:12, 10:12] = 2  # 4 px
    s = MinInstanceSampler(min_num_instances=3)
    assert s.count(lab) == 3 and s(lab)  # background + 2 objects
    s10 = MinInstanceSampler(min_num_instances=3, min_size=10)
    assert s10.count(lab) == 2 and not s10(lab)  # object 2 too small
    assert MinInstanceSampler(2, exclude_ids=(0,)).count(lab) == 2
    # p_reject < 1 lets a failing patch through sometimes, reproducibly with an rng
    soft = MinInstanceSampler(min_num_instances=9, p_reject=0.5)
    a = [soft(lab, np.random.default_rng(i)) for i in range(50)]
    assert 0 < sum(a) < 50 and a == [soft(lab, np.random.default_rng(i)) for i in range(50)]


def test_rejection_finds_the_rare_populated_crop():
    # 200x200 image, objects only in the 30x30 bottom-right corner; 32x32 patches:
    # almost every crop is empty, the sampler must find one with >= 3 objects
    lab = np.zeros((200, 200), np.uint32)
    for i, (r, c) in enumerate([(175, 175), (175, 190), (190, 180)], 1):
        lab[r - 3 : r + 4, c - 3 : c + 4] = i
    img = np.zeros((200, 200, 3), np.uint8)
    img[lab > 0] = 200
    s = Sample("corner", img, lab)
    sampler = MinInstanceSampler(min_num_instances=4, min_size=10)  # background + 3 objects
    ds = TrainingPatches([s], (32, 32), sampler=sampler, max_tries=5000, n_samples=6, seed=3)
    for k in range(len(ds)):
        out = ds[k]
        assert len(np.unique(out["labels"].numpy())) >= 4
        r, c = out["origin"].tolist()
        assert r >= 200 - 32 - 30 and c >= 200 - 32 - 30
    # without the sampler most crops are empty
    plain = TrainingPatches([s], (32, 32), sampler=None, n_samples=50, seed=3)
    assert sum(plain[k]["labels"].max().item() == 0 for k in range(50)) > 35


def test_rejection_failure_modes():
    lab = np.zeros((64, 64), np.uint32)
    lab[5:15, 5:15] = 1  # only one object: never 4 ids
    s = Sample("one", np.zeros((64, 64, 3), np.uint8), lab)
    sampler = MinInstanceSampler(4)
    with pytest.raises(RuntimeError, match="passed the sampler"):
        TrainingPatches([s], (16, 16), sampler=sampler, max_tries=20, on_failure="raise")[0]
    best = TrainingPatches([s], (16, 16), sampler=sampler, max_tries=200, on_failure="best")[0]
    assert best["labels"].max() == 1  # the best crop holds the object
    # resample: a good image exists elsewhere in the dataset
    good = blobs((64, 64), n=20, seed=5)
    ds = TrainingPatches([s, good], (32, 32), sampler=sampler, max_tries=50, on_failure="resample", n_samples=8)
    for k in range(8):
        assert len(np.unique(ds[k]["labels"].numpy())) >= 4


# ------------------------------------------------------------------------------------ relabel


def test_relabel_splits_cut_objects_and_drops_small():
    lab = np.zeros((10, 12), np.uint32)
    lab[1:4, 1:4] = 7
    lab[6:9, 1:4] = 7  # same id, disconnected -> two objects
    lab[1:3, 8:10] = 9  # 4 px
    lab[5:9, 6:12] = 300
    out = relabel_instances(lab)
    assert out.dtype == np.uint32 and sorted(np.unique(out)) == [0, 1, 2, 3, 4]
    assert relabel_instances(lab, min_size=5).max() == 3
    assert (relabel_instances(lab, min_size=5)[1:3, 8:10] == 0).all()
    np.testing.assert_array_equal(relabel_instances(out), out)  # idempotent


def test_pipeline_relabels_after_crop():
    lab = np.zeros((32, 32), np.uint32)
    lab[4:28, 10:22] = 5  # one object
    lab[14:18, 10:22] = 0  # cut in two by a gap
    s = Sample("cut", np.zeros((32, 32, 3), np.uint8), lab)
    out = TrainingPatches([s], (32, 32), sampler=None, flips=False)[0]
    assert sorted(np.unique(out["labels"].numpy()).tolist()) == [0, 1, 2]
    raw = TrainingPatches([s], (32, 32), sampler=None, flips=False, relabel=False)[0]
    assert sorted(np.unique(raw["labels"].numpy()).tolist()) == [0, 5]


# ------------------------------------------------------------------------------------ augmentation


@pytest.mark.parametrize("rotate90", [False, True])
def test_augmentation_keeps_image_labels_and_classes_aligned(rotate90):
    s = blobs((80, 80), n=15, seed=2)
    # encode the truth in the image: red = foreground, green = class * 50, blue = ramp along x
    img = np.zeros((80, 80, 3), np.uint8)
    img[..., 0] = np.where(s.labels > 0, 255, 0)
    img[..., 1] = s.classes * 50
    img[..., 2] = np.arange(80, dtype=np.uint8)[None, :]
    s = Sample("enc", img, s.labels, s.classes)
    ds = TrainingPatches(
        [s], (48, 48), sampler=None, rotate90=rotate90, with_semantic=True, min_object_size=0, n_samples=40
    )
    seen = set()
    for k in range(len(ds)):
        out = ds[k]
        im = out["image"].numpy()
        lab = out["labels"][0].numpy()
        cls = out["semantic"].numpy()
        np.testing.assert_array_equal(im[0] > 0, lab > 0)  # label boundaries move with the image
        np.testing.assert_array_equal(im[1], cls * 50.0)
        # and it is exactly the recorded transform of the crop
        hf, vf, rk = out["transform"].tolist()
        seen.add((hf, vf, rk))
        r, c = out["origin"].tolist()
        crop = img[r : r + 48, c : c + 48].astype(np.float32)
        if hf:
            crop = crop[:, ::-1]
        if vf:
            crop = crop[::-1]
        crop = np.rot90(crop, rk, axes=(0, 1))
        np.testing.assert_array_equal(im.transpose(1, 2, 0), crop)
    assert {t[:2] for t in seen} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert ({t[2] for t in seen} == {0, 1, 2, 3}) if rotate90 else ({t[2] for t in seen} == {0})


def test_label_transform_runs_before_augmentation_on_all_channels():
    s = blobs((64, 64), n=10, seed=4)

    def two_channels(lab):
        return np.stack([lab, lab > 0]).astype(np.float32)

    ds = TrainingPatches([s], (64, 64), sampler=None, label_transform=two_channels, n_samples=10)
    for k in range(10):
        y = ds[k]["labels"]
        assert y.shape == (2, 64, 64)
        torch.testing.assert_close(y[1], (y[0] > 0).float())


# ------------------------------------------------------------------------------------ determinism


def _stream(ds, epoch, n):
    ds.set_epoch(epoch)
    return [ds[k] for k in range(n)]


def _same(a, b):
    return all(
        torch.equal(x["image"], y["image"]) and torch.equal(x["labels"], y["labels"]) and x["sample_index"] == y["sample_index"]
        for x, y in zip(a, b)
    )


def test_determinism_seed_epoch_index():
    data = [blobs((100, 90), n=15, seed=i) for i in range(4)]
    kw = dict(sampler=MinInstanceSampler(3), rotate90=True, stain_jitter=HEDJitter(), n_samples=6)
    a = TrainingPatches(data, (48, 48), seed=7, **kw)
    b = TrainingPatches(data, (48, 48), seed=7, **kw)
    c = TrainingPatches(data, (48, 48), seed=8, **kw)
    assert _same(_stream(a, 0, 6), _stream(b, 0, 6))
    assert not _same(_stream(a, 0, 6), _stream(c, 0, 6))
    assert not _same(_stream(a, 0, 6), _stream(a, 1, 6))
    # pure function of (seed, epoch, index): order and history do not matter
    a.set_epoch(3)
    rev = [a[k] for k in reversed(range(6))][::-1]
    assert _same(rev, [b.patch(3, k) for k in range(6)])
    assert _same([a[(3, 2)]], [b[(3, 2)]])
    # resume through state_dict
    d = TrainingPatches(data, (48, 48), seed=0, **kw)
    d.load_state_dict(a.state_dict())
    assert _same([d[k] for k in range(6)], [a[k] for k in range(6)])


def test_determinism_independent_of_workers():
    data = [blobs((100, 90), n=15, seed=i) for i in range(3)]
    ds = TrainingPatches(data, (48, 48), seed=11, sampler=MinInstanceSampler(3), n_samples=8)
    sampler = EpochIndexSampler(len(ds), epoch=2)

    def run(workers):
        dl = torch.utils.data.DataLoader(ds, batch_size=2, sampler=sampler, num_workers=workers)
        return torch.cat([b["image"] for b in dl]), torch.cat([b["labels"] for b in dl])

    x0, y0 = run(0)
    x2, y2 = run(2)
    assert torch.equal(x0, x2) and torch.equal(y0, y2)
    assert torch.equal(x0[5], ds.patch(2, 5)["image"])
    # mid-epoch resume
    sampler.set_epoch(2, start=4)
    assert list(sampler) == [(2, k) for k in range(4, 8)] and len(sampler) == 4


# ------------------------------------------------------------------------------------ oversampling


def test_class_balanced_weights_hand_example():
    counts = np.array(
        [
            [1000, 90, 0],  # class 1 only
            [1000, 0, 10],  # class 2 only
            [1000, 90, 10],  # both
            [1000, 0, 0],  # background only
        ]
    )
    # class totals (background ignored): 180, 20 -> frequencies 0.9, 0.1
    raw = np.array([1 / 0.9, 1 / 0.1, 1 / 0.9 + 1 / 0.1, 1 / 0.9])  # empty sample -> smallest weight
    w = class_balanced_weights(counts)
    np.testing.assert_allclose(w, raw / raw.sum())
    assert w.sum() == pytest.approx(1.0)
    w0 = class_balanced_weights(counts, empty_weight=0.0)
    np.testing.assert_allclose(w0, np.r_[raw[:3], 0] / raw[:3].sum())
    # background as a class too: its frequency 4000/4200
    wb = class_balanced_weights(counts, ignore_background=False)
    f = np.array([4000, 180, 20]) / 4200
    rb = np.array([1 / f[0] + 1 / f[1], 1 / f[0] + 1 / f[2], (1 / f).sum(), 1 / f[0]])
    np.testing.assert_allclose(wb, rb / rb.sum())
    # usable with WeightedRandomSampler: minority-class samples drawn more often
    gen = torch.Generator().manual_seed(0)
    draws = list(torch.utils.data.WeightedRandomSampler(w.tolist(), 4000, generator=gen))
    freq = np.bincount(draws, minlength=4) / 4000
    assert freq[1] > 5 * freq[0] and freq[2] > 5 * freq[3]


def test_class_counts_from_dataset():
    cls = np.zeros((6, 6), np.uint8)
    lab = np.zeros((6, 6), np.uint32)
    lab[0:2, 0:2] = 1
    cls[0:2, 0:2] = 2
    lab[3:6, 3:6] = 2
    cls[3:6, 3:6] = 1
    cls[3, 3] = 2  # minority pixel inside instance 2: majority class stays 1
    ds = [Sample("a", np.zeros((6, 6, 3), np.uint8), lab, cls), Sample("b", np.zeros((6, 6, 3), np.uint8), lab, None)]
    np.testing.assert_array_equal(class_counts(ds, 3, "pixels"), [[23, 8, 5], [0, 0, 0]])
    np.testing.assert_array_equal(class_counts(ds, 3, "instances"), [[0, 1, 1], [0, 0, 0]])
    np.testing.assert_array_equal(class_counts(ds, 3, "presence"), [[1, 1, 1], [0, 0, 0]])
    w = class_balanced_weights(ds, num_classes=3)
    assert w[0] == w[1] == 0.5  # the empty sample gets the smallest other weight
    w = class_balanced_weights(ds, num_classes=3, empty_weight=0.1)
    assert w[0] > w[1] > 0 and w.sum() == pytest.approx(1.0)


def test_sample_weights_steer_image_choice():
    common = Sample("common", np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32), np.uint32), np.zeros((32, 32), np.uint8))
    rare_cls = np.zeros((32, 32), np.uint8)
    rare_cls[:4, :4] = 5
    rare = Sample("rare", np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32), np.uint32), rare_cls)
    data = [common] * 9 + [rare]
    w = class_balanced_weights(data, empty_weight=1e-3)
    assert w[9] > 0.99
    ds = TrainingPatches(data, (32, 32), sampler=None, sample_weights=w, n_samples=50)
    assert sum(ds[k]["sample_index"] == 9 for k in range(50)) >= 45
    # index mode + WeightedRandomSampler
    idx = TrainingPatches(data, (32, 32), sampler=None, image_choice="index", n_samples=100)
    iw = idx.index_weights(w)
    assert iw.shape == (100,) and iw.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(iw.reshape(10, 10).sum(axis=0), w)
    assert idx[19]["sample_index"] == 9


# ------------------------------------------------------------------------------------ HED jitter


def test_hed_jitter_identity_and_off_by_default():
    s = blobs((40, 40), n=5, seed=6)
    np.testing.assert_allclose(hed_jitter(s.image, np.ones(3), np.zeros(3)), s.image, atol=1e-3)
    off = TrainingPatches([s], (40, 40), sampler=None, flips=False)[0]["image"]
    np.testing.assert_array_equal(off.numpy(), s.image.transpose(2, 0, 1).astype(np.float32))


def test_hed_jitter_changes_within_range():
    rng = np.random.default_rng(0)
    stains = np.stack([rng.uniform(0.02, 0.12, (32, 32)), rng.uniform(0.01, 0.05, (32, 32)), rng.uniform(0.0, 0.01, (32, 32))], -1)
    image = hed2rgb(stains) * 255  # float RGB with known concentrations
    np.testing.assert_allclose(rgb2hed(image / 255), stains, atol=1e-9)
    jit = HEDJitter(scale_range=(0.9, 1.1), shift_range=[(-0.01, 0.01), (-0.005, 0.005), (0, 0)])
    for seed in range(5):
        scale, shift = jit.sample(np.random.default_rng(seed))
        assert np.all((scale >= 0.9) & (scale <= 1.1))
        assert np.all(np.abs(shift) <= [0.01, 0.005, 0])
        out = hed_jitter(image, scale, shift)
        assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 255
        assert np.abs(out - image).max() > 0.5
        ok = np.all((out > 0) & (out < 255), axis=-1)
        got = rgb2hed(out.astype(np.float64) / 255)[ok]
        np.testing.assert_allclose(got, (stains * scale + shift)[ok], atol=1e-5)
        # the call draws the same parameters from the same rng
        np.testing.assert_array_equal(jit(image, np.random.default_rng(seed)), out)
    # in the pipeline: padding stays 0 and the image changes
    s = blobs((40, 40), n=5, seed=6)
    on = TrainingPatches([s], (48, 48), sampler=None, flips=False, stain_jitter=HEDJitter())[0]["image"].numpy()
    assert on[:, 40:].max() == 0 and on[:, :, 40:].max() == 0
    assert not np.array_equal(on[:, :40, :40], s.image.transpose(2, 0, 1).astype(np.float32))
    with pytest.raises(ValueError):
        HEDJitter(scale_range=(1.1, 0.9))


# ------------------------------------------------------------------------------------ zoom


def test_zoom_off_or_1_leaves_the_patch_stream_unchanged():
    data = [blobs((100, 90), n=15, seed=i) for i in range(3)]
    kw = dict(sampler=MinInstanceSampler(3), rotate90=True, stain_jitter=HEDJitter(), n_samples=6)
    plain = TrainingPatches(data, (48, 48), **kw)
    one = TrainingPatches(data, (48, 48), scale_range=(1.0, 1.0), **kw)
    assert _same(_stream(plain, 2, 6), _stream(one, 2, 6))
    assert "window" not in plain[0] and one[0]["window"].tolist() == [48, 48]
    for bad in [(0.0, 1.0), (1.5, 1.2), (1.0,)]:
        with pytest.raises(ValueError, match="scale_range"):
            TrainingPatches(data, (48, 48), scale_range=bad)


def test_zoom_resizes_a_window_and_keeps_labels_aligned():
    s = blobs((200, 200), n=40, seed=3, radius=6)
    img = np.zeros((200, 200, 3), np.uint8)
    img[..., 0] = np.where(s.labels > 0, 255, 0)  # red = foreground
    img[..., 1] = s.classes * 50
    s = Sample("enc", img, s.labels, s.classes)
    ds = TrainingPatches([s], (64, 64), sampler=None, flips=False, scale_range=(0.5, 2.0),
                         with_semantic=True, min_object_size=0, n_samples=40)
    sides = []
    for k in range(len(ds)):
        out = ds[k]
        h, w = out["window"].tolist()
        assert h == w and 32 <= h <= 128
        sides.append(h)
        im, lab, cls = out["image"].numpy(), out["labels"][0].numpy(), out["semantic"].numpy()
        assert im.shape == (3, 64, 64) and lab.shape == cls.shape == (64, 64)
        # the image is the window resized (bilinear): its foreground agrees with the labels
        # (nearest) except on a thin rim
        assert np.mean((im[0] > 127) == (lab > 0)) > 0.95
        # classes travel with the labels: every labelled object has one class
        for i in np.unique(lab[lab > 0])[:5]:
            assert len(np.unique(cls[lab == i])) == 1
        # nuclei appear 64 / h times their size: the foreground fraction of the window is kept
        r, c = out["origin"].tolist()
        src = s.labels[r : r + h, c : c + w] > 0
        if src.shape == (h, w) and src.mean() > 0.05:
            assert abs((lab > 0).mean() - src.mean()) < 0.03
    assert min(sides) < 45 and max(sides) > 90  # the whole range is used
    # log-uniform: zooming in and out equally often
    assert 10 <= sum(v < 64 for v in sides) <= 30


# ------------------------------------------------------------------------------------ real data


def test_gbm40_patches_have_min_objects(data_dir: Path):
    tifffile = pytest.importorskip("tifffile")
    root = data_dir / "gbm40"
    if not (root / "images").is_dir():
        pytest.skip(f"GBM40 not found under {root}")
    names = sorted(p.stem for p in (root / "images").glob("*.tif"))[:4]
    data = [
        Sample(n, tifffile.imread(root / "images" / f"{n}.tif"), tifffile.imread(root / "labels" / f"{n}.tif").astype(np.uint32))
        for n in names
    ]
    assert data[0].image.shape == (512, 512, 3) and data[0].image.dtype == np.uint8
    # 256 crops of 512 tiles, and the reference patch size (the whole tile) once
    ds = TrainingPatches(data, (256, 256), seed=0, n_samples=6, on_failure="raise", sampler=MinInstanceSampler(4, min_size=10))
    for k in range(len(ds)):
        out = ds[k]
        lab = out["labels"][0].numpy().astype(np.int64)
        assert out["image"].shape == (3, 256, 256) and 0 <= out["image"].min() and out["image"].max() <= 255
        assert lab.max() >= 3
        assert np.bincount(lab.ravel())[1:].min() >= 10  # relabelled, small fragments dropped
        assert len(np.unique(lab)) == lab.max() + 1  # consecutive ids
    full = TrainingPatches(data, (512, 512), seed=0, n_samples=1)[0]
    assert full["origin"].tolist() == [0, 0] and full["labels"].max() >= 50
