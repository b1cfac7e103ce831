"""Numerical precision of inference: fp32 (the reference), bf16, fp16, or auto.

``fp32`` computes everything in float32 and reproduces the reference outputs. ``bf16`` / ``fp16``
run the matmuls and convolutions of the image encoder and the UNETR decoders in that dtype
(weights converted once, :class:`LowPrecisionWeights`), while the numerically sensitive parts
stay float32: the ViT's residual stream, layer / instance / batch norms and their statistics,
attention softmax and the relative-position terms, and every map handed to post-processing
(watershed inputs are float32). The prompt path (prompt encoder + mask decoder, milliseconds a
prompt) stays float32: in bf16 it moved the reference model's masks below IoU 0.97.

``auto`` picks bf16 where the hardware computes it natively (a CPU with AMX or AVX512-BF16, a
CUDA GPU with bf16) and fp32 elsewhere: bf16 on a CPU without those instructions is emulated
and slower than fp32. fp16 is for CUDA only (CPUs have no fast fp16 matmuls).
"""

from __future__ import annotations

import functools
import sys
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # torch is imported where it is used: the CLI parser reads PRECISIONS without it
    import torch
    from torch import nn

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
#: CPU flags (``/proc/cpuinfo``) of instructions that compute bf16 natively.
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` (empty where there is none, e.g. macOS)."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where there is none)."""
    return frozenset(_cpuinfo().get("flags", "").split())


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, as ``lscpu`` shows it), else the platform's."""
    import platform

    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def dtype_of(precision: Precision) -> torch.dtype:
    """The torch dtype of a concrete precision ("fp32", "bf16", "fp16")."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def native_bf16(device: torch.device | str = "cpu") -> str | None:
    """What computes bf16 natively on ``device``: a CPU flag (``"amx_bf16"``,
    ``"avx512_bf16"``), ``"cuda"``, or None when bf16 would be emulated (slower than fp32)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return "cuda" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else None
    if device.type != "cpu":
        return None
    flags = cpu_flags()
    return next((f for f in NATIVE_BF16_FLAGS if f in flags), None)


def resolve_precision(precision: str | None, device: torch.device | str = "cpu") -> Precision:
    """The concrete precision ("fp32", "bf16" or "fp16") of ``precision`` on ``device``.

    None means "fp32"; "auto" is bf16 where :func:`native_bf16` finds native support, else fp32.
    Raises ValueError for an unknown name and for fp16 on a device other than CUDA.
    """
    import torch

    device = torch.device(device)
    if precision is None:
        return "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"precision 'fp16' needs a CUDA device (got {device.type}: fp16 matmuls are "
                         "emulated there, ~100x slower than fp32); use 'bf16' or 'auto'")
    return precision  # type: ignore[return-value]


class LowPrecisionWeights:
    """Low-precision copies of the matmul / convolution weights of some modules, made once.

    :meth:`use` points those parameters at the copies of a dtype (made on first use, layout kept:
    channels-last convolution weights stay channels-last) or back at the float32 originals,
    which are never modified: switching back to fp32 is exact. Everything else (norms,
    positional tables) stays float32. The modules' ``forward`` cast their inputs to their
    weights' dtype, so a module follows its weights.
    """

    def __init__(self, modules: list[nn.Module]) -> None:
        import torch
        from torch import nn

        # the modules whose weight and bias carry the heavy arithmetic
        cast_types = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)
        self.params = [p for m in modules for sub in m.modules() if isinstance(sub, cast_types)
                       for p in (sub.weight, sub.bias) if p is not None]
        self.originals = [p.data for p in self.params]
        self.copies: dict[torch.dtype, list[torch.Tensor]] = {}
        self.dtype = torch.float32

    def use(self, dtype: torch.dtype) -> None:
        """Point the parameters at their ``dtype`` copies (float32: the originals)."""
        import torch

        if dtype == self.dtype:
            return
        if dtype == torch.float32:
            data = self.originals
        else:
            if dtype not in self.copies:
                self.copies[dtype] = [t.to(dtype) for t in self.originals]
            data = self.copies[dtype]
        for p, t in zip(self.params, data):
            p.data = t
        self.dtype = dtype


#: Measured speed-up of bf16 over fp32 on a CPU with that bf16 instruction (same machine and run;
#: docs/benchmarks.md, "Precision"). None: not measured on such a CPU yet.
MEASURED_BF16_SPEEDUP: dict[str, str | None] = {
    "avx512_bf16": "1.7x faster per ViT-B tile, 1.1-1.6x with pathosam_small",  # AMD EPYC, 2026-12-02
    "amx_bf16": None,
}


def bf16_hint(precision: str, device: torch.device | str = "cpu") -> str | None:
    """A one-line note when the hardware computes bf16 natively but ``precision`` does not use it."""
    if precision != "fp32":
        return None
    native = native_bf16(device)
    if native is None:
        return None
    speedup = MEASURED_BF16_SPEEDUP.get(native)
    measured = f"measured {speedup} on such a CPU" if speedup else "speed-up not yet measured on such hardware"
    return (f"this {'GPU' if native == 'cuda' else 'CPU'} computes bf16 natively ({native}): --precision bf16 "
            f"({measured}; nuclei agree with fp32 at mSA >= 0.98, docs/benchmarks.md)")


def describe(precision: Precision, device: torch.device | str = "cpu") -> str:
    """One line for logs: the precision and, for bf16, whether the hardware computes it natively."""
    if precision != "bf16":
        return precision
    native = native_bf16(device)
    return f"bf16 ({native})" if native else "bf16 (emulated: no native bf16 on this device, slower than fp32)"


def platform_note() -> str:
    """The CPU's relevant flags for benchmark records (``avx2 avx512f avx512_bf16 amx_bf16``)."""
    flags = cpu_flags()
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8")
    have = [f for f in wanted if f in flags]
    return " ".join(have) if have else f"flags unknown ({sys.platform})"
