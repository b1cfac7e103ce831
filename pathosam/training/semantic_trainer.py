"""Training of the semantic UNETR head (6 PanNuke classes), as patho-sam's semantic training.

What one iteration does (``pathosam-reference.md`` §7, §2.5.5):

1. A batch of ``batch_size`` patches (``patch_shape``, reference 512x512; images smaller than the
   patch zero-padded at the bottom / right, padding = class 0) drawn by
   :class:`~pathosam.training.data.TrainingPatches` with the reference's ``MinTwoInstanceSampler``
   on the class map (>= 2 distinct class ids, background included) and random flips. Patch ``k``
   of iteration ``i`` is patch ``i * batch_size + k`` of the seeded patch stream: a pure function
   of ``(seed, i, k)``.
2. The raw 0..255 images are resized to the model input size on the longest side (bilinear,
   antialiased; 1024 for SAM), normalised with SAM's mean / std and zero-padded (the UNETR
   preprocessing of torch-em), the image encoder runs (without gradient when ``freeze_encoder``),
   the 6-channel UNETR decoder runs with batch-statistics BatchNorm (``bn_mode="batch"``, running
   statistics updated, as a torch module in train mode), its (B, 6, S, S) model-space output is
   cropped to the resized patch and resized back to the patch size.
3. Loss = ``(1 - dice_weight) * CrossEntropy(weight=class_weights) + dice_weight * dice``
   (reference: ``dice_weight = 0``, CE on the raw decoder output, i.e. ``final_activation=None``),
   AdamW step (lr 1e-4, weight decay 0.01), optional float16 autocast + GradScaler on CUDA.

Every ``validate_every`` iterations the mean loss over ``val_patches`` fixed validation patches
(batch 1) is computed — the reference's validation metric — together with per-class dice of the
argmax class map; ``ReduceLROnPlateau(factor=0.9, patience=5)`` steps on that loss and the lowest
one is saved as ``checkpoints/best.pt``. Validation BatchNorm uses per-patch statistics
(``val_bn_mode="per_tile"``: what the reference's train-mode UNETR does at batch size 1, without
touching the running statistics).

Strategies (the reference's four): ``freeze_encoder`` (``--decoder_only``: only the decoder is
optimised; SAM's image encoder, prompt encoder and mask decoder stay bit-identical) or full
finetuning (image encoder + decoder; prompt encoder and mask decoder never receive gradients);
``decoder_init="pretrained"`` (``--decoder_from_pretrained``: the model's AIS decoder weights
without ``out_conv.*``) or ``"scratch"``; ``"semantic"`` continues from the model's semantic
decoder (not in the reference).

The loop, the run folder and the checkpoints are :class:`~pathosam.training.loop.TrainingLoop`'s;
the settings, class weights and decoder initialisation are :mod:`pathosam.training.semantic_setup`'s.
Run folder: ``config.json``, ``log.csv`` (+ TensorBoard),
``checkpoints/latest.pt`` (every ``checkpoint_every`` iterations and at the end) and
``checkpoints/best.pt`` in micro-sam's training layout (``model_state`` with ``sam.`` keys,
``decoder_state`` = the AIS decoder, unchanged) plus ``semantic_decoder_state``; at the end
``export/semantic_decoder.pt`` (a plain decoder state dict with the reference's key names, like
the released semantic decoder) and, when the encoder was finetuned, ``export/sam.pt`` (plain SAM
dict) + ``export/sam_decoder.pt`` (the AIS decoder, if any), loadable with
``pathosam.load_model("export/sam.pt", decoder="export/sam_decoder.pt",
semantic_decoder="export/semantic_decoder.pt")``.

Resuming (``resume=True``) restores weights (BatchNorm running statistics included), optimizer,
scheduler, scaler, best metric and history from ``checkpoints/latest.pt``; since every random draw
derives from ``(seed, iteration)``, ``N`` iterations + resume + ``N`` more give the same weights as
``2N`` uninterrupted iterations (bit-identical on CPU with the same thread count; CUDA kernels are
not bitwise deterministic).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .loop import RunState, TrainingLoop
from .losses import semantic_loss
from .run import autocast, cpu_state, sam_state, save_checkpoint
from .semantic_setup import SemanticConfig, class_names, init_semantic_decoder, resolve_class_weights

__all__ = ["SemanticState", "SemanticTrainer", "train_semantic"]


@dataclass
class SemanticState(RunState):
    """Where a run stands (:class:`~pathosam.training.loop.RunState`) + the loss of every iteration."""

    train_loss: list[float] = field(default_factory=list)


@contextlib.contextmanager
def _head(decoder: torch.nn.Module, activation: str | None) -> Iterator[torch.nn.Module]:
    """Run ``decoder`` with ``final_activation`` temporarily set."""
    old = decoder.final_activation
    decoder.final_activation = activation
    try:
        yield decoder
    finally:
        decoder.final_activation = old


def _collate(items: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches -> images (B, 3, H, W) float 0..255 and class ids (B, H, W)."""
    return torch.stack([it["image"] for it in items]), torch.stack([it["semantic"] for it in items])


class _IterationBatches(torch.utils.data.Sampler):
    """Index lists of iterations ``start .. stop - 1``: ``[(0, i * B + k) for k < B]``."""

    def __init__(self, start: int, stop: int, batch_size: int) -> None:
        self.start, self.stop, self.batch_size = int(start), int(stop), int(batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        B = self.batch_size
        for i in range(self.start, self.stop):
            yield [(0, i * B + k) for k in range(B)]

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


class SemanticTrainer(TrainingLoop):
    """Train the semantic UNETR head of a :class:`~pathosam.predictor.PathoSAM` (see the module docstring).

    Parameters
    ----------
    model : PathoSAM
        Trained in place: moved to ``device``; its ``semantic_decoder`` is replaced by the
        decoder being trained; with ``freeze_encoder=False`` its image encoder changes too.
    train, val : sequence of samples
        ``.image`` (H, W, 3) uint8, ``.labels`` (H, W) instances, ``.classes`` (H, W) class ids
        (e.g. :func:`pathosam.datasets.open_dataset` of PanNuke). ``val`` may be empty / None (no
        validation, no scheduler, export from the latest weights).
    run_dir : path
        Run folder.
    config : SemanticConfig
    device : str
        "auto", "cpu", "cuda", "mps".
    resume : bool
        Continue from ``run_dir/checkpoints/latest.pt`` (same settings except ``iterations``,
        ``checkpoint_every``, ``num_workers``, ``export_from``).
    """

    kind = "semantic"
    metric_key = "loss"
    resumable_changes = ("iterations", "checkpoint_every", "num_workers", "export_from")
    progress_label = "semantic training"
    state_type = SemanticState

    def __init__(self, model, train: Sequence, val: Sequence | None, run_dir: str | Path,
                 config: SemanticConfig | None = None, device: str | torch.device | None = "auto",
                 resume: bool = False) -> None:
        cfg = copy.deepcopy(config) if config is not None else SemanticConfig()
        super().__init__(model, run_dir, cfg, device)
        if cfg.batch_size is None:
            cfg.batch_size = 8 if self.device.type == "cuda" else 2
        if train is None or len(train) == 0:
            raise ValueError("no training samples")
        self.val_data = val if val is not None and len(val) > 0 else None
        if cfg.validate_every is None:
            cfg.validate_every = max(1, math.ceil(len(train) / cfg.batch_size))
        if cfg.val_patches is None:
            cfg.val_patches = len(self.val_data) if self.val_data is not None else 0
        self.train_data = train
        for name, data in (("training", train), ("validation", self.val_data or [])):
            for s in data:
                if getattr(s, "classes", None) is None:
                    raise ValueError(f"{name} sample {getattr(s, 'name', '?')!r} has no class map (.classes)")
        self.class_weights = resolve_class_weights(cfg.class_weights, train, cfg.num_classes)
        ck = self._latest_checkpoint() if resume else None

        if ck is not None:
            from ..predictor import build_decoder

            decoder = build_decoder(ck["semantic_decoder_state"])
        else:
            decoder = init_semantic_decoder(model, cfg.decoder_init, cfg.seed, cfg.num_classes,
                                            cfg.transposed, cfg.decoder_features)
        self.decoder = decoder.to(self.device)
        model.semantic_decoder = self.decoder
        params = [] if cfg.freeze_encoder else list(self.sam.image_encoder.parameters())
        self._setup_optimizer(params + list(self.decoder.parameters()))

        self.train_patches = self._patches(train, cfg.seed, cfg.flips, oversample=cfg.oversample)
        self.val_patches = (self._patches(self.val_data, cfg.seed + 1, False, n=cfg.val_patches)
                            if self.val_data is not None and cfg.val_patches > 0 else None)
        self._val_cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        if ck is not None:
            self.load(ck)

    @property
    def use_scheduler(self) -> bool:
        return self.config.scheduler

    @property
    def default_export(self) -> str:
        return self.config.export_from

    def _patches(self, data: Sequence, seed: int, flips: bool, n: int | None = None, oversample: bool = False):
        """A patch stream of class maps (rejection sampling on the class map, no relabelling)."""
        from .class_balance import class_balanced_weights
        from .crops import MinInstanceSampler
        from .data import TrainingPatches

        cfg = self.config
        weights = (class_balanced_weights(data, num_classes=cfg.num_classes, count="instances")
                   if oversample else None)
        return TrainingPatches(
            data, cfg.patch_shape, n_samples=n, seed=seed,
            sampler=MinInstanceSampler(cfg.min_classes), sampler_target="classes",
            flips=flips, relabel=False, with_semantic=True, sample_weights=weights,
        )

    # ------------------------------------------------------------------ the model
    def logits(self, images: torch.Tensor, bn_mode: str, train: bool) -> torch.Tensor:
        """(B, 3, H, W) raw 0..255 images -> (B, C, H, W) float32 class scores at the patch size
        (raw outputs, or sigmoid outputs with ``head_activation="sigmoid"``)."""
        activation = "sigmoid" if self.config.head_activation == "sigmoid" else None
        with _head(self.decoder, activation):
            return self.decoder_maps(self.decoder, images, bn_mode, encoder_grad=train and not self.config.freeze_encoder)

    def loss(self, scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The training loss (weighted CE + ``dice_weight`` x dice) of class scores."""
        return semantic_loss(scores, target.to(scores.device), self.class_weights, self.config.dice_weight)

    # ------------------------------------------------------------------ one iteration
    def _train(self, iteration: int, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
        loss = self.train_step(*batch)
        self.state.train_loss.append(loss)
        return {"loss": loss}

    def train_step(self, images: torch.Tensor, target: torch.Tensor) -> float:
        """One optimizer step on a batch; returns the loss."""
        self.decoder.train()
        with autocast(self.device, self.config.amp):
            scores = self.logits(images, "batch", train=True)
        loss = self.loss(scores, target)
        self.backward_step(loss)
        return float(loss.detach())

    def batch(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 3, H, W) float 0..255 and class ids (B, H, W) of an iteration."""
        B = self.config.batch_size
        return _collate([self.train_patches.patch(0, iteration * B + k) for k in range(B)])

    def _batches(self, start: int, stop: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        cfg = self.config
        if cfg.num_workers <= 0:
            for i in range(start, stop):
                yield self.batch(i)
            return
        loader = torch.utils.data.DataLoader(
            self.train_patches, batch_sampler=_IterationBatches(start, stop, cfg.batch_size),
            num_workers=cfg.num_workers, collate_fn=_collate, pin_memory=self.device.type == "cuda")
        yield from loader

    # ------------------------------------------------------------------ validation
    def _val_items(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self._val_cache is None:
            self._val_cache = [_collate([self.val_patches.patch(0, k)]) for k in range(len(self.val_patches))]
        return self._val_cache

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean loss (the reference's validation metric, ``"loss"``) and per-class dice of the
        argmax class map pooled over the validation patches (NaN for a class absent from both
        prediction and ground truth), ``dice_mean`` = mean over the foreground classes present."""
        cfg = self.config
        C = cfg.num_classes
        self.decoder.eval()
        losses = []
        inter = np.zeros(C)
        total = np.zeros(C)
        correct = n_pix = 0
        for images, target in self._val_items():
            with autocast(self.device, cfg.amp):
                scores = self.logits(images, cfg.val_bn_mode, train=False)
            losses.append(float(self.loss(scores, target)))
            pred = scores.argmax(dim=1).cpu()
            for c in range(C):
                p, g = pred == c, target == c
                inter[c] += float((p & g).sum())
                total[c] += float(p.sum() + g.sum())
            correct += int((pred == target).sum())
            n_pix += target.numel()
        names = class_names(C)
        dice = np.where(total > 0, 2 * inter / np.maximum(total, 1), np.nan)
        out = {"loss": float(np.mean(losses))}
        for c in range(1, C):
            out[f"dice_{names[c]}"] = float(dice[c])
        fg = dice[1:]
        out["dice_mean"] = float(np.nanmean(fg)) if np.isfinite(fg).any() else float("nan")
        out["pixel_accuracy"] = correct / max(n_pix, 1)
        return out

    # ------------------------------------------------------------------ run folder
    def fit(self, resume: bool = False, progress: bool = True, stop_after: int | None = None) -> SemanticState:
        """The loop's :meth:`~pathosam.training.loop.TrainingLoop.fit`; the decoder is left in eval mode."""
        try:
            return super().fit(resume=resume, progress=progress, stop_after=stop_after)
        finally:
            self.decoder.eval()

    def _extra_state(self) -> dict[str, Any]:
        return {"semantic_decoder_state": cpu_state(self.decoder), "train_loss": self.state.train_loss,
                "class_weights": self.class_weights}

    def _load_extra(self, ck: dict[str, Any]) -> None:
        self.decoder.load_state_dict(ck["semantic_decoder_state"])
        self.state.train_loss = [float(x) for x in ck.get("train_loss") or []]

    def _run_info(self) -> dict[str, Any]:
        return {"class_weights_resolved": self.class_weights, "model": getattr(self.model, "name", "custom"),
                "device": str(self.device)}

    def _export(self, ck: dict[str, Any], out: Path) -> dict[str, Path]:
        """``semantic_decoder.pt`` (plain decoder state dict, reference key names) and, when the
        encoder was trained, ``sam.pt`` (+ ``sam_decoder.pt`` = the AIS decoder)."""
        from ..models.checkpoint import write_released

        files = {"semantic_decoder": save_checkpoint(out / "semantic_decoder.pt",
                                                     OrderedDict(ck["semantic_decoder_state"]))}
        if not self.config.freeze_encoder:
            sam_path, dec_path = write_released(sam_state(ck["model_state"]), ck.get("decoder_state"), out / "sam.pt")
            files["sam"] = sam_path
            if dec_path is not None:
                files["decoder"] = dec_path
        return files

    def history(self) -> dict[str, Any]:
        """The run's summary: iteration, validations, training losses, best metric, class weights."""
        s = self.state
        return {
            "iteration": s.iteration,
            "validation": list(s.history),
            "train_loss": list(s.train_loss),
            "best_metric": s.best_metric,
            "best_iteration": s.best_iteration,
            "class_weights": self.class_weights,
            "run_dir": str(self.run_dir),
        }


def train_semantic(
    model,
    train: Sequence,
    val: Sequence | None,
    run_dir: str | Path,
    config: SemanticConfig | None = None,
    device: str | torch.device | None = "auto",
    progress: bool = True,
    resume: bool = False,
    stop_after: int | None = None,
    export: bool = True,
) -> dict[str, Any]:
    """Train the semantic UNETR head of ``model`` (``config.num_classes`` maps, 6 = PanNuke's; see
    the module docstring).

    Parameters
    ----------
    model : PathoSAM
        Trained in place; afterwards ``model.semantic_decoder`` holds the last iteration's decoder.
    train, val : sequence of samples
        With ``.image``, ``.labels`` and ``.classes``; ``val`` may be None.
    run_dir : path
        Run folder (checkpoints, log, export).
    config : SemanticConfig, optional
    device : str
        "auto" (CUDA, MPS, CPU), "cpu", "cuda", ...
    progress : bool
        tqdm bar with the loss.
    resume : bool
        Continue from ``run_dir/checkpoints/latest.pt``.
    stop_after : int, optional
        Stop after this many iterations of this call (``latest.pt`` written; no export).
    export : bool
        Write ``run_dir/export/`` when the run is complete.

    Returns
    -------
    dict
        ``iteration``, ``validation`` (one dict per validation: ``iteration``, ``loss``,
        ``dice_<class>``, ``dice_mean``, ``pixel_accuracy``), ``train_loss`` (per iteration),
        ``best_metric``, ``best_iteration``, ``class_weights``, ``run_dir``, ``files`` (exported
        paths by name: ``semantic_decoder``, ``sam``, ``decoder``, ``checkpoint``).
    """
    trainer = SemanticTrainer(model, train, val, run_dir, config, device, resume=resume)
    state = trainer.fit(progress=progress, stop_after=stop_after)
    files = trainer.export() if export and state.iteration >= trainer.config.iterations else {}
    return {**trainer.history(), "files": {k: str(v) for k, v in files.items()}}
