"""The Segment Anything model: image encoder + prompt encoder + mask decoder, and its presets."""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import key_shape
from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder

#: SAM's input size (longest side of the resized image, padded square); the reference default.
IMG_SIZE = 1024
#: ViT patch size: the image embedding grid is ``img_size // PATCH_SIZE`` (64 at 1024).
PATCH_SIZE = 16
#: Side of the windows of the non-global attention blocks (SAM's 14).
WINDOW_SIZE = 14
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class SamConfig:
    """Architecture of the ViT image encoder and the model input size (everything else is fixed by SAM).

    ``img_size`` (default 1024, SAM's): images are resized to this longest side and padded to a
    square; the embedding grid is ``img_size // 16`` (64 at 1024), the prompt encoder's mask
    input and the mask decoder's low-res logits are ``4 x`` that grid (256 at 1024).
    ``window_size``: side of the windowed-attention blocks' windows (SAM's 14).
    """

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    img_size: int = IMG_SIZE
    window_size: int = WINDOW_SIZE

    def __post_init__(self) -> None:
        if self.img_size <= 0 or self.img_size % PATCH_SIZE:
            raise ValueError(f"img_size must be a positive multiple of {PATCH_SIZE}, got {self.img_size}")

    def as_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, SamConfig] = {
    "vit_b": SamConfig(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamConfig(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamConfig(1280, 32, 16, (7, 15, 23, 31)),
}


class _SizeDefaultMethod:
    """A static function whose ``img_size`` argument defaults to the instance's when called on one.

    ``Sam.postprocess_masks(masks, input_size, original_size)`` keeps SAM's 1024;
    ``sam.postprocess_masks(masks, input_size, original_size)`` uses ``sam.img_size``.
    """

    def __init__(self, func) -> None:
        self.func = func
        functools.update_wrapper(self, func)

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self.func
        func = self.func

        @functools.wraps(func)
        def bound(masks, input_size, original_size, img_size=None):
            return func(masks, input_size, original_size, obj.img_size if img_size is None else img_size)

        return bound


class Sam(nn.Module):
    """SAM with state-dict keys ``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``."""

    def __init__(self, config: SamConfig) -> None:
        super().__init__()
        self.config = config
        self.image_encoder = ImageEncoderViT(
            embed_dim=config.embed_dim,
            depth=config.depth,
            num_heads=config.num_heads,
            global_attn_indexes=tuple(config.global_attn_indexes),
            img_size=config.img_size,
            patch_size=PATCH_SIZE,
            window_size=config.window_size,
        )
        grid = config.img_size // PATCH_SIZE
        self.prompt_encoder = PromptEncoder(
            image_embedding_size=(grid, grid), input_image_size=(config.img_size, config.img_size)
        )
        self.mask_decoder = MaskDecoder()
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), persistent=False)

    @property
    def img_size(self) -> int:
        """Model input size: images are resized to this longest side and padded square (1024)."""
        return self.image_encoder.img_size

    @property
    def embedding_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of one image embedding: (256, 64, 64) at 1024."""
        g = self.img_size // self.image_encoder.patch_size
        return (self.image_encoder.out_chans, g, g)

    @property
    def mask_input_size(self) -> tuple[int, int]:
        """(h, w) of mask prompts and of the low-res mask logits: (256, 256) at 1024."""
        return tuple(self.prompt_encoder.mask_input_size)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise (B, 3, h, w) float 0..255 with SAM's mean/std and zero-pad to ``img_size`` square."""
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        size = self.img_size
        if h > size or w > size:
            raise ValueError(f"input of {h}x{w} px is larger than the model input size {size}")
        return F.pad(x, (0, size - w, 0, size - h))

    @_SizeDefaultMethod
    def postprocess_masks(
        masks: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int], img_size: int = IMG_SIZE
    ) -> torch.Tensor:
        """Low-res (B, C, 256, 256) logits -> (B, C, H, W) at ``original_size`` (as SAM).

        ``img_size`` is the model input size (1024 for SAM; called on an instance, that model's
        ``img_size``): the logits are upsampled to it, cropped to ``input_size`` and resized to
        ``original_size``.
        """
        masks = F.interpolate(masks, (img_size, img_size), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)


def build_sam(arch: str | SamConfig) -> Sam:
    """Build an uninitialised SAM from a preset name (``vit_b``/``vit_l``/``vit_h``) or a config."""
    if isinstance(arch, str):
        if arch not in PRESETS:
            raise ValueError(f"unknown SAM architecture {arch!r}; choose one of {sorted(PRESETS)} or pass a SamConfig")
        arch = PRESETS[arch]
    return Sam(arch).eval()


def config_from_state_dict(state: dict[str, torch.Tensor]) -> SamConfig:
    """Recover the encoder architecture and the input size from SAM weights.

    Width from ``patch_embed.proj.weight``, depth from the block count, head dim from
    ``rel_pos_h`` width, input size = ``pos_embed`` grid x patch size (64 x 16 = 1024 for SAM),
    global blocks = those whose ``rel_pos_h`` spans the whole grid (``2 * grid - 1`` rows), the
    window size from the other blocks' ``rel_pos_h`` (``2 * window - 1`` rows).
    """
    key = "image_encoder.patch_embed.proj.weight"
    if key not in state:
        raise ValueError(f"not SAM weights: key {key!r} is missing")
    width, _, *patch = key_shape(state, key, 4)
    if tuple(patch) != (PATCH_SIZE, PATCH_SIZE):
        raise ValueError(f"unsupported patch size {tuple(patch)}: SAM models use {PATCH_SIZE} x {PATCH_SIZE} patches")
    depth = 0
    while f"image_encoder.blocks.{depth}.norm1.weight" in state:
        depth += 1
    if depth == 0:
        raise ValueError("not SAM weights: no image_encoder.blocks.* keys")
    rel = [key_shape(state, f"image_encoder.blocks.{i}.attn.rel_pos_h", 2) for i in range(depth)]
    head_dim = rel[0][1]
    if head_dim < 1 or width % head_dim:
        raise ValueError(f"image_encoder.blocks.0.attn.rel_pos_h: head width {head_dim} does not divide "
                         f"the embedding width {width}")
    if "image_encoder.pos_embed" not in state:
        raise ValueError("not SAM weights: key 'image_encoder.pos_embed' is missing")
    pos = key_shape(state, "image_encoder.pos_embed", 4)
    if pos[1] != pos[2] or pos[1] < 1:
        raise ValueError(f"unsupported image_encoder.pos_embed of shape {pos}: expected (1, g, g, C)")
    grid = pos[1]
    rows = [r for r, _ in rel]
    global_idx = tuple(i for i in range(depth) if rows[i] == 2 * grid - 1)
    windows = {(r + 1) // 2 for i, r in enumerate(rows) if i not in global_idx}
    if len(windows) > 1:
        raise ValueError(f"not SAM weights: the windowed blocks have different window sizes {sorted(windows)}")
    window = windows.pop() if windows else WINDOW_SIZE
    if window < 1 or any(r != 2 * window - 1 for i, r in enumerate(rows) if i not in global_idx):
        raise ValueError(f"image_encoder.blocks.*.attn.rel_pos_h: {sorted(set(rows))} rows fit neither "
                         f"global attention ({2 * grid - 1}) nor a window (2 * window - 1)")
    return SamConfig(width, depth, width // head_dim, global_idx, grid * PATCH_SIZE, window)


def with_input_size(sam: Sam, img_size: int) -> Sam:
    """A copy of ``sam`` for input size ``img_size`` (px, multiple of 16): the absolute position
    embedding is resized bicubically to the new token grid and the relative position tables of
    the global-attention blocks linearly to ``2 * grid - 1`` rows (windowed blocks, prompt encoder
    and mask decoder do not depend on the input size). To be finetuned at the new size, e.g. with
    ``pathosam train --input-size``; the same size returns an identical copy."""
    config = SamConfig(**{**asdict(sam.config), "img_size": int(img_size)})  # checks the size
    grid = config.img_size // PATCH_SIZE
    state = {k: v.detach().float() if v.is_floating_point() else v for k, v in sam.state_dict().items()}
    pos = state["image_encoder.pos_embed"]
    if pos.shape[1] != grid:
        pos = F.interpolate(pos.permute(0, 3, 1, 2), size=(grid, grid), mode="bicubic", align_corners=False)
        state["image_encoder.pos_embed"] = pos.permute(0, 2, 3, 1).contiguous()
    for i in sam.config.global_attn_indexes:
        for axis in "hw":
            key = f"image_encoder.blocks.{i}.attn.rel_pos_{axis}"
            rel = state[key]
            if rel.shape[0] != 2 * grid - 1:
                rel = F.interpolate(rel.T[None], size=2 * grid - 1, mode="linear", align_corners=False)[0]
                state[key] = rel.T.contiguous()
    out = Sam(config)
    out.load_state_dict(state)
    like = next(sam.parameters())
    return out.to(device=like.device, dtype=like.dtype).eval()
