"""The Segment Anything model: image encoder + prompt encoder + mask decoder, and its presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder

IMG_SIZE = 1024
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class SamConfig:
    """Architecture of the ViT image encoder (everything else is fixed by SAM)."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]

    def as_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, SamConfig] = {
    "vit_b": SamConfig(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamConfig(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamConfig(1280, 32, 16, (7, 15, 23, 31)),
}


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
        )
        self.prompt_encoder = PromptEncoder()
        self.mask_decoder = MaskDecoder()
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), persistent=False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise (B, 3, h, w) float 0..255 with SAM's mean/std and zero-pad to 1024 x 1024."""
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        return F.pad(x, (0, IMG_SIZE - w, 0, IMG_SIZE - h))

    @staticmethod
    def postprocess_masks(
        masks: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> torch.Tensor:
        """Low-res (B, C, 256, 256) logits -> (B, C, H, W) at ``original_size`` (as SAM)."""
        masks = F.interpolate(masks, (IMG_SIZE, IMG_SIZE), mode="bilinear", align_corners=False)
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
    """Recover the encoder architecture from SAM weights.

    Width from ``patch_embed.proj.weight``, depth from the block count, head dim from
    ``rel_pos_h`` width, global blocks = those whose ``rel_pos_h`` spans the whole 64 grid.
    """
    key = "image_encoder.patch_embed.proj.weight"
    if key not in state:
        raise ValueError(f"not SAM weights: key {key!r} is missing")
    width = int(state[key].shape[0])
    depth = 0
    while f"image_encoder.blocks.{depth}.norm1.weight" in state:
        depth += 1
    if depth == 0:
        raise ValueError("not SAM weights: no image_encoder.blocks.* keys")
    head_dim = int(state["image_encoder.blocks.0.attn.rel_pos_h"].shape[1])
    grid = IMG_SIZE // 16
    global_idx = tuple(
        i for i in range(depth) if state[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0] == 2 * grid - 1
    )
    return SamConfig(width, depth, width // head_dim, global_idx)
