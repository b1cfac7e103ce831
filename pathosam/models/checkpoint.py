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

Every problem with a file ends in a :class:`CheckpointError` (a ValueError) naming the file:
unreadable bytes here, malformed weights in :func:`check_state` (missing / unexpected keys,
wrong shapes, non-tensors, non-floating weights, NaN/inf values), which the model builders in
``pathosam.predictor`` call before ``load_state_dict``.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

_T = TypeVar("_T")

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


def _reason(err: BaseException) -> str:
    """The gist of a torch.load error in one short line (its messages span paragraphs)."""
    text = str(err)
    m = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    line = m.group(1) if m else next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", line)
    line = line.split(". ")[0].rstrip(".")
    return (line[:160] + "...") if len(line) > 160 else (line or type(err).__name__)


#: The oldest torch whose ``torch.load(weights_only=True)`` is safe on hostile files (CVE-2025-32434).
SAFE_TORCH = (2, 6)


def require_safe_torch() -> None:
    """Refuse to unpickle anything with a torch older than :data:`SAFE_TORCH` (pyproject's floor;
    this guards installs that bypassed it)."""
    m = re.match(r"(\d+)\.(\d+)", torch.__version__)
    if m and (int(m[1]), int(m[2])) < SAFE_TORCH:
        raise CheckpointError(f"torch {torch.__version__} cannot load checkpoints safely (CVE-2025-32434): "
                              f"install torch>={SAFE_TORCH[0]}.{SAFE_TORCH[1]}")


def _torch_load(path: Path) -> object:
    require_safe_torch()
    is_zip = zipfile.is_zipfile(path)
    if not is_zip:
        with open(path, "rb") as f:
            head = f.read(2)
        if head == b"PK":
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt file?): "
                                  "an incomplete zip archive")
        if head[:1] != b"\x80":
            raise CheckpointError(f"{path}: not a PyTorch checkpoint: neither a zip archive nor a pickle")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first_error = err
    except Exception as err:  # noqa: BLE001 - garbage bytes raise anything (KeyError, EOFError, ...)
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (truncated or corrupt file?): {_reason(err)}") from None
    # Old-style (non-zip) pickles, or files with pickled objects.
    if not is_zip:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint we can read safely: {_reason(first_error)}") from None
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as err:  # noqa: BLE001 - any failure here means an unreadable file
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: {_reason(err)}") from None
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
        raise CheckpointError(f"{path}: could not read the checkpoint safely: {_reason(err)}") from None


def as_tensor_dict(obj: object, what: str, path: Path | str | None) -> dict[str, torch.Tensor]:
    """``obj`` as a dict of str -> tensor, or a CheckpointError naming the first bad entry."""
    where = f"{path}: " if path is not None else ""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{where}{what} is of type {type(obj).__name__}, not a dict of tensors")
    for key, value in obj.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{where}{what}: key {key!r} is of type {type(key).__name__}, not a str")
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{where}{what}: {key}: a value of type {type(value).__name__}, not a tensor")
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
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file, not a PyTorch checkpoint")
    obj = _torch_load(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict or a dict with 'model_state', got {type(obj).__name__}")
    if "model_state" in obj:
        model_state = as_tensor_dict(obj["model_state"], "'model_state'", path)
        sam, dec = split_state(model_state, path)
        if obj.get("decoder_state") is not None:
            dec2 = as_tensor_dict(obj["decoder_state"], "'decoder_state'", path)
            _, dec = split_state(dec2, path)
        prefixed = any(k.startswith("sam.") for k in model_state)
        layout = "training_checkpoint" if prefixed else "model_and_decoder_state"
        extra = {k: obj[k] for k in ("iteration", "epoch", "best_metric") if k in obj}
        return Checkpoint(sam, dec, layout, extra)
    state = as_tensor_dict(obj, "state dict", path)
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
    out_channels = key_shape(decoder_state, "out_conv.weight", 4)[0]
    transposed = any(k.startswith("decoder.samplers") and ".block." in k for k in decoder_state)
    return transposed, out_channels


# ---------------------------------------------------------------- checking a state against a model

#: How many keys a message names before it only counts the rest.
_NAMED = 3


def format_shape(shape: tuple[int, ...] | torch.Size) -> str:
    """``(256, 64)``; ``(256)`` for one dimension, ``()`` for a scalar."""
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def key_shape(state: Mapping[str, object], key: str, ndim: int) -> tuple[int, ...]:
    """The shape of ``state[key]`` for architecture inference: a CheckpointError naming the key
    when it is missing, not a tensor, or not ``ndim``-dimensional (not a KeyError/IndexError)."""
    if key not in state:
        raise CheckpointError(f"key {key!r} is missing")
    value = state[key]
    if not isinstance(value, torch.Tensor):
        raise CheckpointError(f"{key}: a value of type {type(value).__name__}, not a tensor")
    if value.dim() != ndim:
        raise CheckpointError(f"{key}: expected a {ndim}-D tensor, found shape {format_shape(value.shape)}")
    return tuple(int(s) for s in value.shape)


def _named(keys: list[str]) -> str:
    named = ", ".join(repr(k) for k in keys[:_NAMED])
    return named + (f" and {len(keys) - _NAMED} more" if len(keys) > _NAMED else "")


def _dtype_kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "boolean"
    if dtype.is_complex:
        return "complex"
    return "integer"


def _listed(problems: list[str], what: str) -> str:
    """One problem as is; several as ``N tensors <what>: a; b; c and N more``."""
    if len(problems) == 1:
        return problems[0]
    more = f"; and {len(problems) - _NAMED} more" if len(problems) > _NAMED else ""
    return f"{len(problems)} tensors {what}: " + "; ".join(problems[:_NAMED]) + more


def _structure_problems(
    state: Mapping[str, object], expected: Mapping[str, torch.Tensor]
) -> tuple[list[str], list[str]]:
    """(missing / unexpected keys and wrong shapes, non-tensors and non-floating weights)."""
    problems = []
    missing = [k for k in expected if k not in state]
    if missing:
        problems.append(f"{len(missing)} missing key{'s' if len(missing) > 1 else ''}: {_named(missing)}")
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key{'s' if len(unexpected) > 1 else ''}: {_named(unexpected)}")
    shapes, dtypes = [], []
    for key, want in expected.items():
        if key not in state:
            continue
        value = state[key]
        if not isinstance(value, torch.Tensor):
            dtypes.append(f"{key}: a value of type {type(value).__name__}, not a tensor")
        elif value.shape != want.shape:
            shapes.append(f"{key}: expected {format_shape(want.shape)}, found {format_shape(value.shape)}")
        elif want.is_floating_point() and not value.is_floating_point():
            dtypes.append(f"{key}: {_dtype_kind(value.dtype)} tensor ({value.dtype}); weights must be floating point")
    if shapes:
        problems.append(_listed(shapes, "have the wrong shape"))
    return problems, ([_listed(dtypes, "have the wrong type")] if dtypes else [])


def _nonfinite_problems(state: Mapping[str, torch.Tensor]) -> list[str]:
    """``key: N NaN/inf values`` for every floating tensor that is not all finite.

    A finite sum proves a tensor finite (NaN and inf propagate through additions) and is ~20x
    cheaper than ``isfinite(t).all()``; only a non-finite sum (NaN/inf, or an overflow of large
    finite values) is counted element by element."""
    found = []
    for key, value in state.items():
        if not value.is_floating_point() or bool(torch.isfinite(value.sum())):
            continue
        n = int(value.numel() - torch.isfinite(value).sum())
        if n:
            found.append(f"{key}: {n} NaN/inf value{'s' if n > 1 else ''}")
    return [_listed(found, "hold NaN/inf values")] if found else []


def check_state(
    state: Mapping[str, object], expected: Mapping[str, torch.Tensor], path: str | os.PathLike | None,
    what: str, arch: str = "",
) -> None:
    """The one check of weights against a model whose own state dict is ``expected``: raise a
    CheckpointError naming ``path``, ``what`` (e.g. "SAM weights") and the problems: missing and
    unexpected keys, non-tensors, wrong shapes, non-floating weights; when those are fine, NaN/inf
    values (one ``sum`` per tensor). ``arch``, the architecture inferred from the weights, is
    named when keys or shapes do not fit it."""
    where = f"{path}: " if path is not None else ""
    layout, types = _structure_problems(state, expected)
    hint = f" (architecture inferred from the weights: {arch})" if arch and layout else ""
    problems = (layout + types) or _nonfinite_problems(state)
    if problems:
        raise CheckpointError(f"{where}{what}: " + "; ".join(problems) + hint)


def load_state(
    module: nn.Module, state: Mapping[str, object], path: str | os.PathLike | None, what: str, arch: str = ""
) -> None:
    """:func:`check_state` against ``module``'s own state dict, then ``load_state_dict`` (strict)."""
    check_state(state, module.state_dict(), path, what, arch)
    module.load_state_dict(dict(state), strict=True)


def infer_architecture(
    infer: Callable[[Mapping[str, object]], _T], state: Mapping[str, object], path: str | os.PathLike | None, what: str
) -> _T:
    """``infer(state)`` (an architecture or a built module) with any failure on malformed weights
    turned into a CheckpointError naming ``path`` and ``what``."""
    where = f"{path}: " if path is not None else ""
    try:
        return infer(state)
    except (ValueError, KeyError, IndexError, TypeError, RuntimeError, ZeroDivisionError, AttributeError) as err:
        msg = f"key {err.args[0]!r} is missing" if isinstance(err, KeyError) and err.args else err
        raise CheckpointError(f"{where}{what}: cannot infer the architecture: {msg}") from None


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
