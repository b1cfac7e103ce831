"""Semantic-head training: loss goes down, frozen encoder, pretrained init, exact resume, export
loadable by ``pathosam.load_model``, class-weight modes.

The training runs use a small model (ViT width 32, depth 2, input size 128, UNETR widths
(64, 32, 16, 8)): a 1024-px UNETR forward + backward takes over a minute per patch on two CPU
cores, so the reference-size tiny model is only used where nothing is trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import pathosam
from pathosam.predictor import PathoSAM
from pathosam.models.checkpoint import read_checkpoint
from pathosam.models.sam import SamConfig, build_sam
from pathosam.models.unetr import UNETRDecoder
from pathosam.training.losses import weighted_cross_entropy
from pathosam.training.run import load_checkpoint
from pathosam.training.semantic_trainer import SemanticTrainer, train_semantic
from pathosam.training.semantic_setup import (
    REFERENCE_CLASS_WEIGHTS,
    SemanticConfig,
    init_semantic_decoder,
    resolve_class_weights,
)


@dataclass
class Sample:
    name: str
    image: np.ndarray
    labels: np.ndarray
    classes: np.ndarray | None = None


def small_model(seed: int = 0, with_ais: bool = True) -> PathoSAM:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = build_sam(SamConfig(32, 2, 2, (1,), img_size=128, window_size=4))
        with torch.no_grad():  # SAM initialises pos_embed to zeros; give it some signal
            sam.image_encoder.pos_embed.normal_(0, 0.1)
        ais = UNETRDecoder(3, True, features=8) if with_ais else None
    return PathoSAM(sam, ais, None, device="cpu", name="small")


def gbm40_samples(data_dir: Path, n: int, start: int = 0, size: int = 128) -> list[Sample]:
    """``size``-px crops of GBM40 tiles with a synthetic class map: class = 1 + id % 5."""
    import tifffile

    names = sorted(p.name for p in (data_dir / "gbm40" / "images").glob("*.tif"))[start : start + n]
    out = []
    for name in names:
        image = tifffile.imread(data_dir / "gbm40" / "images" / name)[:size, :size]
        labels = tifffile.imread(data_dir / "gbm40" / "labels" / name)[:size, :size].astype(np.uint32)
        classes = np.where(labels > 0, 1 + labels % 5, 0).astype(np.uint8)
        out.append(Sample(name, np.ascontiguousarray(image), labels, classes))
    return out


def color_blobs(size: int = 64, seed: int = 0) -> Sample:
    """Synthetic image: disks whose colour encodes their class (1..5) on a grey background."""
    rng = np.random.default_rng(seed)
    colours = np.array([[200, 200, 200], [120, 40, 160], [40, 40, 200], [230, 120, 170], [20, 20, 20],
                        [160, 90, 40]], np.uint8)
    labels = np.zeros((size, size), np.uint32)
    rr, cc = np.mgrid[:size, :size]
    for i in range(1, 16):
        r, c = rng.integers(5, size - 5, 2)
        labels[(rr - r) ** 2 + (cc - c) ** 2 <= 25] = i
    classes = np.where(labels > 0, 1 + labels % 5, 0).astype(np.uint8)
    image = colours[classes] + rng.integers(0, 10, (size, size, 3)).astype(np.uint8)
    return Sample(f"blobs{seed}", image, labels, classes)


pytestmark = pytest.mark.usefixtures("one_thread")


def same(a, b) -> bool:
    """Equality of nested validation records, NaN equal to NaN."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return True
    return a == b


def quick(**kw) -> SemanticConfig:
    base = dict(iterations=2, batch_size=2, patch_shape=(64, 64), validate_every=2, checkpoint_every=2,
                val_patches=2, amp=False)
    base.update(kw)
    return SemanticConfig(**base)


@pytest.fixture(scope="module")
def gbm(data_dir):
    return gbm40_samples(data_dir, 3), gbm40_samples(data_dir, 1, start=3)


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------- (a)


def test_loss_decreases_on_a_fixed_batch(tmp_path):
    data = [color_blobs()]
    cfg = quick(iterations=10, batch_size=1, flips=False, lr=1e-3, validate_every=100)
    hist = train_semantic(small_model(), data, None, tmp_path, cfg, device="cpu", progress=False)
    loss = hist["train_loss"]
    assert len(loss) == 10 and all(np.isfinite(loss))
    assert np.mean(loss[-3:]) < 0.9 * np.mean(loss[:3]), loss
    assert sum(b < a for a, b in zip(loss, loss[1:])) >= 8, loss  # (almost) every step lowers it
    assert hist["validation"] == [] and Path(hist["files"]["semantic_decoder"]).is_file()


# ------------------------------------------------------------------------------------- (b)


def test_freeze_encoder_keeps_sam_and_trains_decoder(tmp_path, gbm):
    train, val = gbm
    model = small_model()
    sam0 = {k: v.clone() for k, v in model.sam.state_dict().items()}
    ais0 = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    cfg = quick(freeze_encoder=True)
    init = init_semantic_decoder(model, "scratch", seed=cfg.seed).state_dict()
    hist = train_semantic(model, train, val, tmp_path, cfg, device="cpu", progress=False)
    assert states_equal(model.sam.state_dict(), sam0)
    assert states_equal(model.decoder.state_dict(), ais0)
    sem = model.semantic_decoder.state_dict()
    assert sem.keys() == init.keys()
    changed = [k for k in sem if sem[k].is_floating_point() and not torch.equal(sem[k], init[k])]
    assert any(k.startswith("out_conv.") for k in changed) and any(k.startswith("deconv1.") for k in changed)
    # BatchNorm running statistics were updated by the batch-statistics forward
    assert not torch.equal(sem["deconv1.block.2.running_mean"], init["deconv1.block.2.running_mean"])
    assert int(sem["deconv1.block.2.num_batches_tracked"]) == 2
    # only the semantic decoder is exported; validation reports per-class dice
    assert set(hist["files"]) == {"checkpoint", "semantic_decoder"}
    assert not (tmp_path / "export" / "sam.pt").exists()
    v = hist["validation"][-1]
    assert v["iteration"] == 2 and {"loss", "dice_neoplastic", "dice_epithelial", "dice_mean"} <= v.keys()
    ck = load_checkpoint(tmp_path / "checkpoints" / "latest.pt")
    assert set(ck["model_state"]) == {f"sam.{k}" for k in sam0}
    assert states_equal(ck["decoder_state"], ais0)
    assert states_equal(ck["semantic_decoder_state"], {k: v.contiguous() for k, v in sem.items()})
    assert {"optimizer_state", "scheduler_state", "scaler_state", "iteration", "best_metric", "config"} <= ck.keys()


# ------------------------------------------------------------------------------------- (c)


def test_pretrained_init_copies_the_ais_decoder_except_out_conv(tiny_files, tiny_model):
    model = pathosam.load_model(tiny_files["tiny_sam.pt"], decoder=tiny_files["tiny_sam_decoder.pt"], device="cpu")
    dec = init_semantic_decoder(model, "pretrained", seed=0)
    ais = model.decoder.state_dict()
    sem = dec.state_dict()
    # the reference's semantic decoder file has exactly these keys
    ref = read_checkpoint(tiny_files["tiny_decoder_semantic_fp16.pt"]).decoder_state
    assert list(sem) == list(ref) and all(sem[k].shape == ref[k].shape for k in ref)
    for k in sem:
        if k.startswith("out_conv."):
            assert sem[k].shape[0] == 6 and ais[k].shape[0] == 3
        else:
            assert torch.equal(sem[k], ais[k]), k
    again = init_semantic_decoder(model, "pretrained", seed=0).state_dict()
    assert states_equal(sem, again)  # seeded out_conv
    other = init_semantic_decoder(model, "pretrained", seed=1).state_dict()
    assert not torch.equal(other["out_conv.weight"], sem["out_conv.weight"])
    with pytest.raises(ValueError, match="AIS"):
        init_semantic_decoder(small_model(with_ais=False), "pretrained")
    # "semantic" continues from the model's own semantic decoder (a copy; the model is untouched)
    cont = init_semantic_decoder(tiny_model, "semantic")
    assert cont is not tiny_model.semantic_decoder
    assert states_equal(cont.state_dict(), tiny_model.semantic_decoder.state_dict())


def test_pretrained_init_through_the_trainer_and_export(tmp_path):
    model = small_model()
    ais = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    data = [color_blobs()]
    hist = train_semantic(model, data, None, tmp_path, quick(iterations=0, decoder_init="pretrained", freeze_encoder=True),
                          device="cpu", progress=False)
    exported = torch.load(hist["files"]["semantic_decoder"], weights_only=True)
    assert list(exported) == list(ais)
    assert all(torch.equal(exported[k], ais[k]) for k in ais if not k.startswith("out_conv."))
    assert exported["out_conv.weight"].shape[0] == 6


# ------------------------------------------------------------------------------------- (d)


def test_resume_reproduces_an_uninterrupted_run(tmp_path, gbm):
    train, val = gbm
    cfg = quick(iterations=4, class_weights="auto", oversample=True)
    a = train_semantic(small_model(), train, val, tmp_path / "a", cfg, device="cpu", progress=False)
    half = quick(iterations=2, class_weights="auto", oversample=True)
    train_semantic(small_model(), train, val, tmp_path / "b", half, device="cpu", progress=False)
    # resume on a freshly built model: everything must come from the checkpoint
    b = train_semantic(small_model(seed=5), train, val, tmp_path / "b", cfg, device="cpu", progress=False, resume=True)
    ca = load_checkpoint(tmp_path / "a" / "checkpoints" / "latest.pt")
    cb = load_checkpoint(tmp_path / "b" / "checkpoints" / "latest.pt")
    for key in ("model_state", "decoder_state", "semantic_decoder_state"):
        assert states_equal(ca[key], cb[key]), key
    oa, ob = ca["optimizer_state"], cb["optimizer_state"]
    assert oa["param_groups"] == ob["param_groups"]
    for i in oa["state"]:
        assert all(torch.equal(oa["state"][i][n], ob["state"][i][n]) for n in oa["state"][i])
    assert ca["scheduler_state"] == cb["scheduler_state"]
    assert a["train_loss"] == b["train_loss"] and len(a["train_loss"]) == 4
    assert same(a["validation"], b["validation"]) and [v["iteration"] for v in a["validation"]] == [2, 4]
    assert a["class_weights"] == b["class_weights"] == ca["class_weights"]
    # exports agree too
    ea = torch.load(a["files"]["semantic_decoder"], weights_only=True)
    eb = torch.load(b["files"]["semantic_decoder"], weights_only=True)
    assert states_equal(ea, eb)
    # resuming with other settings is refused
    with pytest.raises(ValueError, match="lr"):
        SemanticTrainer(small_model(), train, val, tmp_path / "b", quick(iterations=6, lr=1e-3, class_weights="auto",
                                                                        oversample=True), "cpu", resume=True)
    with pytest.raises(FileNotFoundError):
        SemanticTrainer(small_model(), train, val, tmp_path / "c", cfg, "cpu", resume=True)


# What the run folders of pathosam 0.1.0 hold, recorded from one written before the trainers shared
# one loop (pathosam.training.loop): the checkpoint keys, the extra config.json entries, the log's names.
FIRST_LAYOUT_CHECKPOINT = ("iteration", "best_metric", "best_iteration", "current_metric", "history", "train_loss",
                           "model_state", "decoder_state", "semantic_decoder_state", "optimizer_state",
                           "scheduler_state", "scaler_state", "class_weights", "config")
FIRST_LAYOUT_LOG = {("time", "seconds_this_session"), ("train", "loss"), ("train", "lr"), ("val", "dice_connective"),
                    ("val", "dice_dead"), ("val", "dice_epithelial"), ("val", "dice_inflammatory"),
                    ("val", "dice_mean"), ("val", "dice_neoplastic"), ("val", "loss"), ("val", "pixel_accuracy")}


def test_a_run_folder_in_the_first_layout_resumes(tmp_path, gbm):
    """A folder holding only what the first layout held resumes to the same weights as an
    uninterrupted run; the files, config.json and log names are those of that layout."""
    import csv
    import json

    train, val = gbm
    cfg = quick(iterations=4)
    a = train_semantic(small_model(), train, val, tmp_path / "a", cfg, device="cpu", progress=False)
    run = tmp_path / "b"
    train_semantic(small_model(), train, val, run, cfg, device="cpu", progress=False, stop_after=2)
    files = sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file() and "tensorboard" not in p.parts)
    assert files == ["checkpoints/best.pt", "checkpoints/latest.pt", "config.json", "log.csv"]
    config = json.loads((run / "config.json").read_text())
    assert list(config) == ["trainer", *cfg.to_dict(), "class_weights_resolved", "model", "device"]
    assert config["trainer"] == "semantic"
    with open(run / "log.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["iteration", "phase", "name", "value"] and {(r[1], r[2]) for r in rows[1:]} == FIRST_LAYOUT_LOG
    for name in ("latest", "best"):
        path = run / "checkpoints" / f"{name}.pt"
        ck = torch.load(path, map_location="cpu", weights_only=True)
        assert set(ck) == set(FIRST_LAYOUT_CHECKPOINT)
        torch.save({k: ck[k] for k in FIRST_LAYOUT_CHECKPOINT}, path)
    b = train_semantic(small_model(seed=5), train, val, run, cfg, device="cpu", progress=False, resume=True)
    ca = load_checkpoint(tmp_path / "a" / "checkpoints" / "latest.pt")
    cb = load_checkpoint(run / "checkpoints" / "latest.pt")
    for key in ("model_state", "decoder_state", "semantic_decoder_state"):
        assert states_equal(ca[key], cb[key]), key
    assert a["train_loss"] == b["train_loss"] and same(a["validation"], b["validation"])


# ------------------------------------------------------------------------------------- (e)


def test_exported_files_load_with_load_model(tmp_path, gbm):
    train, val = gbm
    model = small_model()
    cfg = quick(iterations=2, validate_every=1, export_from="latest")
    hist = train_semantic(model, train, val, tmp_path, cfg, device="cpu", progress=False)
    files = hist["files"]
    assert {"sam", "decoder", "semantic_decoder"} <= files.keys()
    loaded = pathosam.load_model(files["sam"], decoder=files["decoder"], semantic_decoder=files["semantic_decoder"],
                                 device="cpu")
    assert states_equal(loaded.sam.state_dict(), {k: v.contiguous() for k, v in model.sam.state_dict().items()})
    assert loaded.semantic_decoder.out_channels == 6 and loaded.decoder.out_channels == 3
    image = train[0].image[:96, :80]
    emb = loaded.embed(image, progress=False)
    maps = loaded.semantic_maps(emb, progress=False)
    assert maps.shape == (6, 96, 80) and np.isfinite(maps).all()
    np.testing.assert_allclose(maps, model.semantic_maps(model.embed(image, progress=False), progress=False),
                               rtol=0, atol=1e-5)
    # the training checkpoint itself loads as well (SAM + AIS decoder), plus the exported head
    ck_model = pathosam.load_model(tmp_path / "checkpoints" / "latest.pt", semantic_decoder=files["semantic_decoder"],
                                   device="cpu")
    assert ck_model.decoder is not None and ck_model.semantic_decoder is not None
    assert len(hist["validation"]) == 2 and hist["best_iteration"] in (1, 2)
    assert (tmp_path / "checkpoints" / "best.pt").is_file() and (tmp_path / "log.csv").is_file()


# ------------------------------------------------------------------------------------- (f)


def instance_grid(counts: list[int]) -> Sample:
    """One-pixel instances: counts[c - 1] instances of class c."""
    n = sum(counts)
    side = int(np.ceil(np.sqrt(n)))
    labels = np.zeros(side * side, np.uint32)
    classes = np.zeros(side * side, np.uint8)
    labels[:n] = np.arange(1, n + 1)
    classes[:n] = np.repeat(np.arange(1, len(counts) + 1), counts)
    return Sample("grid", np.zeros((side, side, 3), np.uint8), labels.reshape(side, side), classes.reshape(side, side))


def test_class_weight_modes():
    assert resolve_class_weights("none") is None and resolve_class_weights(None) is None
    assert resolve_class_weights("reference") == list(REFERENCE_CLASS_WEIGHTS) == [1, 1, 7, 6, 10, 8]
    assert resolve_class_weights([1, 2, 3, 4, 5, 6]) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    with pytest.raises(ValueError, match="6 values"):
        resolve_class_weights([1, 2, 3])
    with pytest.raises(ValueError):
        resolve_class_weights("reference", num_classes=4)
    with pytest.raises(ValueError):
        resolve_class_weights([1, -1, 1, 1, 1, 1])
    # patho-sam's class frequencies (as instance counts) give its weights
    grid = instance_grid([470, 180, 223, 16, 111])
    assert resolve_class_weights("auto", [grid]) == [1.0, 1.0, 7.0, 6.0, 10.0, 8.0]
    with pytest.raises(ValueError):
        resolve_class_weights("auto", [Sample("empty", np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint32),
                                              np.zeros((4, 4), np.uint8))])
    with pytest.raises(ValueError):
        SemanticConfig(class_weights="sometimes")


def test_trainer_uses_the_resolved_weights(tmp_path):
    data = [color_blobs()]
    for spec, expected in (("none", None), ("reference", [1, 1, 7, 6, 10, 8]), ([1, 2, 1, 2, 1, 2], [1, 2, 1, 2, 1, 2])):
        tr = SemanticTrainer(small_model(), data, None, tmp_path / str(spec), quick(class_weights=spec), "cpu")
        assert tr.class_weights == expected
        scores = torch.randn(2, 6, 8, 8)
        target = torch.randint(0, 6, (2, 8, 8))
        assert torch.equal(tr.loss(scores, target), weighted_cross_entropy(scores, target, expected))


def test_stop_after_then_resume_and_worker_batches(tmp_path, gbm):
    train, val = gbm
    cfg = quick(iterations=3, batch_size=1, validate_every=10)
    full = train_semantic(small_model(), train, None, tmp_path / "full", cfg, device="cpu", progress=False)
    part = train_semantic(small_model(), train, None, tmp_path / "part", cfg, device="cpu", progress=False, stop_after=1)
    assert part["iteration"] == 1 and part["files"] == {}
    rest = train_semantic(small_model(), train, None, tmp_path / "part", cfg, device="cpu", progress=False, resume=True)
    assert rest["train_loss"] == full["train_loss"]
    assert states_equal(torch.load(rest["files"]["semantic_decoder"], weights_only=True),
                        torch.load(full["files"]["semantic_decoder"], weights_only=True))
    # patches loaded by worker processes are the same as in the main process
    tr = SemanticTrainer(small_model(), train, val, tmp_path / "w", quick(num_workers=1), "cpu")
    for i, (images, target) in zip(range(1, 3), tr._batches(1, 3)):
        ref_images, ref_target = tr.batch(i)
        assert torch.equal(images, ref_images) and torch.equal(target, ref_target)
        assert images.shape == (2, 3, 64, 64) and target.dtype == torch.int64


def test_head_activation_and_config_checks(tmp_path):
    data = [color_blobs()]
    tr = SemanticTrainer(small_model(), data, None, tmp_path, quick(head_activation="sigmoid"), "cpu")
    images, _ = tr.batch(0)
    with torch.no_grad():
        scores = tr.logits(images, "per_tile", train=False)
    assert scores.shape == (2, 6, 64, 64) and scores.min() >= 0 and scores.max() <= 1
    assert tr.decoder.final_activation == "sigmoid"  # restored after the forward
    tr = SemanticTrainer(small_model(), data, None, tmp_path, quick(), "cpu")
    with torch.no_grad():
        raw = tr.logits(images, "per_tile", train=False)
    assert raw.min() < 0 or raw.max() > 1
    # defaults resolved at start: batch 2 off CUDA, validation once per pass over the training
    # set (the reference's epoch), one validation patch per validation image
    resolved = SemanticTrainer(small_model(), data * 5, data, tmp_path, SemanticConfig(), "cpu").config
    assert (resolved.batch_size, resolved.validate_every, resolved.val_patches) == (2, 3, 1)
    with pytest.raises(ValueError, match="class map"):
        SemanticTrainer(small_model(), [Sample("x", data[0].image, data[0].labels, None)], None, tmp_path, quick(), "cpu")
    with pytest.raises(ValueError, match="semantic decoder"):
        init_semantic_decoder(small_model(), "semantic")
    for bad in (dict(decoder_init="imagenet"), dict(head_activation="softmax"), dict(dice_weight=2.0), dict(iterations=-1)):
        with pytest.raises(ValueError):
            SemanticConfig(**bad)
