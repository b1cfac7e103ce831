"""Reading every reference checkpoint layout, writing ours, and refusing bad files."""

from __future__ import annotations

import json
import os
import pickle
import zipfile

import pytest
import torch

import pathosam
from pathosam import registry
from pathosam.models import CheckpointError, SamConfig, read_checkpoint, write_model_and_decoder, write_released
from pathosam.models.checkpoint import decoder_flavour


def _assert_equal_states(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype or b[k].dtype == torch.float16, k
        assert torch.equal(a[k], b[k].to(a[k].dtype)), k


@pytest.fixture(scope="module")
def released(tiny_files):
    return read_checkpoint(tiny_files["tiny_sam.pt"]), read_checkpoint(tiny_files["tiny_sam_decoder.pt"])


def test_layouts_detected(tiny_files):
    expected = {
        "tiny_sam.pt": ("sam", True, False),
        "tiny_sam_decoder.pt": ("decoder", False, True),
        "tiny_model_and_decoder_state.pt": ("model_and_decoder_state", True, True),
        "tiny_training_checkpoint.pt": ("training_checkpoint", True, True),
        "tiny_decoder_interp_fp16.pt": ("decoder", False, True),
        "tiny_decoder_semantic_fp16.pt": ("decoder", False, True),
    }
    for name, (layout, has_sam, has_dec) in expected.items():
        ck = read_checkpoint(tiny_files[name])
        assert ck.layout == layout, name
        assert (ck.sam_state is not None) == has_sam, name
        assert (ck.decoder_state is not None) == has_dec, name


def test_all_layouts_give_the_same_tensors(tiny_files, released):
    sam, dec = released
    assert len(sam.sam_state) == 202 and len(dec.decoder_state) == 66
    for name in ["tiny_model_and_decoder_state.pt", "tiny_training_checkpoint.pt"]:
        ck = read_checkpoint(tiny_files[name])
        _assert_equal_states(sam.sam_state, ck.sam_state)
        _assert_equal_states(dec.decoder_state, ck.decoder_state)


def test_training_checkpoint_needs_no_reference_libraries(tiny_files):
    # weights_only=True alone cannot read it (it pickles SAM modules); we read it without
    # importing segment_anything / micro_sam and without executing anything.
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tiny_files["tiny_training_checkpoint.pt"], weights_only=True)
    ck = read_checkpoint(tiny_files["tiny_training_checkpoint.pt"])
    assert ck.extra["iteration"] is not None
    import sys

    assert "segment_anything" not in sys.modules and "micro_sam" not in sys.modules


def test_decoder_flavours_and_channels(tiny_files):
    assert decoder_flavour(read_checkpoint(tiny_files["tiny_sam_decoder.pt"]).decoder_state) == (True, 3)
    assert decoder_flavour(read_checkpoint(tiny_files["tiny_decoder_interp_fp16.pt"]).decoder_state) == (False, 3)
    assert decoder_flavour(read_checkpoint(tiny_files["tiny_decoder_semantic_fp16.pt"]).decoder_state) == (True, 6)


def test_loaded_model_holds_exact_weights(tiny_files, released, tiny_model):
    sam, dec = released
    _assert_equal_states(sam.sam_state, {k: v.cpu() for k, v in tiny_model.sam.state_dict().items()})
    _assert_equal_states(dec.decoder_state, {k: v.cpu() for k, v in tiny_model.decoder.state_dict().items()})
    fp16 = read_checkpoint(tiny_files["tiny_decoder_semantic_fp16.pt"]).decoder_state
    ours = tiny_model.semantic_decoder.state_dict()
    for k, v in fp16.items():
        assert torch.equal(ours[k].cpu(), v.to(ours[k].dtype)), k
    assert tiny_model.sam.config == SamConfig(64, 4, 4, (1, 3))
    assert tiny_model.decoder.transposed and tiny_model.semantic_decoder.out_channels == 6


def test_load_model_from_each_layout(tiny_files):
    m1 = pathosam.load_model(tiny_files["tiny_training_checkpoint.pt"], device="cpu")
    m2 = pathosam.load_model(tiny_files["tiny_model_and_decoder_state.pt"], device="cpu")
    m3 = pathosam.load_model(tiny_files["tiny_sam.pt"], decoder=tiny_files["tiny_decoder_interp_fp16.pt"], device="cpu")
    for m in (m1, m2):
        assert m.decoder is not None and m.decoder.transposed
    assert not m3.decoder.transposed
    assert pathosam.load_model(tiny_files["tiny_sam.pt"], device="cpu").decoder is None


def test_written_files_load_back_bit_identical(tmp_path, released):
    sam, dec = released
    sam_path, dec_path = write_released(sam.sam_state, dec.decoder_state, tmp_path / "my_model.pt")
    assert dec_path.name == "my_model_decoder.pt"
    _assert_equal_states(sam.sam_state, read_checkpoint(sam_path).sam_state)
    _assert_equal_states(dec.decoder_state, read_checkpoint(dec_path).decoder_state)
    # the released layout is a plain state dict that torch.load(weights_only=True) reads
    assert list(torch.load(sam_path, weights_only=True)) == list(sam.sam_state)
    both = write_model_and_decoder(sam.sam_state, dec.decoder_state, tmp_path / "both.pt")
    ck = read_checkpoint(both)
    assert ck.layout == "model_and_decoder_state"
    _assert_equal_states(sam.sam_state, ck.sam_state)
    _assert_equal_states(dec.decoder_state, ck.decoder_state)
    assert not list(tmp_path.glob("*.partial"))


def test_model_save_round_trips_in_both_layouts(tmp_path, tiny_model, released):
    sam, dec = released
    p, d = tiny_model.save(tmp_path / "m.pt")
    assert d.name == "m_decoder.pt"
    _assert_equal_states(sam.sam_state, read_checkpoint(p).sam_state)
    _assert_equal_states(dec.decoder_state, read_checkpoint(d).decoder_state)
    (both,) = tiny_model.save(tmp_path / "both.pt", layout="model_and_decoder")
    reloaded = pathosam.load_model(both, device="cpu")
    _assert_equal_states(sam.sam_state, reloaded.sam.state_dict())
    _assert_equal_states(dec.decoder_state, reloaded.decoder.state_dict())
    with pytest.raises(ValueError, match="layout"):
        tiny_model.save(tmp_path / "x.pt", layout="onnx")


# ---------------------------------------------------------------- refusals


def test_truncated_file_is_refused(tmp_path, tiny_files):
    data = tiny_files["tiny_sam.pt"].read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint(bad)


@pytest.mark.parametrize("content", [b"hello, I am not a checkpoint\n", b"\x89PNG\r\n\x1a\n" + bytes(100)])
def test_non_checkpoint_file_is_refused(tmp_path, content):
    bad = tmp_path / "not_a_checkpoint.pt"
    bad.write_bytes(content)
    with pytest.raises(CheckpointError):
        read_checkpoint(bad)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "nope.pt")


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


class _RunsEval:
    def __reduce__(self):
        return (eval, ("open('PWNED_BY_EVAL', 'w')",))


@pytest.mark.parametrize("payload", [_RunsCode, _RunsEval])
@pytest.mark.parametrize("zip_format", [True, False])
def test_code_executing_pickle_is_refused(tmp_path, monkeypatch, payload, zip_format):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "evil.pt"
    obj = {"model_state": {"image_encoder.x": torch.zeros(1)}, "evil": payload()}
    torch.save(obj, bad, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(CheckpointError, match="refusing|safely"):
        read_checkpoint(bad)
    assert not list(tmp_path.glob("PWNED*")), "the pickle's code ran"


def test_wrong_hash_is_refused(tmp_path, tiny_files, monkeypatch):
    monkeypatch.setenv("PATHOSAM_CACHE_DIR", str(tmp_path))
    with pytest.raises(registry.HashMismatchError, match="does not match"):
        registry.import_file("vit_b_histopathology", tiny_files["tiny_sam.pt"])
    assert not registry.path("vit_b_histopathology").exists()


def test_registry_model_offline_error_names_url_and_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PATHOSAM_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("PATHOSAM_OFFLINE", "1")
    with pytest.raises(registry.ModelNotAvailableError) as err:
        pathosam.load_model("vit_b_histopathology")
    msg = str(err.value)
    assert registry.get("vit_b_histopathology").url in msg
    assert str(tmp_path / "models" / "vit_b_histopathology") in msg


def test_decoder_file_passed_as_model_is_explained(tiny_files):
    with pytest.raises(CheckpointError, match="no SAM weights"):
        pathosam.load_model(tiny_files["tiny_sam_decoder.pt"], device="cpu")


def test_tiny_model_json_lists_what_we_load(vectors, tiny_files):
    info = json.loads((vectors / "tiny_model.json").read_text())["files"]
    assert set(info) == set(tiny_files)
    assert zipfile.is_zipfile(tiny_files["tiny_training_checkpoint.pt"])
