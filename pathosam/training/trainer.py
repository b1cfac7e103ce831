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
(``resume=True``) reproduces an uninterrupted one exactly on CPU. The loop, the run folder and the
checkpoints are :class:`~pathosam.training.loop.TrainingLoop`'s; ``checkpoints/iter_<N>.pt`` are
kept every ``checkpoint_every`` iterations, and ``export/`` holds the released layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..image import transform_coords
from ..prompt_sampling import sample_correction_points
from .loop import TrainingLoop
from .losses import dice_based_distance_loss, sam_loss
from .prompts import (
    PromptChoice,
    TrainingPrompts,
    sample_training_prompts,
    training_prompt_choice,
    validation_prompt_choice,
)
from .run import autocast, iteration_rng, sam_state


@dataclass
class TrainConfig:
    """Settings of a joint training run (defaults: the reference's, where it has one).

    ``iterations``: optimizer iterations (each = one batch, two optimizer steps with the decoder);
    ``patch_shape``: (rows, cols) of the random crops; ``n_objects``: objects prompted per image
    (reference 25–40 on an A100; fewer on CPU); ``lr``: AdamW learning rate (1e-5 finetuning; a
    model trained from scratch needs ~1e-4); ``scheduler_patience``/``scheduler_factor``:
    ReduceLROnPlateau on the validation metric (reference 10 / 0.9, counted in validations);
    ``train_decoder``: also train the UNETR AIS decoder (the joint objective); ``amp``: float16
    autocast + GradScaler on CUDA. ``sample_weights``: probability weights of the training
    images for the image drawn per patch (one per training image; None = uniform; validation
    patches are always drawn uniformly).
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
    sample_weights: tuple[float, ...] | None = None

    def to_dict(self) -> dict:
        """The settings as a dict (what checkpoints and ``config.json`` hold)."""
        return asdict(self)


def _patches(data: Sequence, config: TrainConfig, seed: int, n: int | None, zoom: bool = True):
    """The training (``zoom``) or validation patch stream with AIS targets."""
    from .crops import MinInstanceSampler
    from .data import TrainingPatches
    from .stain import HEDJitter
    from .targets import ais_targets

    return TrainingPatches(
        data, tuple(config.patch_shape), n_samples=n, seed=seed,
        sampler=MinInstanceSampler(config.min_instances, min_size=10), label_transform=ais_targets,
        stain_jitter=HEDJitter() if config.stain_jitter else None,
        scale_range=config.scale_range if zoom else None,
        sample_weights=config.sample_weights if zoom else None,
    )


def _batch(patches, epoch: int, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, H, W) float 0..255 images and (B, 4, H, W) targets [instances, fg, cd, bd]."""
    items = [patches.patch(epoch, int(k)) for k in indices]
    return torch.stack([it["image"] for it in items]), torch.stack([torch.as_tensor(it["labels"]) for it in items])


class JointTrainer(TrainingLoop):
    """Train a :class:`~pathosam.predictor.PathoSAM` (SAM + AIS decoder) with micro-sam's objective.

    Parameters
    ----------
    model : PathoSAM
        The model to train in place (moved to ``device``); needs an instance decoder when
        ``config.train_decoder``.
    train, val : sequence of samples
        ``.image`` (H, W, 3) uint8 and ``.labels`` (H, W) instances (e.g. ``open_dataset``).
    run_dir : path
        Run folder (see :mod:`pathosam.training.loop`).
    config : TrainConfig
    device : str
        "auto", "cpu", "cuda", "mps".
    resume : bool
        Continue from ``run_dir/checkpoints/latest.pt`` now (or with ``fit(resume=True)``); every
        setting but ``iterations`` must be the same, so a finished run can be extended.
    """

    kind = "joint"
    metric_key = "metric"
    numbered_checkpoints = True

    def __init__(self, model, train: Sequence, val: Sequence | None, run_dir: str | Path,
                 config: TrainConfig | None = None, device: str | torch.device | None = "auto",
                 resume: bool = False) -> None:
        cfg = config or TrainConfig()
        if cfg.train_decoder and model.decoder is None:
            raise ValueError("the joint objective trains the AIS decoder; the model has none (train_decoder=False)")
        super().__init__(model, run_dir, cfg, device)
        self.decoder = model.decoder
        self.train_patches = _patches(train, cfg, cfg.seed, cfg.iterations * cfg.batch_size)
        self.val_patches = _patches(val, cfg, cfg.seed + 1, cfg.val_patches, zoom=False) if val else None
        params = list(self.sam.parameters())
        if cfg.train_decoder:
            params += list(self.decoder.parameters())
        self._setup_optimizer(params)
        if resume:
            self.resume()

    # ------------------------------------------------------------------ prompted passes
    def _decode_prompts(self, emb: torch.Tensor, points: np.ndarray | None, labels: np.ndarray | None,
                        boxes: np.ndarray | None, mask_input: torch.Tensor | None, multimask: bool,
                        in_size: tuple[int, int], orig: tuple[int, int]
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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

    def interactive_loss(self, emb: torch.Tensor, prompts: list[TrainingPrompts], in_size: tuple[int, int],
                         orig: tuple[int, int], rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
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

    def _prompts(self, targets: torch.Tensor, choice: PromptChoice, rng: np.random.Generator) -> list[TrainingPrompts]:
        """Initial prompts of every image, truncated to the smallest object count of the batch."""
        prompts = [sample_training_prompts(t[0].numpy().astype(np.int64), choice, rng, self.config.n_objects,
                                           box_distortion_factor=self.config.box_distortion) for t in targets]
        n = min(len(p.object_ids) for p in prompts)
        return [p.truncate(n) for p in prompts]

    # ------------------------------------------------------------------ one iteration
    def _train(self, iteration: int, batch: Any) -> dict[str, float]:
        return self.train_step(iteration)

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
            with autocast(self.device, cfg.amp):
                emb, _, in_size, orig = self.encode(images)
                loss, dice = self.interactive_loss(emb, prompts, in_size, orig, rng)
            self.backward_step(loss)
            out.update(interactive_loss=float(loss.detach()), mask_dice_loss=float(dice.detach()))
        if cfg.train_decoder:
            self.decoder.train()
            with autocast(self.device, cfg.amp):
                uloss = self.unetr_loss(images, targets, bn_mode="batch")
            self.backward_step(uloss)
            out["unetr_loss"] = float(uloss.detach())
        return out

    def unetr_loss(self, images: torch.Tensor, targets: torch.Tensor, bn_mode: str) -> torch.Tensor:
        """Dice-based distance loss of the AIS decoder's maps against the targets' channels 1..3."""
        maps = self.decoder_maps(self.decoder, images, bn_mode)
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
                emb, _, in_size, orig = self.encode(images)
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

    # ------------------------------------------------------------------ run folder
    def _run_info(self) -> dict[str, Any]:
        return {"model": self.model.name}

    def _export(self, ck: dict[str, Any], out: Path) -> dict[str, Path]:
        """The released layout (``sam.pt`` + ``sam_decoder.pt``) and ``{model_state, decoder_state}``
        (``model_and_decoder.pt``)."""
        from ..models.checkpoint import write_model_and_decoder, write_released

        sam = sam_state(ck["model_state"])
        dec = ck.get("decoder_state")
        sam_path, dec_path = write_released(sam, dec, out / "sam.pt")
        files = {"sam": sam_path, "model_and_decoder": write_model_and_decoder(sam, dec, out / "model_and_decoder.pt")}
        if dec_path is not None:
            files["decoder"] = dec_path
        return files
