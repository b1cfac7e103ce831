"""New (untrained) SAM-architecture models, e.g. small CPU models trained from scratch.

The architecture is recovered from the saved weights by :func:`pathosam.load_model` (width,
depth, heads, windows, input size, decoder widths), so a model made here and trained with
``pathosam train`` needs no configuration file.
"""

from __future__ import annotations

import torch

from ..predictor import PathoSAM


def new_model(
    embed_dim: int = 128,
    depth: int = 4,
    num_heads: int | None = None,
    global_attn_indexes: tuple[int, ...] | None = None,
    img_size: int = 512,
    window_size: int | None = None,
    decoder_features: int = 32,
    seed: int = 0,
    name: str = "new",
) -> PathoSAM:
    """A randomly initialised SAM + UNETR AIS decoder.

    Parameters
    ----------
    embed_dim, depth : int
        ViT width and number of blocks (SAM ViT-B: 768, 12).
    num_heads : int, optional
        Attention heads (default ``embed_dim // 32``, at least 1).
    global_attn_indexes : tuple of int, optional
        Blocks with global attention (default: every other block, the last one included).
    img_size : int
        Model input size in pixels (longest side; multiple of 16). 1024 for SAM.
    window_size : int, optional
        Windowed-attention size in tokens (default ``min(14, img_size // 32)``, at least 1).
    decoder_features : int
        Channels of the UNETR's last stage (the reference's is 64; stages double up to 8x).
    seed : int
        Seed of the initialisation.
    """
    from ..models import SamConfig, build_sam
    from ..models.unetr import UNETRDecoder

    if img_size % 16:
        raise ValueError(f"img_size must be a multiple of 16, got {img_size}")
    heads = num_heads or max(1, embed_dim // 32)
    glob = tuple(global_attn_indexes) if global_attn_indexes is not None else tuple(range(1, depth, 2)) or (depth - 1,)
    window = window_size or max(1, min(14, img_size // 32))
    torch.manual_seed(seed)
    sam = build_sam(SamConfig(embed_dim, depth, heads, glob, img_size=img_size, window_size=window))
    with torch.no_grad():
        torch.nn.init.trunc_normal_(sam.image_encoder.pos_embed, std=0.02)
    decoder = UNETRDecoder(3, True, features=decoder_features)
    return PathoSAM(sam, decoder, device="cpu", name=name)
