"""The UNETR decoder of micro-sam / torch-em, applied to SAM image embeddings.

Consumes the (B, 256, h, w) embedding only (no encoder skip connections) and predicts
(B, C, 16h, 16w) maps ((B, 256, 64, 64) -> (B, C, 1024, 1024) for SAM): C = 3 for instances
(foreground, centre distance, boundary distance, sigmoid) or 6 for PanNuke classes.
State-dict keys equal micro-sam's ``decoder_state``.

Channel widths: ``features`` (coarse to fine) is torch-em's (512, 256, 128, 64); a narrower
decoder (e.g. ``features=32`` = (256, 128, 64, 32)) has the same keys with smaller tensors, and
:func:`features_from_state_dict` recovers the widths from a state dict.

Two upsampler flavours exist in released files: transposed convolutions (``.block.`` keys,
torch-em <= 0.7.9, the released PathoSAM decoders) and bilinear x2 + 1x1 conv (``.conv.`` keys).

BatchNorm (in ``deconv1..4``): ``bn_mode="per_tile"`` normalises every sample with its own
statistics (what micro-sam does at batch size 1, because it never calls ``.eval()``; results do
not depend on how tiles are batched); ``"running"`` uses the stored running statistics;
``"batch"`` (training) normalises with the batch's statistics and updates the running ones.
Running statistics are never updated at inference (micro-sam updates them; we do not).
"""

from __future__ import annotations

import copy

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import key_shape

BNMode = Literal["per_tile", "running", "batch"]
FEATURES = (512, 256, 128, 64)


def unetr_features(features: int | tuple[int, ...] = FEATURES) -> tuple[int, int, int, int]:
    """The four decoder widths, coarse to fine: a tuple as given, or an int = the finest width,
    doubled per level (``64`` -> torch-em's (512, 256, 128, 64))."""
    if isinstance(features, int):
        feats = (8 * features, 4 * features, 2 * features, features)
    else:
        feats = tuple(int(f) for f in features)
    if len(feats) != 4 or min(feats) < 1:
        raise ValueError(f"UNETR features must be 4 positive widths (or one int), got {features!r}")
    if any(a < b for a, b in zip(feats[:-1], feats[1:])):
        raise ValueError(f"UNETR features must not increase from coarse to fine, got {feats}")
    return feats


def features_from_state_dict(state: dict[str, torch.Tensor]) -> tuple[int, int, int, int]:
    """The four channel widths (coarse to fine) of a UNETR decoder state: the output channels of
    the 3x3 convs of ``deconv1..4`` (their ``SingleConv`` at ``block.1``)."""
    keys = [f"deconv{i}.block.1.block.weight" for i in range(1, 5)]
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(f"not UNETR decoder weights: key {missing[0]!r} is missing")
    return tuple(key_shape(state, k, 4)[0] for k in keys)


def has_image_skip(state: dict[str, torch.Tensor]) -> bool:
    """Whether a UNETR decoder state has the ``image_skip`` branch (``image_conv.*`` keys)."""
    return any(k.startswith("image_conv.") for k in state)


def embed_dim_from_state_dict(state: dict[str, torch.Tensor]) -> int:
    """Channels of the embedding a UNETR decoder state consumes (256 for SAM)."""
    key = "base.block.1.weight"
    if key not in state:
        raise ValueError(f"not UNETR decoder weights: key {key!r} is missing")
    return key_shape(state, key, 4)[1]


class TransposedUpsampler(nn.Module):
    """x2 upsampling by a 2x2 stride-2 transposed convolution (keys ``block.*``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A 2x2 stride-2 transposed conv writes disjoint 2x2 output patches: it is one matmul
        # (B*H*W, Cin) @ (Cin, Cout*4) plus a pixel shuffle, much faster than the conv kernel.
        B, C, H, W = x.shape
        w = self.block.weight  # (Cin, Cout, 2, 2)
        out = w.shape[1]
        if not torch.is_grad_enabled():
            # the same, written straight into the output: output row 2h + dy of every input row
            # h is one (W, 2 * Cout) matrix, so per dy one batched matmul (batch = input rows)
            # with the bias as its added term (no intermediate, no separate shuffle pass)
            y = x.new_empty(B, 2 * H, 2 * W, out)
            rows = y.view(B * H, 2, W, 2 * out)
            xr = x.permute(0, 2, 3, 1).reshape(B * H, W, C)
            wd = w.permute(2, 0, 3, 1).reshape(2, C, 2 * out)  # (dy, Cin, (dx, Cout))
            bias = self.block.bias.repeat(2)
            for dy in range(2):
                torch.baddbmm(bias, xr, wd[dy].expand(B * H, C, 2 * out), out=rows[:, dy])
            return y.permute(0, 3, 1, 2)
        y = x.permute(0, 2, 3, 1).reshape(-1, C) @ w.reshape(C, out * 4)
        y = y.view(B, H, W, out, 2, 2).permute(0, 1, 4, 2, 5, 3).reshape(B, 2 * H, 2 * W, out)
        y = y + self.block.bias
        return y.permute(0, 3, 1, 2)  # channels-last (B, Cout, 2H, 2W)


class InterpolationUpsampler(nn.Module):
    """x2 bilinear upsampling (align_corners=False) followed by a 1x1 conv (keys ``conv.*``).

    The 1x1 conv is applied before the interpolation: both are linear and the bilinear weights
    sum to one, so the result is the same up to float rounding at a quarter of the cost when
    the channel count shrinks.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv.out_channels <= self.conv.in_channels:
            return F.interpolate(self.conv(x), scale_factor=2, mode="bilinear", align_corners=False)
        return self.conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))


def _upsampler(transposed: bool, in_channels: int, out_channels: int) -> nn.Module:
    cls = TransposedUpsampler if transposed else InterpolationUpsampler
    return cls(in_channels, out_channels)


def instance_norm(
    x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, eps: float = 1e-5,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Normalise every (sample, channel) plane to zero mean / unit (biased) variance, then affine.

    Equal to ``F.instance_norm``; on channels-last tensors (or channel slices of them) it reduces
    over the contiguous layout directly (shifted two-moment formula, shift = the mean of a pixel
    subsample, which keeps the variance free of cancellation; the moments are summed over
    cache-sized pixel chunks), which is several times faster than ``F.instance_norm`` there.
    ``out``: a tensor of x's shape to write the result into (may be ``x`` itself, or a channel
    slice of a channels-last buffer); only with gradients disabled. bf16 / fp16 inputs get
    float32 statistics and affine map and a result in their dtype.
    """
    if x.dtype in (torch.bfloat16, torch.float16) and x.dim() == 4:
        # Low precision: torch's batch norm of each sample on its own (mixed dtype: float32
        # statistics and affine, result in x's dtype; 13x faster than upcasting). Its one-pass
        # variance (~2e-3 off in float32) is far below the bf16 rounding of the result.
        w = weight.float() if weight is not None else None
        b = bias.float() if bias is not None else None
        outs = [F.batch_norm(x[i : i + 1], None, None, w, b, True, 0.0, eps) for i in range(x.shape[0])]
        y = outs[0] if len(outs) == 1 else torch.cat(outs)
        return y if out is None else out.copy_(y)
    B, C, H, W = x.shape if x.dim() == 4 else (0, 0, 0, 0)
    v = _pixels(x) if x.dim() == 4 else None
    if v is None:
        y = F.instance_norm(x, weight=weight, bias=bias, eps=eps)
        return y if out is None else out.copy_(y)
    n = H * W
    shift = v[:, :: max(1, n // 4096)].mean(dim=1, keepdim=True)
    if torch.is_grad_enabled():
        d = v - shift
        m1 = d.mean(dim=1, keepdim=True)
        var = (d * d).mean(dim=1, keepdim=True) - m1 * m1
    else:  # the same moments, summed chunk by chunk: no image-sized temporaries
        s1 = torch.zeros_like(shift)
        s2 = torch.zeros_like(shift)
        step = max(256, 2**19 // max(C, 1))
        for start in range(0, n, step):
            d = v[:, start : start + step] - shift
            s1 += d.sum(dim=1, keepdim=True)
            s2 += d.mul_(d).sum(dim=1, keepdim=True)
        m1 = s1 / n
        var = s2 / n - m1 * m1
    scale = torch.rsqrt(var.clamp_min(0) + eps)
    if weight is not None:
        scale = scale * weight
    offset = -(m1 + shift) * scale
    if bias is not None:
        offset = offset + bias
    if out is None:
        return torch.addcmul(offset, v, scale).view(B, H, W, C).permute(0, 3, 1, 2)
    torch.addcmul(offset, v, scale, out=_pixels(out))
    return out


def _pixels(x: torch.Tensor) -> torch.Tensor | None:
    """(B, H*W, C) view of a channels-last (B, C, H, W) tensor or channel slice of one, else None."""
    B, C, H, W = x.shape
    sb, sc, sh, sw = x.stride()
    if (sc != 1 and C > 1) or sh != W * sw or (sw < C and H * W > 1):
        return None
    return x.as_strided((B, H * W, C), (sb, sw, 1))


def _norm_cat(parts: list[torch.Tensor]) -> torch.Tensor:
    """``instance_norm(torch.cat(parts, 1))``; at inference every part is normalised straight into
    its channel slice of one channels-last buffer (no concatenated copy)."""
    if torch.is_grad_enabled():
        return instance_norm(torch.cat(parts, dim=1))
    B, _, H, W = parts[0].shape
    C = sum(p.shape[1] for p in parts)
    buf = parts[0].new_empty(B, H, W, C).permute(0, 3, 1, 2)  # channels-last
    c = 0
    for p in parts:
        instance_norm(p, out=buf[:, c : c + p.shape[1]])
        c += p.shape[1]
    return buf


class ConvBlock(nn.Module):
    """InstanceNorm -> 3x3 conv -> ReLU, twice (keys ``block.1``, ``block.4``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        # torch-em's layout (so the conv keys are block.1 / block.4); forward() runs the norms
        # through :func:`instance_norm`, which is fast on channels-last tensors.
        self.block = nn.Sequential(
            nn.InstanceNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.InstanceNorm2d(out_channels),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """``x``: the input, or the list of inputs to concatenate along channels."""
        _, conv1, _, _, conv2, _ = self.block
        x = torch.relu_(conv1(_norm_cat(x if isinstance(x, (list, tuple)) else [x])))
        inplace = not torch.is_grad_enabled()
        return torch.relu_(conv2(instance_norm(x, out=x if inplace else None)))


class SingleConv(nn.Module):
    """A 3x3 convolution wrapped as torch-em's ``SingleConv2DBlock`` (key ``block``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class DeconvBlock(nn.Module):
    """Upsampler -> 3x3 conv -> BatchNorm -> ReLU (keys ``block.0``, ``block.1``, ``block.2``)."""

    def __init__(self, in_channels: int, out_channels: int, transposed: bool) -> None:
        super().__init__()
        self.block = nn.Sequential(
            _upsampler(transposed, in_channels, out_channels),
            SingleConv(out_channels, out_channels),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor, bn_mode: BNMode) -> torch.Tensor:
        up, conv, bn, _ = self.block
        x = conv(up(x))
        if bn_mode == "per_tile":
            # Train-mode BatchNorm on a batch of one sample == instance norm with BN's affine.
            inplace = not torch.is_grad_enabled()
            x = instance_norm(x, bn.weight, bn.bias, bn.eps, out=x if inplace else None)
        elif bn_mode == "running":
            x = x.float() if x.dtype != bn.running_mean.dtype else x  # float32 statistics
            x = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        elif bn_mode == "batch":  # training: statistics of the batch, running statistics updated
            x = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, True, bn.momentum, bn.eps)
            if bn.num_batches_tracked is not None:
                bn.num_batches_tracked.add_(1)
        else:
            raise ValueError(f"bn_mode must be 'per_tile', 'running' or 'batch', got {bn_mode!r}")
        x = torch.relu(x) if bn_mode == "batch" else torch.relu_(x)
        return x.to(conv.block.weight.dtype)


class Decoder(nn.Module):
    """The U-Net decoder path: upsample, concat a channel-centre-cropped skip, ConvBlock."""

    def __init__(self, transposed: bool, features: tuple[int, ...] = FEATURES) -> None:
        super().__init__()
        f = unetr_features(features)
        # the block input is the upsampled x (f[i+1] channels) + the skip cropped to as many:
        # 2 * f[i+1] (= f[i] for torch-em's doubling widths)
        self.blocks = nn.ModuleList(ConvBlock(2 * f[i + 1], f[i + 1]) for i in range(3))
        self.samplers = nn.ModuleList(_upsampler(transposed, f[i], f[i + 1]) for i in range(3))

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for block, sampler, skip in zip(self.blocks, self.samplers, skips):
            x = sampler(x)
            # torch-em centre-crops the skip to x's shape in *every* dimension, channels included.
            lo = (skip.shape[1] - x.shape[1]) // 2
            x = block([x, skip[:, lo : lo + x.shape[1]]])
        return x


class UNETRDecoder(nn.Module):
    """UNETR decoder head on SAM embeddings (``out_channels`` 3: instances, 6: semantic).

    ``features``: the four channel widths, coarse to fine (torch-em's (512, 256, 128, 64)), or
    one int = the finest width, doubled per level (64 = the reference; 32 or 16 = narrower).

    ``image_skip``: also read the (preprocessed) model input image through a conv block at full
    resolution (``image_conv``), joined before ``decoder_head`` (torch-em's UNETR skip from the
    input). Not in the released decoders; small models use it for pixel-accurate boundaries.
    """

    def __init__(
        self,
        out_channels: int = 3,
        transposed: bool = True,
        embed_dim: int = 256,
        final_activation: Literal["sigmoid"] | None = "sigmoid",
        features: int | tuple[int, ...] = FEATURES,
        image_skip: bool = False,
    ) -> None:
        super().__init__()
        f = unetr_features(features)
        self.out_channels = out_channels
        self.transposed = transposed
        self.final_activation = final_activation
        self.features = f
        self.embed_dim = embed_dim
        # Registration order = state-dict order of micro-sam's decoder_state.
        self.decoder = Decoder(transposed, f)
        self.deconv1 = DeconvBlock(embed_dim, f[0], transposed)
        self.deconv2 = DeconvBlock(f[0], f[1], transposed)
        self.deconv3 = DeconvBlock(f[1], f[2], transposed)
        self.deconv4 = DeconvBlock(f[2], f[3], transposed)
        self.base = ConvBlock(embed_dim, f[0])
        self.out_conv = nn.Conv2d(f[3], out_channels, kernel_size=1)
        self.deconv_out = _upsampler(transposed, f[3], f[3])
        self.image_skip = bool(image_skip)
        self.decoder_head = ConvBlock((3 if image_skip else 2) * f[3], f[3])
        if image_skip:  # registered last: the reference keys keep their order
            self.image_conv = ConvBlock(3, f[3])

    def forward(self, embeddings: torch.Tensor, bn_mode: BNMode = "per_tile",
                image: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 256, h, w) embeddings -> (B, C, 16h, 16w) maps in model-input space
        ((B, 256, 64, 64) -> (B, C, 1024, 1024) for SAM).

        ``image``: the (B, 3, 16h, 16w) preprocessed model input (``Sam.preprocess``); needed by
        an ``image_skip`` decoder, ignored otherwise. Runs in channels-last layout (2x faster
        convolutions on CPU) in the dtype of the weights (:mod:`pathosam.precision`, norms in
        float32); the output is contiguous float32.
        """
        if self.image_skip and image is None:
            raise ValueError("this decoder reads the input image (image_skip): pass image=")
        dtype = self.out_conv.weight.dtype  # float32, or bf16 / fp16 (pathosam.precision)
        embeddings = embeddings.to(dtype).contiguous(memory_format=torch.channels_last)
        z9 = self.deconv1(embeddings, bn_mode)
        z6 = self.deconv2(z9, bn_mode)
        z3 = self.deconv3(z6, bn_mode)
        z0 = self.deconv4(z3, bn_mode)
        x = self.decoder(self.base(embeddings), [z9, z6, z3])
        del z9, z6, z3
        parts = [self.deconv_out(x), z0]
        if self.image_skip:
            parts.append(self.image_conv(image.to(dtype).contiguous(memory_format=torch.channels_last)))
        x = self.decoder_head(parts)
        x = self.out_conv(x).float()
        if self.final_activation == "sigmoid":
            x = torch.sigmoid(x)
        return x.contiguous()

    def with_image_skip(self) -> "UNETRDecoder":
        """A copy with an ``image_skip`` branch that computes exactly what this decoder does: the
        new input channels of ``decoder_head`` start at zero (the new branch is then trained)."""
        if self.image_skip:
            return copy.deepcopy(self)
        new = UNETRDecoder(self.out_channels, self.transposed, self.embed_dim, self.final_activation,
                           self.features, image_skip=True).to(next(self.parameters()).device)
        state = {k: v.clone() for k, v in self.state_dict().items()}
        key = "decoder_head.block.1.weight"
        w = state[key]
        state[key] = torch.cat([w, w.new_zeros(w.shape[0], w.shape[1] // 2, *w.shape[2:])], dim=1)
        state.update({k: v for k, v in new.state_dict().items() if k.startswith("image_conv.")})
        new.load_state_dict(state, strict=True)
        return new

    def _apply(self, fn, recurse=True):  # keep 4-D conv weights channels-last on every .to()
        super()._apply(fn, recurse)
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.weight.dim() == 4:
                m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last)
        return self


def postprocess_maps(
    maps: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
) -> torch.Tensor:
    """Crop (B, C, S, S) model-input maps (S = 1024 for SAM) to the resized ``input_size`` and resize
    to ``original_size``.

    Same as SAM's ``postprocess_masks`` (bilinear, align_corners=False); sizes are (H, W).
    """
    maps = maps[..., : input_size[0], : input_size[1]]
    if tuple(maps.shape[-2:]) != tuple(original_size):
        maps = F.interpolate(maps, tuple(original_size), mode="bilinear", align_corners=False)
    return maps
