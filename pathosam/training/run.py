"""Run bookkeeping of the training loop: the run folder, logs, checkpoints, devices, AMP.

A run folder ``RUN/`` holds ``log.csv`` (one row per logged step: iteration, phase, values),
TensorBoard events in ``RUN/tensorboard`` when ``torch.utils.tensorboard`` can be imported,
``checkpoints/latest.pt`` and ``checkpoints/best.pt`` in micro-sam's training-checkpoint layout
(``model_state`` with ``sam.``-prefixed keys, ``decoder_state``, ``optimizer_state``,
``scheduler_state``, ``scaler_state``, ``iteration``, ``best_metric``, ...; readable by
:func:`pathosam.load_model`), ``checkpoints/iter_<N>.pt`` every ``checkpoint_every`` iterations,
and ``config.json``. Every file is written atomically, so a killed run never leaves a truncated
checkpoint behind.
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..io.atomic import atomic_write


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``: CUDA, then MPS, then CPU (the rule of :class:`pathosam.predictor.PathoSAM`)."""
    from ..predictor import resolve_device as model_device

    return model_device(device)


def resize_to_input(images: torch.Tensor, long_side: int, device: torch.device
                    ) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """(B, 3, H, W) images 0..255 resized to ``long_side`` on the longest side (bilinear,
    antialiased, as SAM's ``ResizeLongestSide``) on ``device``; also the model input size (h, w)
    and the original size (H, W). Normalising and padding is ``Sam.preprocess``."""
    H, W = images.shape[-2:]
    scale = long_side / max(H, W)
    h, w = int(H * scale + 0.5), int(W * scale + 0.5)
    x = images.to(device, non_blocking=True).float()
    if (h, w) != (H, W):
        x = F.interpolate(x, (h, w), mode="bilinear", align_corners=False, antialias=True)
    return x, (h, w), (H, W)


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """Mixed precision (float16) on CUDA when ``enabled``; a no-op context elsewhere."""
    return torch.autocast(device_type=device.type, dtype=torch.float16, enabled=enabled and device.type == "cuda")


def grad_scaler(device: torch.device, enabled: bool) -> torch.amp.GradScaler:
    """The loss scaler of float16 training on CUDA when ``enabled``; a pass-through elsewhere."""
    return torch.amp.GradScaler(device.type, enabled=enabled and device.type == "cuda")


def seed_everything(seed: int) -> None:
    """Seed Python, numpy's global generator and torch (the trainers draw their own numbers from
    generators derived from (seed, iteration); this covers library code)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def iteration_rng(seed: int, iteration: int, stream: int = 0) -> np.random.Generator:
    """The random generator of one training iteration: a pure function of its arguments, so a
    resumed run draws exactly what an uninterrupted one would have."""
    return np.random.default_rng(np.random.SeedSequence([seed, iteration, stream]))


class RunLog:
    """Append-only CSV log (+ TensorBoard scalars when available) of a run folder."""

    def __init__(self, run_dir: str | os.PathLike, tensorboard: bool = True) -> None:
        self.path = Path(run_dir) / "log.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except Exception:  # noqa: BLE001 - tensorboard is optional
                self._writer = None

    def truncate_after(self, iteration: int) -> None:
        """Drop rows logged after ``iteration`` (a resumed run repeats them)."""
        if not self.path.is_file():
            return
        with open(self.path, newline="") as fh:
            rows = [r for r in csv.reader(fh)]
        keep = [r for r in rows[1:] if int(r[0]) <= iteration]
        with atomic_write(self.path) as tmp, open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["iteration", "phase", "name", "value"])
            w.writerows(keep)

    def log(self, iteration: int, phase: str, values: dict[str, float]) -> None:
        """Append one row per value: (iteration, phase, name, value)."""
        new = not self.path.is_file()
        with open(self.path, "a", newline="") as fh:
            w = csv.writer(fh)
            if new:
                w.writerow(["iteration", "phase", "name", "value"])
            for k, v in values.items():
                w.writerow([iteration, phase, k, repr(float(v))])
        if self._writer is not None:
            for k, v in values.items():
                self._writer.add_scalar(f"{phase}/{k}", float(v), iteration)

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        if self._writer is not None:
            self._writer.close()


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """``torch.save`` atomically (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (tensors and plain Python values);
    an unreadable or foreign file is a :class:`~pathosam.models.checkpoint.CheckpointError`."""
    from ..models.checkpoint import CheckpointError, require_safe_torch

    require_safe_torch()
    try:
        ck = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a cut or corrupt file raises anything
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise CheckpointError(f"{path}: cannot read this training checkpoint ({reason}); delete it to "
                              "resume from the previous one, or start the run anew") from None
    if not isinstance(ck, dict):
        raise CheckpointError(f"{path}: not a pathosam training checkpoint (a {type(ck).__name__})")
    return ck


def cpu_state(module: torch.nn.Module, prefix: str = "") -> OrderedDict:
    """A detached CPU copy of ``module``'s state dict, keys prefixed with ``prefix``."""
    return OrderedDict((prefix + k, v.detach().cpu().contiguous().clone()) for k, v in module.state_dict().items())


def sam_state(model_state: dict[str, torch.Tensor]) -> OrderedDict:
    """A run checkpoint's ``model_state`` (keys ``sam.*``, micro-sam's layout) as a plain SAM state dict."""
    return OrderedDict((k[len("sam."):], v) for k, v in model_state.items())


def load_sam_state(sam: torch.nn.Module, model_state: dict[str, torch.Tensor]) -> None:
    """Load a run checkpoint's ``model_state`` (keys ``sam.*``) into ``sam``; a run trained at
    another input size (``--input-size``) gets a clear error instead of a shape mismatch."""
    state = sam_state(model_state)
    pos = state.get("image_encoder.pos_embed")
    if pos is not None and pos.shape != sam.image_encoder.pos_embed.shape:
        size = int(pos.shape[1]) * sam.image_encoder.patch_size
        raise ValueError(f"the run's model has input size {size} px, this model {sam.img_size} px: "
                         f"resume with --input-size {size}")
    sam.load_state_dict(state)


def write_config(run_dir: str | os.PathLike, config: dict) -> None:
    """Write ``RUN/config.json`` atomically (values JSON can't hold are written as strings)."""
    path = Path(run_dir) / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(config, indent=1, default=str))
