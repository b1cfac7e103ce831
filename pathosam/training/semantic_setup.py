"""What a semantic-head run starts from: its settings, its class weights, its initial decoder.

The trainer itself is :mod:`pathosam.training.semantic_trainer`.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from ..semantic import PANNUKE, class_scheme
from .losses import semantic_class_weights

__all__ = [
    "PANNUKE_CLASSES",
    "REFERENCE_CLASS_WEIGHTS",
    "SemanticConfig",
    "class_names",
    "init_semantic_decoder",
    "resolve_class_weights",
]

#: Class names by id (PanNuke, patho-sam ``CLASS_DICT['pannuke']``).
PANNUKE_CLASSES = PANNUKE.names
#: patho-sam's generalist CE weights (``calculate_class_weights_for_loss_weighting()``).
REFERENCE_CLASS_WEIGHTS = (1.0, 1.0, 7.0, 6.0, 10.0, 8.0)

DecoderInit = Literal["scratch", "pretrained", "semantic"]


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
        :func:`~pathosam.training.class_balance.class_balanced_weights` (instance counts), so images with
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
            from .class_balance import class_counts

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
    """Channels of the model's image embeddings (the decoder's input width)."""
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


def class_names(n: int) -> tuple[str, ...]:
    """Names of ``n`` classes by id: PanNuke's for 6, else ``background``, ``class1``, ...
    (:func:`pathosam.semantic.class_scheme`)."""
    return class_scheme(n).names
