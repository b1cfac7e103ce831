"""The joint trainer: SAM's iterative-prompting objective + the UNETR (AIS) decoder, as micro-sam.

One training iteration on a batch of patches (``pathosam-reference.md`` §6.2–§6.5):

1. Images are resized to the model's input size on the longest side (bilinear, antialiased, as
   SAM's ``ResizeLongestSide``), normalised and padded; the image encoder runs once.
2. Objects: up to ``n_objects`` ids per image (random, sorted), truncated to the smallest count in
   the batch. Even iterations start from one positive point per object (uniform inside it, 3
   masks), odd ones from a distorted box (one mask).
3. ``n_sub_iterations`` (8) passes of prompt encoder + mask decoder: loss = dice of the upsampled
   mask (minimum over the 3 masks) + MSE of the predicted IoU, summed over the batch, averaged over
   the sub-iterations. Between passes (no gradient): the mask with the highest predicted IoU is
   binarised, one positive and one negative correction point are appended, and with probability
   ``mask_prob`` (per image and pass) its low-res logits become the mask prompt.
4. Backward and an AdamW step; then, on the same batch, the UNETR forward (encoder included) with
   the dice-based distance loss on the AIS targets and a **second** optimizer step.

Validation (every ``validate_every`` iterations, on fixed patches): metric = interactive dice loss +
UNETR loss / 3, as the reference; ReduceLROnPlateau steps on it and the best checkpoint is the
lowest. All randomness comes from generators derived from ``(seed, iteration)``, so a resumed run
(``resume=True``) reproduces an uninterrupted one exactly on CPU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..image import transform_coords
from .losses import dice_based_distance_loss, sam_loss
from .prompts import (
    TrainingPrompts,
    sample_correction_points,
    sample_training_prompts,
    training_prompt_choice,
    validation_prompt_choice,
)
from .run import (
    RunLog,
    autocast,
    grad_scaler,
    iteration_rng,
    load_checkpoint,
    load_sam_state,
    resize_to_input,
    resolve_device,
    save_checkpoint,
    seed_everything,
    write_config,
)


@dataclass
class TrainConfig:
    """Settings of a joint training run (defaults: the reference's, where it has one).

    ``iterations``: optimizer iterations (each = one batch, two optimizer steps with the decoder);
    ``patch_shape``: (rows, cols) of the random crops; ``n_objects``: objects prompted per image
    (reference 25–40 on an A100; fewer on CPU); ``lr``: AdamW learning rate (1e-5 finetuning; a
    model trained from scratch needs ~1e-4); ``scheduler_patience``/``scheduler_factor``:
    ReduceLROnPlateau on the validation metric (reference 10 / 0.9, counted in validations);
    ``train_decoder``: also train the UNETR AIS decoder (the joint objective); ``amp``: float16
    autocast + GradScaler on CUDA.
    """

    iterations: int = 1000
    batch_size: int = 2
    patch_shape: tuple[int, int] = (512, 512)
    n_objects: int = 25
    n_sub_iterations: int = 8
    mask_prob: float = 0.5
    box_distortion: float = 0.025
    lr: float = 1e-5
    weight_decay: float = 0.01
    scheduler_factor: float = 0.9
    scheduler_patience: int = 10
    train_decoder: bool = True
    validate_every: int = 100
    val_patches: int = 8
    checkpoint_every: int = 500
    min_instances: int = 4
    seed: int = 0
    amp: bool = True
    stain_jitter: bool = False
    scale_range: tuple[float, float] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainState:
    """Where a run stands: next iteration, best validation metric, history of validations."""

    iteration: int = 0
    best_metric: float = math.inf
    history: list[dict] = field(default_factory=list)


def _patches(data, config: TrainConfig, seed: int, n: int | None, zoom: bool = True):
    from .data import HEDJitter, MinInstanceSampler, TrainingPatches
    from .targets import ais_targets

    return TrainingPatches(
        data, tuple(config.patch_shape), n_samples=n, seed=seed,
        sampler=MinInstanceSampler(config.min_instances, min_size=10), label_transform=ais_targets,
        stain_jitter=HEDJitter() if config.stain_jitter else None,
        scale_range=config.scale_range if zoom else None,
    )


def _batch(patches, epoch: int, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, H, W) float 0..255 images and (B, 4, H, W) targets [instances, fg, cd, bd]."""
    items = [patches.patch(epoch, int(k)) for k in indices]
    return torch.stack([it["image"] for it in items]), torch.stack([torch.as_tensor(it["labels"]) for it in items])


class JointTrainer:
    """Train a :class:`~pathosam.model.PathoSAM` (SAM + AIS decoder) with micro-sam's objective.

    Parameters
    ----------
    model : PathoSAM
        The model to train in place (moved to ``device``); needs an instance decoder when
        ``config.train_decoder``.
    train, val : sequence of samples
        ``.image`` (H, W, 3) uint8 and ``.labels`` (H, W) instances (e.g. ``open_dataset``).
    run_dir : path
        Run folder (see :mod:`pathosam.training.run`).
    config : TrainConfig
    device : str
        "auto", "cpu", "cuda", "mps".
    """

    def __init__(self, model, train, val, run_dir, config: TrainConfig | None = None, device: str = "auto") -> None:
        self.config = config or TrainConfig()
        self.device = resolve_device(device)
        self.model = model
        if self.config.train_decoder and model.decoder is None:
            raise ValueError("the joint objective trains the AIS decoder; the model has none (train_decoder=False)")
        self.sam = model.sam.to(self.device)
        self.decoder = model.decoder.to(self.device) if model.decoder is not None else None
        model.device = self.device
        self.run_dir = Path(run_dir)
        self.train_patches = _patches(train, self.config, self.config.seed, self.config.iterations * self.config.batch_size)
        self.val_patches = _patches(val, self.config, self.config.seed + 1, self.config.val_patches, zoom=False) if val else None
        params = list(self.sam.parameters())
        if self.config.train_decoder:
            params += list(self.decoder.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=self.config.lr, weight_decay=self.config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=self.config.scheduler_factor, patience=self.config.scheduler_patience)
        self.scaler = grad_scaler(self.device, self.config.amp)
        self.state = TrainState()
        self.long_side = int(self.sam.image_encoder.img_size)

    # ------------------------------------------------------------------ model inputs
    def _encode(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        """Images (B, 3, H, W) 0..255 -> embeddings, model input size, original size."""
        emb, _, in_size, orig = self._encode_with_input(images)
        return emb, in_size, orig

    def _encode_with_input(self, images: torch.Tensor):
        """As :meth:`_encode`, also the preprocessed model input (for decoders that read it)."""
        x, in_size, orig = resize_to_input(images, self.long_side, self.device)
        x = self.sam.preprocess(x)
        return self.sam.image_encoder(x), x, in_size, orig

    def _decode_prompts(self, emb: torch.Tensor, points, labels, boxes, mask_input, multimask: bool,
                        in_size, orig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One image's objects: (n, C, H, W) mask logits at the patch size, (n, C) IoU
        predictions, (n, C, h, w) low-res logits."""
        dev = self.device
        pts = None
        if points is not None:
            coords = transform_coords(points.astype(np.float64), orig, self.long_side)
            pts = (torch.as_tensor(coords, dtype=torch.float32, device=dev), torch.as_tensor(labels, device=dev))
        bx = None
        if boxes is not None:
            b = transform_coords(boxes.reshape(-1, 2, 2).astype(np.float64), orig, self.long_side).reshape(-1, 4)
            bx = torch.as_tensor(b, dtype=torch.float32, device=dev)
        sparse, dense = self.sam.prompt_encoder(pts, bx, mask_input)
        low_res, iou = self.sam.mask_decoder(emb, self.sam.prompt_encoder.get_dense_pe(), sparse, dense,
                                             multimask_output=multimask)
        return self.sam.postprocess_masks(low_res, in_size, orig), iou, low_res

    def interactive_loss(self, emb: torch.Tensor, prompts: list[TrainingPrompts], in_size, orig,
                         rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, mask-dice part) averaged over the sub-iterations, summed over the images."""
        cfg = self.config
        state = [dict(points=p.points_xy, labels=p.point_labels, boxes=p.boxes_xyxy, mask=None) for p in prompts]
        targets = [torch.as_tensor(p.masks[:, None], dtype=torch.float32, device=self.device) for p in prompts]
        total = emb.new_zeros(())
        dice_total = emb.new_zeros(())
        for k in range(cfg.n_sub_iterations):
            multimask = k == 0 and prompts[0].multimask
            for b, (p, s) in enumerate(zip(prompts, state)):
                masks, iou, low_res = self._decode_prompts(emb[b : b + 1], s["points"], s["labels"], s["boxes"],
                                                           s["mask"], multimask, in_size, orig)
                parts = sam_loss(masks, targets[b], iou)
                total = total + parts.total
                dice_total = dice_total + parts.mask_loss
                if k == cfg.n_sub_iterations - 1:
                    continue
                with torch.no_grad():  # corrections for the next pass
                    best = iou.argmax(dim=1)
                    idx = torch.arange(len(best), device=best.device)
                    pred = (masks[idx, best] > 0).cpu().numpy()
                    new_pts, new_lab = sample_correction_points(pred, p.masks, rng)
                    s["points"] = new_pts if s["points"] is None else np.concatenate([s["points"], new_pts], axis=1)
                    s["labels"] = new_lab if s["labels"] is None else np.concatenate([s["labels"], new_lab], axis=1)
                    s["mask"] = low_res[idx, best][:, None].detach() if rng.random() < cfg.mask_prob else None
        n = cfg.n_sub_iterations
        return total / n, dice_total / n

    def _prompts(self, targets: torch.Tensor, choice, rng) -> list[TrainingPrompts]:
        prompts = [sample_training_prompts(t[0].numpy().astype(np.int64), choice, rng, self.config.n_objects,
                                           box_distortion_factor=self.config.box_distortion) for t in targets]
        n = min(len(p.object_ids) for p in prompts)
        return [p.truncate(n) for p in prompts]

    # ------------------------------------------------------------------ one iteration
    def train_step(self, iteration: int) -> dict[str, float]:
        """One iteration: interactive step, then (with the decoder) the UNETR step."""
        cfg = self.config
        rng = iteration_rng(cfg.seed, iteration)
        B = cfg.batch_size
        images, targets = _batch(self.train_patches, 0, range(iteration * B, (iteration + 1) * B))
        self.sam.train()
        out = {}
        prompts = self._prompts(targets, training_prompt_choice(iteration), rng)
        if len(prompts[0].object_ids) > 0:
            self.optimizer.zero_grad(set_to_none=True)
            with autocast(self.device, cfg.amp):
                emb, in_size, orig = self._encode(images)
                loss, dice = self.interactive_loss(emb, prompts, in_size, orig, rng)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            out.update(interactive_loss=float(loss.detach()), mask_dice_loss=float(dice.detach()))
        if cfg.train_decoder:
            self.decoder.train()
            self.optimizer.zero_grad(set_to_none=True)
            with autocast(self.device, cfg.amp):
                uloss = self.unetr_loss(images, targets, bn_mode="batch")
            self.scaler.scale(uloss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            out["unetr_loss"] = float(uloss.detach())
        return out

    def unetr_loss(self, images: torch.Tensor, targets: torch.Tensor, bn_mode: str) -> torch.Tensor:
        from ..models.unetr import postprocess_maps

        emb, x, in_size, orig = self._encode_with_input(images)
        maps = postprocess_maps(self.decoder(emb, bn_mode, x).float(), in_size, orig)
        return dice_based_distance_loss(maps, targets[:, 1:].to(self.device).float()).total

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Validation metric on the fixed validation patches (lower is better)."""
        cfg = self.config
        self.sam.eval()
        inter, unetr = [], []
        for k in range(cfg.val_patches):
            rng = iteration_rng(cfg.seed + 1, k)
            images, targets = _batch(self.val_patches, 0, [k])
            prompts = self._prompts(targets, validation_prompt_choice(k, rng), rng)
            if len(prompts[0].object_ids):
                emb, in_size, orig = self._encode(images)
                _, dice = self.interactive_loss(emb, prompts, in_size, orig, rng)
                inter.append(float(dice))
            if cfg.train_decoder or self.decoder is not None:
                self.decoder.eval()
                unetr.append(float(self.unetr_loss(images, targets, bn_mode="per_tile")))
        out = {"interactive_dice_loss": float(np.mean(inter)) if inter else 0.0}
        if unetr:
            out["unetr_loss"] = float(np.mean(unetr))
        out["metric"] = out["interactive_dice_loss"] + out.get("unetr_loss", 0.0) / 3
        return out

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self) -> dict:
        """The run's state in micro-sam's training-checkpoint layout (+ pathosam's run state)."""
        return {
            "iteration": self.state.iteration,
            "best_metric": self.state.best_metric,
            "history": self.state.history,
            "model_state": {f"sam.{k}": v.detach().cpu() for k, v in self.sam.state_dict().items()},
            "decoder_state": ({k: v.detach().cpu() for k, v in self.decoder.state_dict().items()}
                              if self.decoder is not None else None),
            "optimizer_state": self.optimizer.state_dict(),
            "scheduler_state": self.scheduler.state_dict(),
            "scaler_state": self.scaler.state_dict(),
            "config": self.config.to_dict(),
        }

    def load(self, ck: dict) -> None:
        """Restore a :meth:`checkpoint` (weights, optimizer, scheduler, scaler, iteration)."""
        load_sam_state(self.sam, ck["model_state"])
        if self.decoder is not None and ck.get("decoder_state"):
            from ..models.unetr import has_image_skip

            want = has_image_skip(ck["decoder_state"])
            if want != self.decoder.image_skip:
                raise ValueError(f"the run's AIS decoder has {'an' if want else 'no'} image-skip branch, this "
                                 f"model's has {'one' if self.decoder.image_skip else 'none'}: resume "
                                 f"with{'' if want else 'out'} --image-skip")
            self.decoder.load_state_dict(ck["decoder_state"])
        self.optimizer.load_state_dict(ck["optimizer_state"])
        self.scheduler.load_state_dict(ck["scheduler_state"])
        if ck.get("scaler_state"):
            self.scaler.load_state_dict(ck["scaler_state"])
        self.state = TrainState(int(ck["iteration"]), float(ck["best_metric"]), list(ck.get("history", [])))

    def _save(self, name: str) -> Path:
        return save_checkpoint(self.run_dir / "checkpoints" / f"{name}.pt", self.checkpoint())

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: bool = False, progress: bool = True, stop_after: int | None = None) -> TrainState:
        """Train until ``config.iterations`` (continuing from ``checkpoints/latest.pt`` with
        ``resume``; every setting but ``iterations`` must be the same, so a finished run can be
        extended); validates, logs and saves checkpoints on the way; returns the final state.
        ``stop_after``: stop after this many iterations of this call (for tests / time limits)."""
        from tqdm.auto import tqdm

        cfg = self.config
        seed_everything(cfg.seed)
        latest = self.run_dir / "checkpoints" / "latest.pt"
        if resume:
            if not latest.is_file():
                raise FileNotFoundError(f"nothing to resume: {latest} does not exist")
            ck = load_checkpoint(latest)
            same = {k: v for k, v in cfg.to_dict().items() if k != "iterations"}
            # settings added after a run was saved have their default there
            saved = {**TrainConfig().to_dict(), **(ck.get("config") or {})}
            if {k: v for k, v in saved.items() if k != "iterations"} != same:
                raise ValueError(f"{latest} was written with other settings; resume needs the same ones\n"
                                 f"  saved: {ck.get('config')}\n  now:   {cfg.to_dict()}")
            self.load(ck)
        write_config(self.run_dir, {"trainer": "joint", **cfg.to_dict(), "model": self.model.name})
        log = RunLog(self.run_dir)
        log.truncate_after(self.state.iteration)
        done_here = 0
        bar = tqdm(total=cfg.iterations, initial=self.state.iteration, desc="training", unit="it",
                   disable=not progress)
        t0 = time.perf_counter()
        try:
            while self.state.iteration < cfg.iterations:
                it = self.state.iteration
                values = self.train_step(it)
                self.state.iteration = it + 1
                values["lr"] = self.optimizer.param_groups[0]["lr"]
                log.log(it + 1, "train", values)
                bar.set_postfix({k: f"{v:.3g}" for k, v in values.items() if k != "lr"})
                bar.update(1)
                if self.val_patches is not None and (it + 1) % cfg.validate_every == 0:
                    self._after_validation(log, self.validate())
                if (it + 1) % cfg.checkpoint_every == 0:
                    self._save(f"iter_{it + 1}")
                    self._save("latest")  # a killed run resumes from here
                done_here += 1
                if stop_after is not None and done_here >= stop_after and self.state.iteration < cfg.iterations:
                    self._save("latest")
                    return self.state
            if self.val_patches is not None and cfg.iterations % cfg.validate_every:
                self._after_validation(log, self.validate())
            self._save("latest")
        finally:
            bar.close()
            log.log(self.state.iteration, "time", {"seconds_this_session": time.perf_counter() - t0})
            log.close()
        return self.state

    def _after_validation(self, log: RunLog, val: dict) -> None:
        it = self.state.iteration
        log.log(it, "val", val)
        self.scheduler.step(val["metric"])
        self.state.history.append({"iteration": it, **val})
        if val["metric"] < self.state.best_metric:
            self.state.best_metric = val["metric"]
            self._save("best")

    # ------------------------------------------------------------------ export
    def export(self, out_dir: str | Path | None = None, which: str = "best") -> dict[str, Path]:
        """Export ``checkpoints/<which>.pt`` (falls back to latest) in the released layout
        (``sam.pt`` + ``sam_decoder.pt``) and as ``{model_state, decoder_state}``
        (``model_and_decoder.pt``); returns the paths."""
        from ..models.checkpoint import write_model_and_decoder, write_released

        out = Path(out_dir) if out_dir else self.run_dir / "export"
        src = self.run_dir / "checkpoints" / f"{which}.pt"
        if not src.is_file():
            src = self.run_dir / "checkpoints" / "latest.pt"
        ck = load_checkpoint(src)
        sam_state = {k[len("sam."):]: v for k, v in ck["model_state"].items()}
        dec = ck.get("decoder_state")
        sam_path, dec_path = write_released(sam_state, dec, out / "sam.pt")
        both = write_model_and_decoder(sam_state, dec, out / "model_and_decoder.pt")
        files = {"sam": sam_path, "model_and_decoder": both, "checkpoint": src}
        if dec_path is not None:
            files["decoder"] = dec_path
        return files
