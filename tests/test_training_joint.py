"""The joint trainer (iterative prompting + UNETR), its resume, export and ``pathosam train``.

A small SAM-architecture model (width 64, depth 2, 256 px input, narrow UNETR) keeps these CPU
runs to seconds; the objective, the resume logic and the files are the same for any size.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import pathosam
from pathosam.training.models import new_model
from pathosam.training.trainer import JointTrainer, TrainConfig

FAST = dict(batch_size=1, patch_shape=(96, 96), n_objects=3, n_sub_iterations=3, validate_every=2, val_patches=2,
            checkpoint_every=1000, lr=1e-3)


def small():
    return new_model(64, 2, img_size=256, decoder_features=8, seed=1)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gbm40(data_dir):
    from pathosam.datasets import open_dataset

    ds = open_dataset(data_dir / "gbm40", "folder")
    return ds[:4], ds[20:22]


def _tensors(model):
    return {**{f"sam.{k}": v for k, v in model.sam.state_dict().items()},
            **{f"dec.{k}": v for k, v in model.decoder.state_dict().items()}}


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(gbm40, tmp_path):
    train, val = gbm40
    cfg = TrainConfig(iterations=4, **FAST)
    a = JointTrainer(small(), train, val, tmp_path / "a", cfg, device="cpu")
    a.fit(progress=False)
    b = JointTrainer(small(), train, val, tmp_path / "b", cfg, device="cpu")
    b.fit(progress=False, stop_after=2)
    assert b.state.iteration == 2
    c = JointTrainer(small(), train, val, tmp_path / "b", cfg, device="cpu")  # a new process would do this
    c.fit(progress=False, resume=True)
    ta, tc = _tensors(a.model), _tensors(c.model)
    assert ta.keys() == tc.keys()
    for k in ta:
        assert torch.equal(ta[k], tc[k]), k
    assert [h["metric"] for h in a.state.history] == [h["metric"] for h in c.state.history]
    # the log of the resumed run has each iteration once
    import pandas as pd

    log = pd.read_csv(tmp_path / "b" / "log.csv")
    assert sorted(log[(log.phase == "train") & (log.name == "lr")].iteration) == [1, 2, 3, 4]


# What the run folders of pathosam 0.1.0 hold, recorded from one written before the trainers shared
# one loop (pathosam.training.loop): the checkpoint keys and the log's value names.
FIRST_LAYOUT_CHECKPOINT = ("iteration", "best_metric", "history", "model_state", "decoder_state", "optimizer_state",
                           "scheduler_state", "scaler_state", "config")
FIRST_LAYOUT_LOG = {("time", "seconds_this_session"), ("train", "interactive_loss"), ("train", "lr"),
                    ("train", "mask_dice_loss"), ("train", "unetr_loss"), ("val", "interactive_dice_loss"),
                    ("val", "metric"), ("val", "unetr_loss")}


def run_files(run) -> list[str]:
    return sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file() and "tensorboard" not in p.parts)


def test_a_run_folder_in_the_first_layout_resumes(gbm40, tmp_path):
    """A folder holding only what the first layout held (its checkpoint keys) resumes to the same
    weights as an uninterrupted run; the files, config.json and log names are those of that layout."""
    import csv

    train, val = gbm40
    cfg = TrainConfig(iterations=4, **FAST)
    a = JointTrainer(small(), train, val, tmp_path / "a", cfg, device="cpu")
    a.fit(progress=False)
    run = tmp_path / "b"
    JointTrainer(small(), train, val, run, cfg, device="cpu").fit(progress=False, stop_after=2)
    assert run_files(run) == ["checkpoints/best.pt", "checkpoints/latest.pt", "config.json", "log.csv"]
    assert json.loads((run / "config.json").read_text()) == {"trainer": "joint", **json.loads(json.dumps(cfg.to_dict())),
                                                             "model": "new"}
    with open(run / "log.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["iteration", "phase", "name", "value"] and {(r[1], r[2]) for r in rows[1:]} <= FIRST_LAYOUT_LOG
    for name in ("latest", "best"):
        path = run / "checkpoints" / f"{name}.pt"
        ck = torch.load(path, map_location="cpu", weights_only=True)
        torch.save({k: ck[k] for k in FIRST_LAYOUT_CHECKPOINT}, path)  # KeyError: a key of the layout is gone
    c = JointTrainer(small(), train, val, run, cfg, device="cpu", resume=True)
    assert c.state.iteration == 2 and c.state.best_iteration is None
    c.fit(progress=False)
    ta, tc = _tensors(a.model), _tensors(c.model)
    assert all(torch.equal(ta[k], tc[k]) for k in ta)
    assert [h["metric"] for h in a.state.history] == [h["metric"] for h in c.state.history]
    assert set(FIRST_LAYOUT_CHECKPOINT) <= set(torch.load(run / "checkpoints" / "latest.pt", weights_only=True))


def test_resume_refuses_other_settings(gbm40, tmp_path):
    train, val = gbm40
    JointTrainer(small(), train, val, tmp_path, TrainConfig(iterations=2, **FAST), device="cpu").fit(
        progress=False, stop_after=1)
    other = TrainConfig(iterations=2, **{**FAST, "lr": 0.5})
    with pytest.raises(ValueError, match="other settings"):
        JointTrainer(small(), train, val, tmp_path, other, device="cpu").fit(progress=False, resume=True)


def test_export_layouts_load_back_with_reference_decoder_keys(gbm40, tmp_path, vectors):
    train, val = gbm40
    t = JointTrainer(small(), train, val, tmp_path, TrainConfig(iterations=2, **FAST), device="cpu")
    t.fit(progress=False)
    files = t.export()
    expected = _tensors(t.model)
    ref_keys = [k for k, *_ in json.loads((vectors / "state_shapes.json").read_text())["decoder"]["transposed_3ch"]["keys"]]
    dec = torch.load(files["decoder"], weights_only=True)
    assert list(dec) == ref_keys  # the released AIS decoder's key names, in order
    for model in (pathosam.load_model(files["sam"], decoder=files["decoder"], device="cpu"),
                  pathosam.load_model(files["model_and_decoder"], device="cpu"),
                  pathosam.load_model(tmp_path / "checkpoints" / "best.pt", device="cpu")):
        got = _tensors(model)
        for k in expected:
            assert torch.equal(got[k], expected[k]), k
        assert model.sam.img_size == 256


def test_two_optimizer_steps_per_iteration_and_frozen_decoder_option(gbm40, tmp_path):
    train, val = gbm40
    t = JointTrainer(small(), train, None, tmp_path, TrainConfig(iterations=1, **FAST), device="cpu")
    t.fit(progress=False)
    def step(p):
        return int(t.optimizer.state[p]["step"])

    # the image encoder gets both steps (interactive + UNETR), the rest one each
    assert step(next(t.sam.image_encoder.parameters())) == 2
    assert step(next(t.sam.mask_decoder.parameters())) == 1
    assert step(next(t.decoder.parameters())) == 1
    m = small()
    before = {k: v.clone() for k, v in m.decoder.state_dict().items()}
    t = JointTrainer(m, train, None, tmp_path / "nodec", TrainConfig(iterations=1, train_decoder=False,
                                                                     **FAST), device="cpu")
    t.fit(progress=False)
    for k, v in m.decoder.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_short_run_lowers_the_validation_loss_and_raises_msa(gbm40, tmp_path):
    """Training from scratch for a short while: the validation metric falls and the AIS mSA on
    held-out images rises above the untrained model's (numbers in docs/training.md)."""
    from pathosam.evaluation.grid_search import evaluate_automatic

    train, val = gbm40
    cfg = TrainConfig(iterations=60, batch_size=2, patch_shape=(128, 128), n_objects=6, n_sub_iterations=2,
                      validate_every=60, val_patches=4, checkpoint_every=1000, lr=2e-3, seed=3)
    model = small()
    t = JointTrainer(model, train, val, tmp_path, cfg, device="cpu")
    before = t.validate()
    crops = [_Crop(s.name, s.image[:256, :256], s.labels[:256, :256]) for s in val]
    msa_before = evaluate_automatic(model, crops, "ais", tile_shape=None, progress=False).per_image["mSA"].mean()
    t.fit(progress=False)
    after = t.state.history[-1]
    msa_after = evaluate_automatic(model, crops, "ais", tile_shape=None, progress=False).per_image["mSA"].mean()
    print(f"validation metric {before['metric']:.4f} -> {after['metric']:.4f}; "
          f"UNETR loss {before['unetr_loss']:.4f} -> {after['unetr_loss']:.4f}; mSA {msa_before:.4f} -> {msa_after:.4f}")
    assert after["metric"] < before["metric"]
    assert after["unetr_loss"] < before["unetr_loss"]
    assert msa_after > msa_before


class _Crop:
    def __init__(self, name, image, labels):
        self.name, self.image, self.labels = name, np.ascontiguousarray(image), np.ascontiguousarray(labels)


def train_args(data_dir, paths, out, *extra: str, iterations: int = 1, patch: int = 96, sub_iterations: int = 1,
               validate_every: int = 1) -> list[str]:
    """`pathosam train` arguments: the small model saved at ``paths`` (SAM, decoder) on GBM40, batch
    1, 2 objects, 1 validation patch, CPU; ``extra`` options go right after ``--decoder``."""
    return ["train", "--data", str(data_dir / "gbm40"), "--from", str(paths[0]), "--decoder", str(paths[1]), *extra,
            "--out", str(out), "--iterations", str(iterations), "--batch-size", "1", "--patch-shape", str(patch),
            "--n-objects", "2", "--sub-iterations", str(sub_iterations), "--validate-every", str(validate_every),
            "--val-patches", "1", "--device", "cpu", "-q", "--val-fraction", "0.1"]


def test_cli_train_and_resume(data_dir, tmp_path, capsys):
    from pathosam.cli import main

    start = small()
    paths = start.save(tmp_path / "start.pt")
    run = tmp_path / "run"
    assert main(train_args(data_dir, paths, run, iterations=2, sub_iterations=2)) == 0
    out = capsys.readouterr().out
    assert "trained 2 iterations" in out and "sam.pt" in out
    assert (run / "export" / "sam_decoder.pt").is_file()
    assert (run / "log.csv").is_file() and (run / "config.json").is_file()
    # --resume with more iterations continues from the latest checkpoint
    more = train_args(data_dir, paths, run, iterations=3, sub_iterations=2)
    assert main([*more, "--resume"]) == 0
    assert "trained 3 iterations" in capsys.readouterr().out
    assert main([*more, "--resume", "--lr", "0.5"]) == 1  # other settings: refused
    assert "other settings" in capsys.readouterr().err


def test_cli_image_skip_branch_is_trained_and_kept_on_resume(data_dir, tmp_path, capsys):
    from pathosam.cli import main
    from pathosam.models.checkpoint import read_checkpoint

    paths = small().save(tmp_path / "start.pt")
    run = tmp_path / "run"
    assert main(train_args(data_dir, paths, run, "--image-skip", iterations=2, validate_every=2)) == 0
    dec = read_checkpoint(run / "export" / "sam_decoder.pt").decoder_state
    head = dec["decoder_head.block.1.weight"]
    assert head.shape[1] == 3 * 8 and "image_conv.block.1.weight" in dec
    assert head[:, 16:].abs().sum() > 0  # the new channels started at zero and were trained
    model = pathosam.load_model(run / "checkpoints" / "latest.pt", device="cpu")
    assert model.needs_image()
    capsys.readouterr()
    assert main([*train_args(data_dir, paths, run, iterations=3, validate_every=2), "--resume"]) == 1
    assert "--image-skip" in capsys.readouterr().err
    assert main([*train_args(data_dir, paths, run, "--image-skip", iterations=3, validate_every=2), "--resume"]) == 0


def test_cli_input_size_trains_at_the_new_size_and_resume_needs_it(data_dir, tmp_path, capsys):
    from pathosam.cli import main

    paths = small().save(tmp_path / "start.pt")
    run = tmp_path / "run"
    assert main(train_args(data_dir, paths, run, "--input-size", "512", patch=192)) == 0
    model = pathosam.load_model(run / "checkpoints" / "latest.pt", device="cpu")
    assert model.sam.img_size == 512 and model.sam.config.global_attn_indexes == (1,)
    capsys.readouterr()
    assert main([*train_args(data_dir, paths, run, iterations=2, patch=192), "--resume"]) == 1  # no --input-size
    assert "--input-size 512" in capsys.readouterr().err
    assert main([*train_args(data_dir, paths, run, "--input-size", "512", iterations=2, patch=192), "--resume"]) == 0
    assert main(train_args(data_dir, paths, tmp_path / "bad", "--input-size", "500", patch=192)) == 2  # usage error
    assert "multiple of 16" in capsys.readouterr().err


def test_cli_scale_jitter_zooms_training_patches_only(data_dir, tmp_path, capsys):
    from pathosam.cli import main

    paths = small().save(tmp_path / "start.pt")
    run = tmp_path / "run"
    args = train_args(data_dir, paths, run, "--scale-jitter", "0.8,1.5")
    assert main(args) == 0
    assert json.loads((run / "config.json").read_text())["scale_range"] == [0.8, 1.5]
    assert main([*train_args(data_dir, paths, run, iterations=2), "--resume"]) == 1  # the zoom is a setting of the run
    assert main([*train_args(data_dir, paths, run, "--scale-jitter", "0.8,1.5", iterations=2), "--resume"]) == 0
    capsys.readouterr()
    for bad in ["1.5,0.8", "x", "0,1"]:
        assert main(train_args(data_dir, paths, run, "--scale-jitter", bad)) == 2
        assert "--scale-jitter" in capsys.readouterr().err
    assert main([*args, "--semantic"]) == 2


def test_trainer_zooms_training_but_not_validation_patches(gbm40, tmp_path):
    train, val = gbm40
    t = JointTrainer(small(), train, val, tmp_path, TrainConfig(iterations=1, scale_range=(0.5, 2.0), **FAST),
                     device="cpu")
    assert t.train_patches.scale_range == (0.5, 2.0) and t.val_patches.scale_range is None
    assert "window" in t.train_patches.patch(0, 0)


def test_a_killed_run_resumes_from_its_last_checkpoint(gbm40, tmp_path, monkeypatch):
    train, _ = gbm40
    cfg = TrainConfig(iterations=3, **{**FAST, "checkpoint_every": 1})
    t = JointTrainer(small(), train, None, tmp_path, cfg, device="cpu")
    real = t.train_step

    def dies_at_2(it):
        if it == 2:
            raise KeyboardInterrupt
        return real(it)

    monkeypatch.setattr(t, "train_step", dies_at_2)
    with pytest.raises(KeyboardInterrupt):
        t.fit(progress=False)
    latest = torch.load(tmp_path / "checkpoints" / "latest.pt", map_location="cpu", weights_only=False)
    assert latest["iteration"] == 2  # the last finished iteration, not only the numbered checkpoint
    again = JointTrainer(small(), train, None, tmp_path, cfg, device="cpu")
    assert again.fit(resume=True, progress=False).iteration == 3
