"""Every way a weights file can be wrong ends in one CheckpointError naming the file and the problem.

Broken files are generated from a tiny random model (no shared data needed): wrong shapes,
missing / unexpected keys, NaN / inf values, integer tensors, non-tensors, truncated and
garbage files, in every layout the loader reads, and through ``pathosam segment --checkpoint``.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import pathosam
from pathosam.predictor import build_decoder, build_sam_from_state
from pathosam.models import CheckpointError, SamConfig, build_sam, read_checkpoint
from pathosam.models.unetr import UNETRDecoder

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = SamConfig(32, 2, 2, (1,), img_size=64, window_size=2)
# one key per part of the model, none of them read by the architecture inference
SAM_KEYS = ("image_encoder.blocks.0.mlp.lin1.weight", "prompt_encoder.point_embeddings.1.weight",
            "mask_decoder.iou_prediction_head.layers.0.weight")
DECODER_KEY = "decoder_head.block.4.weight"
SEMANTIC_KEY = "decoder.blocks.0.block.4.weight"
KINDS = ("shape", "missing", "nan", "inf", "int")


def _shape(shape: torch.Size) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


@pytest.fixture(scope="module")
def states() -> dict[str, dict[str, torch.Tensor]]:
    """SAM, instance and semantic decoder states of a tiny random model (SAM in fp16: smaller files)."""
    torch.manual_seed(0)
    sam = {k: v.half() if v.is_floating_point() else v for k, v in build_sam(CONFIG).state_dict().items()}
    dec = UNETRDecoder(3, transposed=True, embed_dim=256, features=4).state_dict()
    sem = UNETRDecoder(6, transposed=False, embed_dim=256, features=4).state_dict()
    return {"sam": sam, "decoder": dict(dec), "semantic": dict(sem)}


@pytest.fixture(scope="module")
def good_sam(states, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("good") / "good_sam.pt"
    torch.save(states["sam"], path)
    return path


def _corrupt(state: dict, key: str, kind: str) -> tuple[dict, list[str]]:
    """``state`` with ``key`` broken as ``kind``, and the phrases the error must contain."""
    state = dict(state)
    t = state[key]
    if kind == "shape":
        bad = torch.zeros(t.shape[0] + 1, *t.shape[1:], dtype=t.dtype)
        state[key] = bad
        return state, [f"{key}: expected {_shape(t.shape)}, found {_shape(bad.shape)}"]
    if kind == "missing":
        del state[key]
        return state, ["1 missing key", repr(key)]
    if kind == "nan":
        state[key] = t.clone().flatten()
        state[key][:12] = float("nan")
        state[key] = state[key].view(t.shape)
        return state, [f"{key}: 12 NaN/inf values"]
    if kind == "inf":
        state[key] = t.clone()
        state[key].view(-1)[-1] = -float("inf")
        return state, [f"{key}: 1 NaN/inf value"]
    if kind == "int":
        state[key] = t.to(torch.int64)
        return state, [f"{key}: integer tensor (torch.int64); weights must be floating point"]
    if kind == "unexpected":
        state[key + "_extra"] = t.clone()
        return state, ["1 unexpected key", repr(key + "_extra")]
    raise AssertionError(kind)


def _raises(call, *phrases: str) -> str:
    with pytest.raises(CheckpointError) as err:
        call()
    msg = str(err.value)
    assert "\n" not in msg
    for p in phrases:
        assert p in msg, f"{p!r} not in {msg!r}"
    return msg


# ---------------------------------------------------------------- the state checks


def test_several_problems_are_named_and_counted(states):
    bad = dict(states["sam"])
    for key in list(bad)[-5:]:
        del bad[key]
    for key in SAM_KEYS:
        bad[key] = torch.zeros(1, 2, 3)
    msg = _raises(lambda: build_sam_from_state(bad, "m.pt"), "5 missing keys", "and 2 more",
                  "3 tensors have the wrong shape", "found (1, 2, 3)")
    assert msg.count("found (1, 2, 3)") == 3
    bad = {k: v.float() for k, v in states["sam"].items()}
    bad[SAM_KEYS[0]] = bad[SAM_KEYS[0]].to(torch.int32)
    bad[SAM_KEYS[1]] = torch.full_like(bad[SAM_KEYS[1]], float("nan"))
    # a structural problem is reported first (the NaN test runs on loadable weights only)
    msg = _raises(lambda: build_sam_from_state(bad, "m.pt"), "integer tensor (torch.int32)")
    assert "NaN" not in msg


def test_large_finite_values_are_not_mistaken_for_inf(states):
    # the sum of these fp16 values overflows; each value is finite and the weights load
    ok = dict(states["sam"])
    ok[SAM_KEYS[0]] = torch.full_like(ok[SAM_KEYS[0]], 60000.0)
    sam = build_sam_from_state(ok, "m.pt")
    assert torch.all(sam.state_dict()[SAM_KEYS[0]] == 60000.0)


# ---------------------------------------------------------------- architecture inference


def _mutations(t: torch.Tensor) -> list:
    return [None, torch.zeros(()), torch.zeros(3), t.clone()[None], torch.zeros(*[0] * t.dim()),
            torch.zeros(*t.shape[:-1], t.shape[-1] + 1), "not a tensor"]


@pytest.mark.parametrize("key", [
    "image_encoder.patch_embed.proj.weight", "image_encoder.pos_embed", "image_encoder.blocks.0.norm1.weight",
    "image_encoder.blocks.0.attn.rel_pos_h", "image_encoder.blocks.1.attn.rel_pos_h",
])
def test_malformed_sam_inference_keys(states, key):
    for value in _mutations(states["sam"][key]):
        bad = dict(states["sam"])
        if value is None:
            del bad[key]
        else:
            bad[key] = value
        _raises(lambda: build_sam_from_state(bad, "m.pt"), "m.pt: SAM weights")


@pytest.mark.parametrize("key", ["out_conv.weight", "base.block.1.weight", "deconv1.block.1.block.weight",
                                 "deconv4.block.1.block.weight", "decoder.samplers.0.block.weight"])
def test_malformed_decoder_inference_keys(states, key):
    for value in _mutations(states["decoder"][key]):
        bad = dict(states["decoder"])
        if value is None:
            del bad[key]
        else:
            bad[key] = value
        _raises(lambda: build_decoder(bad, source="d.pt"), "d.pt: UNETR decoder weights")


# ---------------------------------------------------------------- every file layout


def _write(tmp_path: Path, states: dict, layout: str, part: str, key: str, kind: str) -> tuple[dict, list[str]]:
    """Write a file of ``layout`` whose ``part`` is broken; return load_model kwargs and phrases."""
    bad, phrases = _corrupt(states[part], key, kind)
    sam = bad if part == "sam" else states["sam"]
    dec = bad if part == "decoder" else states["decoder"]
    path = tmp_path / f"{layout}_{part}_{kind}.pt"
    if layout == "released":
        torch.save(sam, path)
    elif layout == "training":
        torch.save({"model_state": {"sam." + k: v for k, v in sam.items()}, "decoder_state": dec,
                    "iteration": 10, "optimizer_state": {"state": {}}}, path)
    elif layout == "model_and_decoder":
        torch.save({"model_state": sam, "decoder_state": dec}, path)
    else:
        torch.save(bad, path)
        return {layout: path}, phrases
    return {"model": path}, phrases


@pytest.mark.parametrize("kind", KINDS + ("unexpected",))
@pytest.mark.parametrize("layout,part,key", [
    ("released", "sam", SAM_KEYS[0]),            # image encoder
    ("training", "sam", SAM_KEYS[2]),            # mask decoder
    ("model_and_decoder", "sam", SAM_KEYS[1]),   # prompt encoder
    ("training", "decoder", DECODER_KEY),
    ("model_and_decoder", "decoder", DECODER_KEY),
    ("decoder", "decoder", DECODER_KEY),
    ("semantic_decoder", "semantic", SEMANTIC_KEY),
])
def test_load_model_names_file_and_key_in_every_layout(tmp_path, states, good_sam, layout, part, key, kind):
    kwargs, phrases = _write(tmp_path, states, layout, part, key, kind)
    bad_file = next(iter(kwargs.values()))
    what = {"sam": "SAM weights", "decoder": "UNETR decoder weights", "semantic": "semantic decoder weights"}[part]
    msg = _raises(lambda: pathosam.load_model(**{"model": good_sam, **kwargs}, device="cpu"),
                  f"{bad_file}: {what}: ", *phrases)
    arch = {"sam": "ViT width 32, depth 2, 2 heads, 64 px input",
            "decoder": "transposed UNETR decoder, widths (32, 16, 8, 4), 3 channels",
            "semantic": "interpolating UNETR decoder, widths (32, 16, 8, 4), 6 channels"}[part]
    # the architecture the shapes were compared with is named when keys or shapes do not fit
    assert (f"(architecture inferred from the weights: {arch})" in msg) == (kind in ("shape", "missing", "unexpected"))


def test_good_files_in_every_layout_still_load(tmp_path, states, good_sam):
    torch.save({"model_state": {"sam." + k: v for k, v in states["sam"].items()},
                "decoder_state": states["decoder"]}, tmp_path / "train.pt")
    torch.save(states["semantic"], tmp_path / "sem.pt")
    m = pathosam.load_model(tmp_path / "train.pt", semantic_decoder=tmp_path / "sem.pt", device="cpu")
    assert m.decoder.out_channels == 3 and m.semantic_decoder.out_channels == 6
    assert torch.equal(m.sam.state_dict()[SAM_KEYS[0]], states["sam"][SAM_KEYS[0]].float())


# ---------------------------------------------------------------- unreadable files


@pytest.mark.parametrize("legacy", [False, True])
def test_truncated_files(tmp_path, states, legacy):
    src = tmp_path / "full.pt"
    torch.save(states["decoder"], src, _use_new_zipfile_serialization=not legacy)
    data = src.read_bytes()
    for n in (1, 7, 64, 1000, len(data) // 3, len(data) // 2, len(data) - 100, len(data) - 1):
        bad = tmp_path / f"cut_{n}.pt"
        bad.write_bytes(data[:n])
        _raises(lambda: read_checkpoint(bad), str(bad))


@pytest.mark.parametrize("name,content,phrase", [
    ("empty.pt", b"", "empty file"),
    ("garbage.pt", bytes(range(256)) * 40, "neither a zip archive nor a pickle"),
    ("text.pt", b"model weights go here\n", "neither a zip archive nor a pickle"),
    ("pickle.pt", pickle.dumps([1, 2, 3]), "not a PyTorch checkpoint we can read safely"),
    ("cut_zip.pt", b"PK\x03\x04" + bytes(200), "truncated or corrupt file?): an incomplete zip archive"),
])
def test_unreadable_files(tmp_path, name, content, phrase):
    bad = tmp_path / name
    bad.write_bytes(content)
    _raises(lambda: read_checkpoint(bad), str(bad), phrase)


def test_directory_and_foreign_zip(tmp_path):
    (tmp_path / "weights.pt").mkdir()
    _raises(lambda: pathosam.load_model(tmp_path / "weights.pt", device="cpu"), "weights.pt: is a directory")
    with zipfile.ZipFile(tmp_path / "archive.pt", "w") as z:
        z.writestr("readme.txt", "not torch")
    _raises(lambda: read_checkpoint(tmp_path / "archive.pt"), "archive.pt: not a readable PyTorch checkpoint")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    _raises(lambda: read_checkpoint(tmp_path / "list.pt"), "list.pt: expected a state dict", "got list")


@pytest.mark.parametrize("obj,phrase", [
    ({"image_encoder.pos_embed": "text"}, "image_encoder.pos_embed: a value of type str, not a tensor"),
    ({3: torch.zeros(1)}, "key 3 is of type int, not a str"),
    ({"model_state": [torch.zeros(1)]}, "'model_state' is of type list, not a dict of tensors"),
    ({"model_state": {"sam.image_encoder.x": 1.5}}, "sam.image_encoder.x: a value of type float, not a tensor"),
])
def test_non_tensor_values(tmp_path, obj, phrase):
    path = tmp_path / "odd.pt"
    torch.save(obj, path)
    _raises(lambda: read_checkpoint(path), f"{path}: ", phrase)


# ---------------------------------------------------------------- through the command line


def test_cli_prints_one_line_and_exits_1(tmp_path, states, good_sam, capsys):
    from PIL import Image

    from pathosam.cli import main

    image = tmp_path / "tile.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    bad_sam, _ = _corrupt(states["sam"], SAM_KEYS[0], "shape")
    torch.save(bad_sam, tmp_path / "bad_shape.pt")
    bad_dec, _ = _corrupt(states["decoder"], DECODER_KEY, "nan")
    torch.save(bad_dec, tmp_path / "bad_decoder.pt")
    (tmp_path / "cut.pt").write_bytes(good_sam.read_bytes()[:5000])
    cases = [
        (["--checkpoint", str(tmp_path / "bad_shape.pt")], ["bad_shape.pt", SAM_KEYS[0], "expected (128, 32)"]),
        (["--checkpoint", str(good_sam), "--decoder", str(tmp_path / "bad_decoder.pt")],
         ["bad_decoder.pt", DECODER_KEY, "12 NaN/inf values"]),
        (["--checkpoint", str(tmp_path / "cut.pt")], ["cut.pt"]),
    ]
    for args, phrases in cases:
        out = tmp_path / "out"
        status = main(["segment", str(image), *args, "-o", str(out), "--device", "cpu", "--quiet"])
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert status == 1, err
        assert "Traceback" not in err
        assert len(lines) == 1 and re.match(r"pathosam: error: ", lines[0]), err
        for p in phrases:
            assert p in lines[0], (p, lines[0])
        assert not out.exists() or not list(out.glob("*.tif"))


def test_run_checkpoint_cut_or_foreign_is_a_checkpoint_error(tmp_path):
    from pathosam.training.run import load_checkpoint, save_checkpoint

    good = save_checkpoint(tmp_path / "latest.pt", {"iteration": 3, "w": torch.ones(4)})
    assert load_checkpoint(good)["iteration"] == 3
    data = good.read_bytes()
    for cut in (0, 10, len(data) // 2, len(data) - 1):
        bad = tmp_path / f"cut{cut}.pt"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=f"cut{cut}.pt: cannot read this training checkpoint"):
            load_checkpoint(bad)
    foreign = tmp_path / "list.pt"
    torch.save([1, 2], foreign)
    with pytest.raises(CheckpointError, match="not a pathosam training checkpoint"):
        load_checkpoint(foreign)


def test_old_torch_is_refused(monkeypatch, tmp_path):
    from pathosam.models import checkpoint

    monkeypatch.setattr(torch, "__version__", "2.5.1+cpu")
    with pytest.raises(CheckpointError, match="torch>=2.6"):
        checkpoint.require_safe_torch()
