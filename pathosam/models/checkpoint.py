"""Reading and writing SAM / UNETR-decoder weights in every layout the reference uses.

Layouts read:
  * plain SAM state dict (released ``vit_*_histopathology`` and Meta's ``sam_vit_*.pth``)
  * ``{"model_state": SAM dict, "decoder_state": decoder dict}`` (micro-sam export with decoder)
  * torch-em / micro-sam training checkpoint (``model_state`` keys prefixed ``sam.``,
    ``decoder_state``, optimizer etc.; its ``init`` pickles Python objects)
  * a separate decoder file (OrderedDict of UNETR keys without ``encoder.*``), fp32 or fp16

Loading never executes code from the file: ``torch.load(weights_only=True)`` first; a file
that also pickles objects from the reference libraries (a training checkpoint) is read with
those classes replaced by inert stand-ins, and a file that references anything else
(``os.system``, ``builtins.eval``, ...) is refused.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

SAM_PREFIXES = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
DECODER_PREFIXES = ("decoder.", "deconv", "base.", "out_conv.", "decoder_head.", "image_conv.")
# Namespaces whose pickled objects (in a training checkpoint's ``init``) we replace by inert
# stand-ins; any other global is refused.
_STUBBABLE = ("torch.", "segment_anything.", "micro_sam.", "torch_em.", "collections.", "numpy.",
              "__builtin__.set", "builtins.set", "__builtin__.frozenset", "builtins.frozenset",
              "builtins.slice", "__builtin__.slice", "functools.partial", "patho_sam.", "elf.")


class CheckpointError(ValueError):
    """A weights file that cannot be used: corrupt, truncated, unsafe or of an unknown layout."""


@dataclass
class Checkpoint:
    """What a weights file holds: SAM and/or UNETR decoder states (either may be None)."""

    sam_state: dict[str, torch.Tensor] | None
    decoder_state: dict[str, torch.Tensor] | None
    layout: str
    extra: dict = field(default_factory=dict)


def _stub_class(full_name: str) -> type:
    module, _, name = full_name.rpartition(".")

    class _Inert:
        """Placeholder for a pickled object we do not need; it ignores everything."""

        def __init__(self, *args, **kwargs) -> None:
            pass

        def __setstate__(self, state) -> None:
            pass

        def __call__(self, *args, **kwargs):
            return None

    _Inert.__module__ = module
    _Inert.__qualname__ = name
    _Inert.__name__ = name
    return _Inert


def _torch_load(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first_error = err
    except Exception as err:  # noqa: BLE001 - garbage bytes raise anything (KeyError, EOFError, ...)
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt file?): {err}") from None
    # Old-style (non-zip) pickles, or files with pickled objects.
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a PyTorch checkpoint we can read safely: {first_error}") from None
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as err:  # noqa: BLE001 - any failure here means an unreadable file
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: {err}") from None
    refused = [g for g in unsafe if not g.startswith(_STUBBABLE) or g in ("torch.load", "torch.hub.load")]
    if refused:
        raise CheckpointError(
            f"{path}: refusing to load: the file references {', '.join(sorted(refused))}, "
            "which could run code when unpickled. Only weights and reference-library objects are allowed."
        )
    stubs = [_stub_class(g) for g in unsafe]
    try:
        with torch.serialization.safe_globals(stubs):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"{path}: could not read the checkpoint safely: {err}") from None


def _tensor_dict(obj: object, what: str, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: {what} is not a dict of tensors")
    return dict(obj)


def split_state(state: dict[str, torch.Tensor], path: Path) -> tuple[dict | None, dict | None]:
    """Split a flat dict into SAM keys and decoder keys (``sam.`` stripped, ``encoder*`` dropped)."""
    sam = {}
    dec = {}
    for key, value in state.items():
        key_s = key[4:] if key.startswith("sam.") else key
        if key_s.startswith(SAM_PREFIXES):
            sam[key_s] = value
        elif key.startswith(DECODER_PREFIXES):
            dec[key] = value
        elif key.startswith("encoder"):
            continue  # UNETR's copy of the image encoder: SAM's own weights are used
        else:
            raise CheckpointError(f"{path}: unexpected key {key!r}: not a SAM or UNETR-decoder checkpoint")
    return (sam or None), (dec or None)


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read any reference weights file; see the module docstring for the layouts."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    obj = _torch_load(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict or a dict with 'model_state', got {type(obj).__name__}")
    if "model_state" in obj:
        model_state = _tensor_dict(obj["model_state"], "'model_state'", path)
        sam, dec = split_state(model_state, path)
        if obj.get("decoder_state") is not None:
            dec2 = _tensor_dict(obj["decoder_state"], "'decoder_state'", path)
            _, dec = split_state(dec2, path)
        prefixed = any(k.startswith("sam.") for k in model_state)
        layout = "training_checkpoint" if prefixed else "model_and_decoder_state"
        extra = {k: obj[k] for k in ("iteration", "epoch", "best_metric") if k in obj}
        return Checkpoint(sam, dec, layout, extra)
    state = _tensor_dict(obj, "the file", path)
    sam, dec = split_state(state, path)
    if sam and dec:
        layout = "combined"
    elif sam:
        layout = "sam"
    else:
        layout = "decoder"
    return Checkpoint(sam, dec, layout)


def decoder_flavour(decoder_state: dict[str, torch.Tensor]) -> tuple[bool, int]:
    """(transposed, out_channels) of a decoder state, detected from its keys as micro-sam does."""
    if "out_conv.weight" not in decoder_state:
        raise CheckpointError("decoder weights lack 'out_conv.weight'")
    transposed = any(k.startswith("decoder.samplers") and ".block." in k for k in decoder_state)
    return transposed, int(decoder_state["out_conv.weight"].shape[0])


def _atomic_save(obj: object, path: Path) -> None:
    from ..io.atomic import atomic_write

    with atomic_write(path) as tmp:
        torch.save(obj, tmp)


def default_decoder_path(sam_path: str | os.PathLike) -> Path:
    """``model.pt`` -> ``model_decoder.pt`` (``vit_b_histopathology`` -> ``..._decoder``)."""
    p = Path(sam_path)
    return p.with_name(p.stem + "_decoder" + p.suffix)


def write_released(
    sam_state: dict[str, torch.Tensor],
    decoder_state: dict[str, torch.Tensor] | None,
    sam_path: str | os.PathLike,
    decoder_path: str | os.PathLike | None = None,
) -> tuple[Path, Path | None]:
    """Write the released layout: a plain SAM state dict and (optionally) a decoder file."""
    sam_path = Path(sam_path)
    _atomic_save(dict(sam_state), sam_path)
    if decoder_state is None:
        return sam_path, None
    decoder_path = Path(decoder_path) if decoder_path else default_decoder_path(sam_path)
    _atomic_save(dict(decoder_state), decoder_path)
    return sam_path, decoder_path


def write_model_and_decoder(
    sam_state: dict[str, torch.Tensor], decoder_state: dict[str, torch.Tensor] | None, path: str | os.PathLike
) -> Path:
    """Write ``{"model_state": SAM dict, "decoder_state": decoder dict}`` (micro-sam's export)."""
    path = Path(path)
    _atomic_save({"model_state": dict(sam_state), "decoder_state": dict(decoder_state or {})}, path)
    return path
