"""SAM's ViT image encoder: windowed and global attention with decomposed relative positions.

State-dict keys and shapes are those of the official SAM checkpoints (``image_encoder.*``).
Input: (B, 3, S, S) normalised and padded image, S = ``img_size`` (SAM: 1024); output:
(B, 256, S/16, S/16) embedding ((B, 256, 64, 64) for SAM).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d, MLPBlock

# Rows of queries processed at once in global attention: bounds the (rows x N) score matrix.
ATTENTION_QUERY_CHUNK = 1024
#: Attention kernel: "auto" = ``F.scaled_dot_product_attention`` on CUDA (fused kernels, the
#: relative positions as an additive float mask) and the explicit chunked softmax elsewhere
#: (on CPU torch's SDPA with a float mask is slower); "sdpa" / "explicit" force one (tests).
ATTENTION_KERNEL = "auto"


def use_sdpa(q: torch.Tensor) -> bool:
    """Whether attention on ``q``'s device uses ``F.scaled_dot_product_attention`` (:data:`ATTENTION_KERNEL`)."""
    if ATTENTION_KERNEL == "auto":
        return q.device.type == "cuda"
    return ATTENTION_KERNEL == "sdpa"


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection; returns (B, H, W, C)."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.to(self.proj.weight.dtype)).permute(0, 2, 3, 1)


def relative_positions(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Gather the (q_size, k_size, C) relative-position embeddings from a (2*S-1, C) table.

    A table of another length is linearly resized first (as SAM does for other input sizes).
    """
    max_dist = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != max_dist:
        rel_pos = F.interpolate(
            rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=max_dist, mode="linear"
        ).reshape(-1, max_dist).permute(1, 0)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    index = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[index.long()]


class Attention(nn.Module):
    """Multi-head self-attention over a (B, H, W, C) grid with decomposed relative positions."""

    def __init__(self, dim: int, num_heads: int, input_size: tuple[int, int]) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C) in the dtype of the weights (float32, or bf16 / fp16 with
        :mod:`pathosam.precision`). The explicit kernel computes scores, relative positions and
        softmax in float32 whatever the weights (on this project's CPUs that is also faster than
        mixed-dtype scores); SDPA (CUDA) runs its fused kernel on q, k, v in the weights' dtype
        (it accumulates scores and softmax in float32 internally)."""
        B, H, W, _ = x.shape
        dtype = self.qkv.weight.dtype
        qkv = self.qkv(x.to(dtype)).reshape(B, H * W, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, B * self.num_heads, H * W, -1).unbind(0)
        rh = relative_positions(H, H, self.rel_pos_h)  # (H, H, c), float32
        rw = relative_positions(W, W, self.rel_pos_w)  # (W, W, c)
        sdpa = use_sdpa(q)
        if not sdpa:
            q, k, v = q.float(), k.float(), v.float()
        n = H * W
        out = torch.empty_like(q)
        # Score rows are computed in chunks so that global attention never holds the full
        # (heads, N, N) matrix; the arithmetic per row is the same as SAM's.
        chunk = max(W, (ATTENTION_QUERY_CHUNK // W) * W)
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            qc = q[:, start:stop]
            rows = (stop - start) // W
            r0 = start // W
            qg = qc.reshape(-1, rows, W, qc.shape[-1]).float()
            rel_h = torch.einsum("bhwc,hkc->bhwk", qg, rh[r0 : r0 + rows])
            rel_w = torch.einsum("bhwc,wkc->bhwk", qg, rw)
            if sdpa:
                bias = (rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).reshape(-1, stop - start, n)
                out[:, start:stop] = F.scaled_dot_product_attention(qc, k, v, attn_mask=bias.to(q.dtype))
                continue
            attn = (qc * self.scale) @ k.transpose(-2, -1)
            scores = attn.view(-1, rows, W, H, W)  # + rel_h[q, kh] + rel_w[q, kw], in place
            scores += rel_h[:, :, :, :, None]
            scores += rel_w[:, :, :, None, :]
            out[:, start:stop] = torch.softmax(attn, dim=-1) @ v
        out = out.view(B, self.num_heads, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)
        return self.proj(out.to(dtype))


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Split (B, H, W, C) into zero-padded (B * nW, window, window, C) windows."""
    B, H, W, C = x.shape
    pad_h, pad_w = (window - H % window) % window, (window - W % window) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    Hp, Wp = H + pad_h, W + pad_w
    x = x.view(B, Hp // window, window, Wp // window, window, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, C), (Hp, Wp)


def window_unpartition(
    windows: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`, cropping the padding away."""
    Hp, Wp = padded
    B = windows.shape[0] // (Hp * Wp // window // window)
    x = windows.view(B, Hp // window, Wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, -1)
    return x[:, : size[0], : size[1], :].contiguous()


class Block(nn.Module):
    """Transformer block; ``window_size`` 0 means global attention."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, window_size: int, input_size: tuple[int, int]
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        size = input_size if window_size == 0 else (window_size, window_size)
        self.attn = Attention(dim, num_heads, size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            H, W = x.shape[1], x.shape[2]
            x, padded = window_partition(x, self.window_size)
            x = self.attn(x)
            x = window_unpartition(x, self.window_size, padded, (H, W))
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class ImageEncoderViT(nn.Module):
    """SAM's ViT backbone + neck. ``global_attn_indexes`` are the blocks without windows."""

    def __init__(
        self,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11),
        img_size: int = 1024,
        patch_size: int = 16,
        window_size: int = 14,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        self.out_chans = out_chans
        grid = img_size // patch_size
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, 0 if i in global_attn_indexes else window_size, (grid, grid))
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, out_chans, S/16, S/16), float32. The residual stream and the norms
        are float32 whatever the weights' dtype (:mod:`pathosam.precision`)."""
        x = self.patch_embed(x) + self.pos_embed  # float32: pos_embed is never converted
        for block in self.blocks:
            x = block(x)
        conv1, norm1, conv2, norm2 = self.neck
        x = norm1(conv1(x.permute(0, 3, 1, 2).to(conv1.weight.dtype)))
        return norm2(conv2(x.to(conv2.weight.dtype)))
