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
# Tokens per chunk of a block's LayerNorm + MLP + residual at inference: keeps the 4x-wide hidden
# activations small enough to be reused from the heap (and cache) instead of page-faulted anew.
MLP_TOKEN_CHUNK = 1024
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
        # contiguous (B, H, W, C): a permuted view would make every residual add and LayerNorm
        # of the blocks inherit NCHW strides (a copy per LayerNorm, slow strided adds)
        return self.proj(x.to(self.proj.weight.dtype)).permute(0, 2, 3, 1).contiguous()


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
        :mod:`pathosam.precision`; see :meth:`_attend` for the attention arithmetic)."""
        B, H, W, _ = x.shape
        dtype = self.qkv.weight.dtype
        qkv = self.qkv(x.to(dtype)).reshape(B, H * W, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, B * self.num_heads, H * W, -1).unbind(0)
        out = self._attend(q, k, v, H, W)
        out = out.view(B, self.num_heads, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)
        return self.proj(out.to(dtype))

    def forward_windows(self, x: torch.Tensor, window: int) -> torch.Tensor:
        """``window_unpartition(forward(window_partition(x)))`` with the qkv and output
        projections run on the H*W tokens only, not on the zero padding: a zero token's qkv is
        exactly the qkv bias, which fills the padded slots of the packed (3, B*nW*heads,
        window**2, c) q/k/v directly (one copy instead of pad + partition + head split)."""
        B, H, W, _ = x.shape
        dtype = self.qkv.weight.dtype
        nh, nwh, nww = self.num_heads, -(-H // window), -(-W // window)
        qkv = self.qkv(x.to(dtype)).view(B, H, W, 3, nh, -1)
        c = qkv.shape[-1]
        packed = qkv.new_empty(3, B, nwh, nww, nh, window, window, c)
        wins = packed.permute(1, 2, 5, 3, 6, 0, 4, 7)  # (B, nWh, window, nWw, window, 3, nh, c)
        for grid, win in _window_pieces(qkv, wins, window):
            win.copy_(grid)
        bias = self.qkv.bias.view(3, nh, c)
        if H % window:
            wins[:, -1, H % window :] = bias
        if W % window:
            wins[:, :, :, -1, W % window :] = bias
        q, k, v = packed.view(3, B * nwh * nww * nh, window * window, c).unbind(0)
        out = self._attend(q, k, v, window, window)
        wins = out.view(B, nwh, nww, nh, window, window, c).permute(0, 1, 4, 2, 5, 3, 6)
        y = out.new_empty(B, H, W, nh, c)
        for grid, win in _window_pieces(y, wins, window):
            grid.copy_(win)
        return self.proj(y.view(B, H, W, nh * c).to(dtype))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """softmax(q k^T * scale + rel_h + rel_w) v for (B*heads, H*W, c) q, k, v.

        The explicit kernel computes in float32 whatever q's dtype (scores, relative positions,
        softmax; on this project's CPUs that is also faster than mixed-dtype scores); SDPA (CUDA)
        runs its fused kernel on q, k, v in their dtype (it accumulates scores and softmax in
        float32 internally)."""
        rh = relative_positions(H, H, self.rel_pos_h)  # (H, H, c), float32
        rw = relative_positions(W, W, self.rel_pos_w)  # (W, W, c)
        sdpa = use_sdpa(q)
        if not sdpa:
            q, k, v = q.float(), k.float(), v.float()
        n = H * W
        out = torch.empty_like(q)
        # At inference the score rows are written into one reused buffer, the softmax runs in
        # place and P @ V lands in ``out`` directly: fresh score-sized tensors per chunk cost
        # as much in page faults as the matmuls themselves.
        reuse = not (torch.is_grad_enabled() and (q.requires_grad or rh.requires_grad))
        buf = None
        kt = k.transpose(-2, -1)
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
            if reuse:
                if buf is None or buf.shape[1] != stop - start:
                    buf = q.new_empty(q.shape[0], stop - start, n)
                attn = torch.bmm(qc * self.scale, kt, out=buf)
            else:
                attn = (qc * self.scale) @ kt
            scores = attn.view(-1, rows, W, H, W)  # + rel_h[q, kh] + rel_w[q, kw], in place
            scores += rel_h[:, :, :, :, None]
            scores += rel_w[:, :, :, None, :]
            if reuse:
                torch.bmm(torch.softmax(attn, dim=-1, out=attn), v, out=out[:, start:stop])
            else:
                out[:, start:stop] = torch.softmax(attn, dim=-1) @ v
        return out


def _window_pieces(grid: torch.Tensor, wins: torch.Tensor, window: int):
    """Matching views of a (B, H, W, ...) ``grid`` and of the valid part of its
    (B, nWh, window, nWw, window, ...) window view ``wins`` (full windows / the cropped last
    row and column of windows), to copy one into the other."""
    H, W = grid.shape[1], grid.shape[2]

    def parts(n):  # (first window, windows, rows per window)
        return [p for p in ((0, n // window, window), (n // window, 1, n % window)) if p[1] and p[2]]

    for h0, nh, sh in parts(H):
        for w0, nw, sw in parts(W):
            g = grid[:, h0 * window : h0 * window + nh * sh, w0 * window : w0 * window + nw * sw]
            yield g.unflatten(2, (nw, sw)).unflatten(1, (nh, sh)), wins[:, h0 : h0 + nh, :sh, w0 : w0 + nw, :sw]


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
            x = self.attn.forward_windows(x, self.window_size)
        else:
            x = self.attn(x)
        x = shortcut + x
        if torch.is_grad_enabled() and any(t.requires_grad for t in (x, *self.norm2.parameters(), *self.mlp.parameters())):
            return x + self.mlp(self.norm2(x))
        # row-wise ops: the same values, computed in token chunks
        flat = x.reshape(-1, x.shape[-1])
        out = torch.empty_like(flat)
        for start in range(0, flat.shape[0], MLP_TOKEN_CHUNK):
            xc = flat[start : start + MLP_TOKEN_CHUNK]
            torch.add(xc, self.mlp(self.norm2(xc)), out=out[start : start + MLP_TOKEN_CHUNK])
        return out.view(x.shape)


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
