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

Run folder (see :mod:`pathosam.training.run`): ``config.json``, ``log.csv`` (+ TensorBoard),
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
import json
import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from .losses import semantic_class_weights, semantic_loss
from .run import (
    RunLog,
    autocast,
    grad_scaler,
    load_checkpoint,
    load_sam_state,
    resize_to_input,
    resolve_device,
    save_checkpoint,
    seed_everything,
    write_config,
)

__all__ = [
    "PANNUKE_CLASSES",
    "REFERENCE_CLASS_WEIGHTS",
    "SemanticConfig",
    "SemanticState",
    "SemanticTrainer",
    "init_semantic_decoder",
    "resolve_class_weights",
    "train_semantic",
]

#: Class names by id (PanNuke, patho-sam ``CLASS_DICT['pannuke']``).
PANNUKE_CLASSES = ("background", "neoplastic", "inflammatory", "connective", "dead", "epithelial")
#: patho-sam's generalist CE weights (``calculate_class_weights_for_loss_weighting()``).
REFERENCE_CLASS_WEIGHTS = (1.0, 1.0, 7.0, 6.0, 10.0, 8.0)

DecoderInit = Literal["scratch", "pretrained", "semantic"]
# settings that may change between a run and its resumption (they do not alter the trajectory)
_RESUMABLE_CHANGES = ("iterations", "checkpoint_every", "num_workers", "export_from")


@dataclass
class SemanticConfig:
    """Settings of a semantic-head training run (defaults: the reference's where it has one).

    Parameters
    ----------
    iterations : int
        Optimizer steps (reference: 100,000).
    batch_size : int or None
        Patches per step; None = 8 on CUDA (the reference's) and 2 elsewhere (a 1024-px UNETR
        forward + backward takes tens of seconds per patch on a CPU).
    lr, weight_decay : float
        AdamW (reference: lr 1e-4, torch's default weight decay 0.01).
    patch_shape : (int, int)
        Training crop (rows, cols); reference 512x512 (PanNuke's 256-px tiles zero-padded).
    freeze_encoder : bool
        Reference ``--decoder_only``: optimise the decoder only.
    decoder_init : {"scratch", "pretrained", "semantic"}
        ``"scratch"``: fresh decoder (torch default init, seeded); ``"pretrained"``: the AIS
        decoder's weights except ``out_conv`` (reference ``--decoder_from_pretrained``);
        ``"semantic"``: continue from the model's semantic decoder.
    class_weights : "none", "reference", "auto" or list of float
        CE class weights: unweighted (reference for PanNuke-only training), ``[1, 1, 7, 6, 10, 8]``
        (reference generalist), ``"auto"`` = :func:`~pathosam.training.losses.semantic_class_weights`
        of the training data's per-class instance counts, or one weight per class.
    dice_weight : float
        Weight of the softmax dice term (reference 0: CE only).
    oversample : bool
        Draw training images in proportion to
        :func:`~pathosam.training.data.class_balanced_weights` (instance counts), so images with
        rare classes come more often (not in the reference).
    scheduler : bool
        ReduceLROnPlateau on the validation loss, ``scheduler_factor`` 0.9, ``scheduler_patience``
        5 (counted in validations).
    validate_every : int or None
        Validation interval in iterations; None = one pass over the training set,
        ``ceil(len(train) / batch_size)`` (the reference validates after every epoch).
    val_patches : int or None
        Number of fixed validation patches (batch 1); None = one per validation image (the
        reference's validation loader; its crops were redrawn every time, ours are fixed).
    checkpoint_every : int
        ``checkpoints/latest.pt`` interval (also written at the end).
    seed : int
        Seed of everything random (patches, flips, scratch initialisation).
    amp : bool
        float16 autocast + GradScaler (CUDA only; ignored elsewhere).
    num_classes : int
        Output channels (6: background + 5 PanNuke classes).
    min_classes : int
        Rejection sampling: distinct class ids (background included) a patch must hold (reference 2).
    flips : bool
        Random horizontal / vertical flips (reference).
    head_activation : {"none", "sigmoid"}
        What the CE sees: raw outputs (``"none"``, patho-sam since 2026-02) or sigmoid outputs
        (``"sigmoid"``, the earlier scripts that produced the released decoder).
    val_bn_mode : {"per_tile", "running"}
        BatchNorm statistics during validation.
    transposed, decoder_features : optional
        Upsampler flavour and widths of a scratch decoder; None = those of the model's AIS decoder
        (else transposed convolutions and the reference widths).
    num_workers : int
        DataLoader worker processes for training patches (0 = main process; results identical).
    export_from : {"best", "latest"}
        Which checkpoint ``export/`` is written from (best falls back to latest).
    """

    iterations: int = 10000
    batch_size: int | None = None
    lr: float = 1e-4
    weight_decay: float = 0.01
    patch_shape: tuple[int, int] = (512, 512)
    freeze_encoder: bool = False
    decoder_init: DecoderInit = "scratch"
    class_weights: str | list[float] = "none"
    dice_weight: float = 0.0
    oversample: bool = False
    scheduler: bool = True
    scheduler_factor: float = 0.9
    scheduler_patience: int = 5
    validate_every: int | None = None
    val_patches: int | None = None
    checkpoint_every: int = 1000
    seed: int = 0
    amp: bool = True
    num_classes: int = 6
    min_classes: int = 2
    flips: bool = True
    head_activation: Literal["none", "sigmoid"] = "none"
    val_bn_mode: Literal["per_tile", "running"] = "per_tile"
    transposed: bool | None = None
    decoder_features: int | None = None
    num_workers: int = 0
    export_from: Literal["best", "latest"] = "best"

    def __post_init__(self) -> None:
        self.patch_shape = (int(self.patch_shape[0]), int(self.patch_shape[1]))
        if not isinstance(self.class_weights, str):
            self.class_weights = [float(w) for w in self.class_weights]
        if self.iterations < 0:
            raise ValueError("iterations must be >= 0")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if min(self.patch_shape) < 1:
            raise ValueError(f"patch_shape must be positive, got {self.patch_shape}")
        if self.decoder_init not in ("scratch", "pretrained", "semantic"):
            raise ValueError(f"decoder_init must be 'scratch', 'pretrained' or 'semantic', got {self.decoder_init!r}")
        if isinstance(self.class_weights, str) and self.class_weights not in ("none", "reference", "auto"):
            raise ValueError(f"class_weights must be 'none', 'reference', 'auto' or a list, got {self.class_weights!r}")
        if not 0.0 <= self.dice_weight <= 1.0:
            raise ValueError("dice_weight must be in [0, 1]")
        if self.head_activation not in ("none", "sigmoid"):
            raise ValueError(f"head_activation must be 'none' or 'sigmoid', got {self.head_activation!r}")
        if self.val_bn_mode not in ("per_tile", "running"):
            raise ValueError(f"val_bn_mode must be 'per_tile' or 'running', got {self.val_bn_mode!r}")
        if self.export_from not in ("best", "latest"):
            raise ValueError(f"export_from must be 'best' or 'latest', got {self.export_from!r}")
        if (self.validate_every is not None and self.validate_every < 1) or self.checkpoint_every < 1:
            raise ValueError("validate_every and checkpoint_every must be >= 1")
        if self.val_patches is not None and self.val_patches < 0:
            raise ValueError("val_patches must be >= 0")
        if self.num_classes < 2:
            raise ValueError("num_classes must be >= 2")

    def to_dict(self) -> dict:
        """JSON-compatible dict (tuples as lists)."""
        return json.loads(json.dumps(asdict(self)))


@dataclass
class SemanticState:
    """Where a run stands: iterations done, best validation loss, histories."""

    iteration: int = 0
    best_metric: float = math.inf
    best_iteration: int | None = None
    validation: list[dict] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# class weights, decoder initialisation
# --------------------------------------------------------------------------------------------


def resolve_class_weights(
    spec: str | Sequence[float] | None, train: Sequence | None = None, num_classes: int = 6
) -> list[float] | None:
    """Turn a ``class_weights`` setting into one CE weight per class (or None = unweighted).

    Parameters
    ----------
    spec : "none", "reference", "auto", None or sequence of float
        See :class:`SemanticConfig`.
    train : sequence of samples, optional
        Needed for ``"auto"``: samples with ``.labels`` and ``.classes``; the foreground classes'
        instance counts (majority class per instance, as patho-sam counts class frequencies)
        go through :func:`~pathosam.training.losses.semantic_class_weights`.
    num_classes : int
        Number of classes including background.

    Returns
    -------
    list of float or None
    """
    if spec is None or (isinstance(spec, str) and spec == "none"):
        return None
    if isinstance(spec, str):
        if spec == "reference":
            if num_classes != len(REFERENCE_CLASS_WEIGHTS):
                raise ValueError(f"the reference class weights are for 6 classes, not {num_classes}")
            return list(REFERENCE_CLASS_WEIGHTS)
        if spec == "auto":
            from .data import class_counts

            if not train:
                raise ValueError("class_weights='auto' needs the training samples")
            counts = class_counts(train, num_classes=num_classes, count="instances").sum(axis=0)
            if counts[1:].sum() <= 0:
                raise ValueError("class_weights='auto': the training data hold no labelled foreground class")
            return [float(w) for w in semantic_class_weights(counts[1:])]
        raise ValueError(f"unknown class_weights {spec!r}: use 'none', 'reference', 'auto' or a list")
    w = [float(x) for x in spec]
    if len(w) != num_classes:
        raise ValueError(f"class_weights needs {num_classes} values (background first), got {len(w)}")
    if any(not math.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
        raise ValueError("class_weights must be finite, non-negative and not all zero")
    return w


def _embed_dim(model) -> int:
    return int(getattr(model.sam.image_encoder, "out_chans", 256))


def init_semantic_decoder(
    model,
    init: DecoderInit = "scratch",
    seed: int = 0,
    num_classes: int = 6,
    transposed: bool | None = None,
    features: int | None = None,
):
    """A new semantic UNETR decoder for ``model`` (the model is not changed).

    ``"scratch"``: torch's default initialisation drawn under ``torch.manual_seed(seed)`` (the
    global random state is left as it was); upsampler flavour and widths from ``transposed`` /
    ``features``, else the model's AIS decoder's, else transposed convolutions (the released
    decoders' layout) and the reference widths. ``"pretrained"``: every weight of the AIS decoder
    except ``out_conv.*`` (which keeps its seeded fresh initialisation), as patho-sam's
    ``--decoder_from_pretrained``. ``"semantic"``: a copy of the model's semantic decoder.

    Returns
    -------
    pathosam.models.unetr.UNETRDecoder
        On the CPU, ``final_activation="sigmoid"`` (as :func:`pathosam.load_model` builds semantic
        decoders; the trainer feeds the CE without it unless ``head_activation="sigmoid"``).
    """
    from ..models.unetr import UNETRDecoder

    if init == "semantic":
        if model.semantic_decoder is None:
            raise ValueError("decoder_init='semantic' needs a model with a semantic decoder")
        dec = copy.deepcopy(model.semantic_decoder).cpu()
        if dec.out_channels != num_classes:
            raise ValueError(f"the model's semantic decoder has {dec.out_channels} classes, not {num_classes}")
        return dec
    if init not in ("scratch", "pretrained"):
        raise ValueError(f"decoder_init must be 'scratch', 'pretrained' or 'semantic', got {init!r}")
    ais = model.decoder
    if init == "pretrained":
        if ais is None:
            raise ValueError("decoder_init='pretrained' needs a model with an AIS (instance) decoder")
        if transposed is not None and transposed != ais.transposed:
            raise ValueError("decoder_init='pretrained' keeps the AIS decoder's upsampler flavour")
    if transposed is None:
        transposed = ais.transposed if ais is not None else True
    kwargs: dict[str, Any] = {}
    if features is not None:
        kwargs["features"] = features
    elif ais is not None and getattr(ais, "features", None) is not None:
        kwargs["features"] = ais.features
    if init == "pretrained" and getattr(ais, "image_skip", False):
        kwargs["image_skip"] = True
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        dec = UNETRDecoder(num_classes, transposed, embed_dim=_embed_dim(model), final_activation="sigmoid", **kwargs)
    if init == "pretrained":
        state = {k: v for k, v in ais.state_dict().items() if not k.startswith("out_conv.")}
        missing, unexpected = dec.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("out_conv.") for k in missing):
            raise ValueError(f"the AIS decoder does not fit the semantic decoder: missing {missing}, unexpected {unexpected}")
    return dec.eval()


@contextlib.contextmanager
def _head(decoder, activation: str | None):
    """Run ``decoder`` with ``final_activation`` temporarily set."""
    old = decoder.final_activation
    decoder.final_activation = activation
    try:
        yield decoder
    finally:
        decoder.final_activation = old


def _cpu_state(module: torch.nn.Module) -> OrderedDict:
    return OrderedDict((k, v.detach().cpu().contiguous().clone()) for k, v in module.state_dict().items())


def _collate(items: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([it["image"] for it in items]), torch.stack([it["semantic"] for it in items])


class _IterationBatches(torch.utils.data.Sampler):
    """Index lists of iterations ``start .. stop - 1``: ``[(0, i * B + k) for k < B]``."""

    def __init__(self, start: int, stop: int, batch_size: int) -> None:
        self.start, self.stop, self.batch_size = int(start), int(stop), int(batch_size)

    def __iter__(self):
        B = self.batch_size
        for i in range(self.start, self.stop):
            yield [(0, i * B + k) for k in range(B)]

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


# --------------------------------------------------------------------------------------------
# the trainer
# --------------------------------------------------------------------------------------------


class SemanticTrainer:
    """Train the semantic UNETR head of a :class:`~pathosam.model.PathoSAM` (see the module docstring).

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

    def __init__(self, model, train, val, run_dir, config: SemanticConfig | None = None,
                 device: str | torch.device | None = "auto", resume: bool = False) -> None:
        cfg = copy.deepcopy(config) if config is not None else SemanticConfig()
        self.device = resolve_device(device)
        if cfg.batch_size is None:
            cfg.batch_size = 8 if self.device.type == "cuda" else 2
        if train is None or len(train) == 0:
            raise ValueError("no training samples")
        self.val_data = val if val is not None and len(val) > 0 else None
        if cfg.validate_every is None:
            cfg.validate_every = max(1, math.ceil(len(train) / cfg.batch_size))
        if cfg.val_patches is None:
            cfg.val_patches = len(self.val_data) if self.val_data is not None else 0
        self.config = cfg
        self.model = model
        self.run_dir = Path(run_dir)
        self.train_data = train
        for name, data in (("training", train), ("validation", self.val_data or [])):
            for s in data:
                if getattr(s, "classes", None) is None:
                    raise ValueError(f"{name} sample {getattr(s, 'name', '?')!r} has no class map (.classes)")
        self.class_weights = resolve_class_weights(cfg.class_weights, train, cfg.num_classes)

        latest = self.run_dir / "checkpoints" / "latest.pt"
        ck = None
        if resume:
            if not latest.is_file():
                raise FileNotFoundError(f"nothing to resume: {latest} does not exist")
            ck = load_checkpoint(latest)
            self._check_resumable(ck.get("config") or {}, latest)

        # the models
        self.sam = model.sam.to(self.device)
        if model.decoder is not None:
            model.decoder.to(self.device)
        model.device = self.device
        if ck is not None:
            from ..model import build_decoder

            decoder = build_decoder(ck["semantic_decoder_state"])
        else:
            decoder = init_semantic_decoder(model, cfg.decoder_init, cfg.seed, cfg.num_classes,
                                            cfg.transposed, cfg.decoder_features)
        self.decoder = decoder.to(self.device)
        model.semantic_decoder = self.decoder
        self.long_side = int(getattr(self.sam, "img_size", None) or self.sam.image_encoder.img_size)

        # optimisation
        params = [] if cfg.freeze_encoder else list(self.sam.image_encoder.parameters())
        params += list(self.decoder.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=cfg.scheduler_factor, patience=cfg.scheduler_patience)
        self.scaler = grad_scaler(self.device, cfg.amp)
        self.state = SemanticState()

        # data
        self.train_patches = self._patches(train, cfg.seed, cfg.flips, oversample=cfg.oversample)
        self.val_patches = (self._patches(self.val_data, cfg.seed + 1, False, n=cfg.val_patches)
                            if self.val_data is not None and cfg.val_patches > 0 else None)
        self._val_cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None

        if ck is not None:
            self.load(ck)

    # ------------------------------------------------------------------ setup helpers
    def _check_resumable(self, saved: dict, path: Path) -> None:
        now = self.config.to_dict()
        diff = {k: (saved.get(k), v) for k, v in now.items()
                if k not in _RESUMABLE_CHANGES and saved.get(k) != v}
        if diff:
            lines = "\n".join(f"  {k}: saved {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"{path} was written with other settings; resuming needs the same ones:\n{lines}")

    def _patches(self, data, seed: int, flips: bool, n: int | None = None, oversample: bool = False):
        from .data import MinInstanceSampler, TrainingPatches, class_balanced_weights

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
        x, (h, w), (H, W) = resize_to_input(images, self.long_side, self.device)
        x = self.sam.preprocess(x)
        with torch.set_grad_enabled(train and not self.config.freeze_encoder and torch.is_grad_enabled()):
            emb = self.sam.image_encoder(x)
        from ..models.unetr import postprocess_maps

        activation = "sigmoid" if self.config.head_activation == "sigmoid" else None
        with _head(self.decoder, activation):
            maps = self.decoder(emb, bn_mode, x)
        return postprocess_maps(maps.float(), (h, w), (H, W))

    def loss(self, scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return semantic_loss(scores, target.to(scores.device), self.class_weights, self.config.dice_weight)

    # ------------------------------------------------------------------ one iteration
    def train_step(self, images: torch.Tensor, target: torch.Tensor) -> float:
        """One optimizer step on a batch; returns the loss."""
        cfg = self.config
        self.decoder.train()
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, cfg.amp):
            scores = self.logits(images, "batch", train=True)
        loss = self.loss(scores, target)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())

    def batch(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 3, H, W) float 0..255 and class ids (B, H, W) of an iteration."""
        B = self.config.batch_size
        return _collate([self.train_patches.patch(0, iteration * B + k) for k in range(B)])

    def _batches(self, start: int, stop: int):
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
        names = _class_names(C)
        dice = np.where(total > 0, 2 * inter / np.maximum(total, 1), np.nan)
        out = {"loss": float(np.mean(losses))}
        for c in range(1, C):
            out[f"dice_{names[c]}"] = float(dice[c])
        fg = dice[1:]
        out["dice_mean"] = float(np.nanmean(fg)) if np.isfinite(fg).any() else float("nan")
        out["pixel_accuracy"] = correct / max(n_pix, 1)
        return out

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self) -> dict:
        """The run's state: micro-sam's training layout + ``semantic_decoder_state`` + run state."""
        s = self.state
        return {
            "iteration": s.iteration,
            "best_metric": s.best_metric,
            "best_iteration": s.best_iteration,
            "current_metric": s.validation[-1]["loss"] if s.validation else None,
            "history": s.validation,
            "train_loss": s.train_loss,
            "model_state": OrderedDict((f"sam.{k}", v) for k, v in _cpu_state(self.sam).items()),
            "decoder_state": _cpu_state(self.model.decoder) if self.model.decoder is not None else None,
            "semantic_decoder_state": _cpu_state(self.decoder),
            "optimizer_state": self.optimizer.state_dict(),
            "scheduler_state": self.scheduler.state_dict(),
            "scaler_state": self.scaler.state_dict(),
            "class_weights": self.class_weights,
            "config": self.config.to_dict(),
        }

    def load(self, ck: dict) -> None:
        """Restore a :meth:`checkpoint` (weights, optimizer, scheduler, scaler, run state)."""
        load_sam_state(self.sam, ck["model_state"])
        if self.model.decoder is not None and ck.get("decoder_state"):
            self.model.decoder.load_state_dict(ck["decoder_state"])
        self.decoder.load_state_dict(ck["semantic_decoder_state"])
        self.optimizer.load_state_dict(ck["optimizer_state"])
        self.scheduler.load_state_dict(ck["scheduler_state"])
        if ck.get("scaler_state"):
            self.scaler.load_state_dict(ck["scaler_state"])
        self.state = SemanticState(
            int(ck["iteration"]), float(ck["best_metric"]), ck.get("best_iteration"),
            list(ck.get("history") or []), [float(x) for x in ck.get("train_loss") or []])

    def _save(self, name: str) -> Path:
        return save_checkpoint(self.run_dir / "checkpoints" / f"{name}.pt", self.checkpoint())

    # ------------------------------------------------------------------ the loop
    def fit(self, progress: bool = True, stop_after: int | None = None) -> SemanticState:
        """Train until ``config.iterations``; validates, logs, checkpoints; returns the state.

        ``stop_after``: stop (saving ``latest``) after this many iterations of this call.
        """
        from tqdm.auto import tqdm

        cfg = self.config
        seed_everything(cfg.seed)
        write_config(self.run_dir, {"trainer": "semantic", **cfg.to_dict(),
                                    "class_weights_resolved": self.class_weights,
                                    "model": getattr(self.model, "name", "custom"),
                                    "device": str(self.device)})
        log = RunLog(self.run_dir)
        log.truncate_after(self.state.iteration)
        start = self.state.iteration
        stop = cfg.iterations if stop_after is None else min(cfg.iterations, start + max(0, int(stop_after)))
        bar = tqdm(total=cfg.iterations, initial=start, desc="semantic training", unit="it", disable=not progress)
        t0 = time.perf_counter()
        try:
            for it, (images, target) in zip(range(start, stop), self._batches(start, stop)):
                loss = self.train_step(images, target)
                self.state.iteration = it + 1
                self.state.train_loss.append(loss)
                lr = self.optimizer.param_groups[0]["lr"]
                log.log(it + 1, "train", {"loss": loss, "lr": lr})
                bar.set_postfix(loss=f"{loss:.4g}", lr=f"{lr:.3g}")
                bar.update(1)
                if self.val_patches is not None and (it + 1) % cfg.validate_every == 0:
                    self._after_validation(log, self.validate(), step_scheduler=True)
                if (it + 1) % cfg.checkpoint_every == 0:
                    self._save("latest")
            finished = self.state.iteration >= cfg.iterations
            if (finished and self.val_patches is not None and cfg.iterations % cfg.validate_every
                    and (not self.state.validation or self.state.validation[-1]["iteration"] != self.state.iteration)):
                # an end-of-run validation off the schedule: reported and a best-checkpoint
                # candidate, but the scheduler does not step (a resumed run stays identical)
                self._after_validation(log, self.validate(), step_scheduler=False)
            self._save("latest")
        finally:
            bar.close()
            log.log(self.state.iteration, "time", {"seconds_this_session": time.perf_counter() - t0})
            log.close()
            self.decoder.eval()
        return self.state

    def _after_validation(self, log: RunLog, val: dict, step_scheduler: bool) -> None:
        it = self.state.iteration
        log.log(it, "val", val)
        if step_scheduler and self.config.scheduler:
            self.scheduler.step(val["loss"])
        self.state.validation.append({"iteration": it, **val})
        if val["loss"] < self.state.best_metric:
            self.state.best_metric = val["loss"]
            self.state.best_iteration = it
            self._save("best")

    # ------------------------------------------------------------------ export
    def export(self, out_dir: str | Path | None = None, which: str | None = None) -> dict[str, Path]:
        """Write ``semantic_decoder.pt`` (plain decoder state dict, reference key names) and, when
        the encoder was trained, ``sam.pt`` (+ ``sam_decoder.pt`` = the AIS decoder) from
        ``checkpoints/<which>.pt`` (default ``config.export_from``; best falls back to latest)."""
        from ..models.checkpoint import write_released

        which = which or self.config.export_from
        out = Path(out_dir) if out_dir else self.run_dir / "export"
        src = self.run_dir / "checkpoints" / f"{which}.pt"
        if not src.is_file():
            src = self.run_dir / "checkpoints" / "latest.pt"
        ck = load_checkpoint(src)
        files: dict[str, Path] = {"checkpoint": src}
        files["semantic_decoder"] = save_checkpoint(out / "semantic_decoder.pt",
                                                    OrderedDict(ck["semantic_decoder_state"]))
        if not self.config.freeze_encoder:
            sam_state = OrderedDict((k[len("sam."):], v) for k, v in ck["model_state"].items())
            sam_path, dec_path = write_released(sam_state, ck.get("decoder_state"), out / "sam.pt")
            files["sam"] = sam_path
            if dec_path is not None:
                files["decoder"] = dec_path
        return files

    def history(self) -> dict[str, Any]:
        s = self.state
        return {
            "iteration": s.iteration,
            "validation": list(s.validation),
            "train_loss": list(s.train_loss),
            "best_metric": s.best_metric,
            "best_iteration": s.best_iteration,
            "class_weights": self.class_weights,
            "run_dir": str(self.run_dir),
        }


def _class_names(n: int) -> tuple[str, ...]:
    if n == len(PANNUKE_CLASSES):
        return PANNUKE_CLASSES
    return ("background", *(f"class{c}" for c in range(1, n)))


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
    """Train the 6-class semantic UNETR head of ``model`` (see the module docstring).

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
