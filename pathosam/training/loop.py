"""The one training loop: run state, resume, checkpoints, validation bookkeeping, export.

A trainer is a :class:`TrainingLoop` subclass; the loop owns everything two trainers have in
common and a trainer supplies only what differs:

========================  ====================================================================
the loop owns             model placement on the device, AdamW + ReduceLROnPlateau + GradScaler,
                          the image-encoder forward (:meth:`~TrainingLoop.encode`,
                          :meth:`~TrainingLoop.decoder_maps`), the optimizer step
                          (:meth:`~TrainingLoop.backward_step`), :meth:`~TrainingLoop.fit`
                          (progress bar, ``log.csv``, validation schedule, end-of-run validation,
                          ``latest`` / ``best`` / ``iter_<N>`` checkpoints, ``stop_after``), the
                          run state (:class:`RunState`), the checkpoint layout and its loading,
                          resuming (settings check) and the choice of the checkpoint to export
a trainer supplies        ``_train(iteration, batch)`` (one step, returns the values to log),
                          ``_batches`` (optional: a batch per iteration; default none, the step
                          draws its own), ``validate()`` (values incl. ``metric_key``, lower is
                          better), ``_extra_state`` / ``_load_extra`` (what its checkpoints hold
                          beyond the common part), ``_run_info`` (extra ``config.json`` entries),
                          ``_export`` (the files written from a checkpoint) and the class
                          attributes below
========================  ====================================================================

Run folder (see :mod:`pathosam.training.run`): ``config.json``, ``log.csv`` (+ TensorBoard),
``checkpoints/latest.pt`` (every ``checkpoint_every`` iterations, when ``stop_after`` stops a run,
and at the end), ``checkpoints/best.pt`` (lowest validation metric), ``checkpoints/iter_<N>.pt``
(with ``numbered_checkpoints``), ``export/``. Checkpoints use micro-sam's training layout
(``model_state`` with ``sam.``-prefixed keys, ``decoder_state`` = the AIS decoder,
``optimizer_state``, ``scheduler_state``, ``scaler_state``, ``iteration``, ``best_metric``,
``current_metric``) plus ``best_iteration``, ``history`` (one dict per validation) and ``config``.

Resuming needs the settings the run was saved with, except those in ``resumable_changes``; a
setting missing from a saved config counts as its default. The validation schedule
(``validate_every``) steps the scheduler; a validation at the end of a run that is off that
schedule is logged and may become ``best.pt`` but does not step the scheduler, so a run extended
by resuming takes exactly the trajectory of a longer uninterrupted run.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch

from .run import (
    RunLog,
    cpu_state,
    grad_scaler,
    load_checkpoint,
    load_sam_state,
    resize_to_input,
    resolve_device,
    save_checkpoint,
    seed_everything,
    write_config,
)

__all__ = ["LoopConfig", "RunState", "TrainingLoop"]


class LoopConfig(Protocol):
    """The settings the loop reads from a trainer's config dataclass."""

    iterations: int
    lr: float
    weight_decay: float
    scheduler_factor: float
    scheduler_patience: int
    validate_every: int
    checkpoint_every: int
    seed: int
    amp: bool

    def to_dict(self) -> dict: ...


@dataclass
class RunState:
    """Where a run stands: iterations done, best validation metric and when, validation history."""

    iteration: int = 0
    best_metric: float = math.inf
    best_iteration: int | None = None
    history: list[dict] = field(default_factory=list)


class TrainingLoop:
    """Base class of the trainers: the loop and the run folder (see the module docstring).

    Parameters
    ----------
    model : PathoSAM
        Trained in place; moved to ``device`` (SAM and the AIS decoder).
    run_dir : path
        Run folder.
    config : dataclass
        The trainer's settings (:class:`LoopConfig`).
    device : str or torch.device
        "auto" (CUDA, MPS, CPU), "cpu", "cuda", ...
    """

    #: ``"trainer"`` entry of ``config.json``.
    kind: ClassVar[str] = ""
    #: Key of the validation values that the scheduler and ``best.pt`` follow (lower is better).
    metric_key: ClassVar[str] = "metric"
    #: Settings that may differ between a run and its resumption.
    resumable_changes: ClassVar[tuple[str, ...]] = ("iterations",)
    #: Also keep ``checkpoints/iter_<N>.pt`` every ``checkpoint_every`` iterations.
    numbered_checkpoints: ClassVar[bool] = False
    #: Label of the progress bar.
    progress_label: ClassVar[str] = "training"
    #: Type of :attr:`state`.
    state_type: ClassVar[type[RunState]] = RunState

    val_patches: Any = None

    def __init__(self, model, run_dir: str | Path, config: LoopConfig, device: str | torch.device | None) -> None:
        self.config = config
        self.device = resolve_device(device)
        self.model = model
        self.run_dir = Path(run_dir)
        self.sam = model.sam.to(self.device)
        if model.decoder is not None:
            model.decoder.to(self.device)
        model.device = self.device
        self.long_side = int(self.sam.image_encoder.img_size)
        self.state = self.state_type()

    def _setup_optimizer(self, params: list[torch.nn.Parameter]) -> None:
        """AdamW over ``params``, ReduceLROnPlateau on the validation metric, the AMP scaler."""
        cfg = self.config
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=cfg.scheduler_factor, patience=cfg.scheduler_patience)
        self.scaler = grad_scaler(self.device, cfg.amp)

    @property
    def use_scheduler(self) -> bool:
        """Whether validations on the schedule step the learning-rate scheduler."""
        return True

    @property
    def default_export(self) -> str:
        """The checkpoint :meth:`export` writes from by default (falls back to ``latest``)."""
        return "best"

    # ------------------------------------------------------------------ what a trainer supplies
    def _train(self, iteration: int, batch: Any) -> dict[str, float]:
        """One training iteration; returns the values to log (the loop adds ``lr``)."""
        raise NotImplementedError

    def _batches(self, start: int, stop: int) -> Iterable[Any]:
        """The batches of iterations ``start .. stop - 1`` (default: none; the step draws its own)."""
        return itertools.repeat(None, max(0, stop - start))

    def validate(self) -> dict[str, float]:
        """Validation values on the fixed validation patches, ``metric_key`` among them."""
        raise NotImplementedError

    def _extra_state(self) -> dict[str, Any]:
        """Checkpoint entries beyond the common ones."""
        return {}

    def _load_extra(self, ck: dict[str, Any]) -> None:
        """Restore :meth:`_extra_state` (called after the common state is restored)."""

    def _run_info(self) -> dict[str, Any]:
        """``config.json`` entries beyond ``trainer`` and the settings."""
        return {}

    def _export(self, ck: dict[str, Any], out: Path) -> dict[str, Path]:
        """Write the exported files of checkpoint ``ck`` into ``out``; returns them by name."""
        raise NotImplementedError

    # ------------------------------------------------------------------ model passes
    def encode(self, images: torch.Tensor, grad: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int], tuple[int, int]]:
        """(B, 3, H, W) images 0..255 -> image embeddings, the preprocessed model input, the model
        input size (h, w) and the original size (H, W); ``grad=False`` runs the encoder without
        gradient."""
        x, in_size, orig = resize_to_input(images, self.long_side, self.device)
        x = self.sam.preprocess(x)
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            emb = self.sam.image_encoder(x)
        return emb, x, in_size, orig

    def decoder_maps(self, decoder: torch.nn.Module, images: torch.Tensor, bn_mode: str,
                     encoder_grad: bool = True) -> torch.Tensor:
        """(B, C, H, W) float32 UNETR ``decoder`` outputs at the patch size of ``images``."""
        from ..models.unetr import postprocess_maps

        emb, x, in_size, orig = self.encode(images, encoder_grad)
        return postprocess_maps(decoder(emb, bn_mode, x).float(), in_size, orig)

    def backward_step(self, loss: torch.Tensor) -> None:
        """Backward pass of ``loss`` and one (scaled) optimizer step."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self) -> dict[str, Any]:
        """The run's state in micro-sam's training-checkpoint layout (+ the run state)."""
        s = self.state
        ais = self.model.decoder
        return {
            "iteration": s.iteration,
            "best_metric": s.best_metric,
            "best_iteration": s.best_iteration,
            "current_metric": s.history[-1][self.metric_key] if s.history else None,
            "history": s.history,
            "model_state": cpu_state(self.sam, prefix="sam."),
            "decoder_state": cpu_state(ais) if ais is not None else None,
            **self._extra_state(),
            "optimizer_state": self.optimizer.state_dict(),
            "scheduler_state": self.scheduler.state_dict(),
            "scaler_state": self.scaler.state_dict(),
            "config": self.config.to_dict(),
        }

    def load(self, ck: dict[str, Any]) -> None:
        """Restore a :meth:`checkpoint`: weights, optimizer, scheduler, scaler, run state."""
        load_sam_state(self.sam, ck["model_state"])
        ais = self.model.decoder
        if ais is not None and ck.get("decoder_state"):
            from ..models.unetr import has_image_skip

            want = has_image_skip(ck["decoder_state"])
            if want != ais.image_skip:
                raise ValueError(f"the run's AIS decoder has {'an' if want else 'no'} image-skip branch, this "
                                 f"model's has {'one' if ais.image_skip else 'none'}: resume "
                                 f"with{'' if want else 'out'} --image-skip")
            ais.load_state_dict(ck["decoder_state"])
        self.optimizer.load_state_dict(ck["optimizer_state"])
        self.scheduler.load_state_dict(ck["scheduler_state"])
        if ck.get("scaler_state"):
            self.scaler.load_state_dict(ck["scaler_state"])
        self.state = self.state_type(int(ck["iteration"]), float(ck["best_metric"]), ck.get("best_iteration"),
                                     list(ck.get("history") or []))
        self._load_extra(ck)

    def _save(self, name: str) -> Path:
        return save_checkpoint(self.run_dir / "checkpoints" / f"{name}.pt", self.checkpoint())

    def _latest_checkpoint(self) -> dict[str, Any]:
        """``checkpoints/latest.pt``, refused when it was written with other settings."""
        latest = self.run_dir / "checkpoints" / "latest.pt"
        if not latest.is_file():
            raise FileNotFoundError(f"nothing to resume: {latest} does not exist")
        ck = load_checkpoint(latest)
        now = self.config.to_dict()
        saved = {**type(self.config)().to_dict(), **(ck.get("config") or {})}
        diff = {k: (saved.get(k), now.get(k)) for k in [*now, *(k for k in saved if k not in now)]
                if k not in self.resumable_changes and saved.get(k) != now.get(k)}
        if diff:
            lines = "\n".join(f"  {k}: saved {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"{latest} was written with other settings; resuming needs the same ones:\n{lines}")
        return ck

    def resume(self) -> None:
        """Continue from ``checkpoints/latest.pt`` (same settings except ``resumable_changes``)."""
        self.load(self._latest_checkpoint())

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: bool = False, progress: bool = True, stop_after: int | None = None) -> RunState:
        """Train until ``config.iterations``; validates, logs, checkpoints; returns the state.

        Parameters
        ----------
        resume : bool
            First continue from ``checkpoints/latest.pt`` (see :meth:`resume`); a finished run
            can be extended by raising ``iterations``.
        progress : bool
            tqdm progress bar.
        stop_after : int, optional
            Stop after this many iterations of this call (``latest.pt`` is written).
        """
        from tqdm.auto import tqdm

        if resume:
            self.resume()
        cfg = self.config
        seed_everything(cfg.seed)
        write_config(self.run_dir, {"trainer": self.kind, **cfg.to_dict(), **self._run_info()})
        log = RunLog(self.run_dir)
        log.truncate_after(self.state.iteration)
        start = self.state.iteration
        stop = cfg.iterations if stop_after is None else min(cfg.iterations, start + max(0, int(stop_after)))
        bar = tqdm(total=cfg.iterations, initial=start, desc=self.progress_label, unit="it", disable=not progress)
        t0 = time.perf_counter()
        try:
            for it, batch in zip(range(start, stop), self._batches(start, stop)):
                values = self._train(it, batch)
                self.state.iteration = it + 1
                values["lr"] = self.optimizer.param_groups[0]["lr"]
                log.log(it + 1, "train", values)
                bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()})
                bar.update(1)
                if self.val_patches is not None and (it + 1) % cfg.validate_every == 0:
                    self._record_validation(log, self.validate(), step_scheduler=True)
                if (it + 1) % cfg.checkpoint_every == 0:
                    if self.numbered_checkpoints:
                        self._save(f"iter_{it + 1}")
                    self._save("latest")  # a killed run resumes from here
            if self._needs_final_validation():
                self._record_validation(log, self.validate(), step_scheduler=False)
            self._save("latest")
        finally:
            bar.close()
            log.log(self.state.iteration, "time", {"seconds_this_session": time.perf_counter() - t0})
            log.close()
        return self.state

    def _needs_final_validation(self) -> bool:
        """A finished run whose last iteration is off the validation schedule and not validated."""
        s, cfg = self.state, self.config
        return (self.val_patches is not None and s.iteration >= cfg.iterations
                and cfg.iterations % cfg.validate_every != 0
                and not (s.history and s.history[-1]["iteration"] == s.iteration))

    def _record_validation(self, log: RunLog, values: dict[str, float], step_scheduler: bool) -> None:
        it = self.state.iteration
        log.log(it, "val", values)
        metric = values[self.metric_key]
        if step_scheduler and self.use_scheduler:
            self.scheduler.step(metric)
        self.state.history.append({"iteration": it, **values})
        if metric < self.state.best_metric:
            self.state.best_metric = metric
            self.state.best_iteration = it
            self._save("best")

    # ------------------------------------------------------------------ export
    def export(self, out_dir: str | Path | None = None, which: str | None = None) -> dict[str, Path]:
        """Export ``checkpoints/<which>.pt`` (default :attr:`default_export`; falls back to
        ``latest``) into ``out_dir`` (default ``RUN/export``); returns the files by name, the
        source checkpoint as ``"checkpoint"``."""
        out = Path(out_dir) if out_dir else self.run_dir / "export"
        src = self.run_dir / "checkpoints" / f"{which or self.default_export}.pt"
        if not src.is_file():
            src = self.run_dir / "checkpoints" / "latest.pt"
        return {"checkpoint": src, **self._export(load_checkpoint(src), out)}
