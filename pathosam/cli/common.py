"""What every subcommand shares: exit codes, usage errors, one-line errors, the model options,
the output-folder check."""

from __future__ import annotations

import argparse
import sys

from .. import registry
from ..precision import PRECISIONS

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

PROG = "pathosam"


class UsageError(Exception):
    """A user error detected after parsing (e.g. an unknown model name): exit status 2."""


def error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def checked_output_dir(path: str) -> None:
    """Create the output folder ``path`` and check it is writable, before any work: a bad ``-o``
    is a usage error naming the path and the cause (exit 2)."""
    from ..io import prepare_output_dir

    try:
        prepare_output_dir(path)
    except OSError as err:
        raise UsageError(str(err)) from None


def pair(text: str) -> tuple[int, int]:
    parts = text.replace("x", ",").split(",")
    if len(parts) == 1:
        parts = parts * 2
    try:
        a, b = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or N,M (e.g. 384 or 384,384), got {text!r}") from None
    return a, b


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """``--model`` / ``--checkpoint`` / ``--decoder`` / ``--device``, shared by model commands."""
    p.add_argument("-m", "--model", default=None,
                   help="registry name or weights file (default: the embedded small model pathosam_small; "
                        "vit_b_histopathology for the published PathoSAM ViT-B)")
    p.add_argument("-c", "--checkpoint", help="weights file in any reference layout (overrides --model)")
    p.add_argument("--decoder", help="separate instance-decoder file")
    p.add_argument("-d", "--device", default="auto", help="cpu, cuda, mps or auto (default)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch CPU threads (default: one per core; fewer when other programs keep the cores "
                        "busy, see docs/benchmarks.md)")
    add_precision_argument(p)


def add_precision_argument(p: argparse.ArgumentParser) -> None:
    """``--precision fp32|bf16|fp16|auto`` (:mod:`pathosam.precision`)."""
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="arithmetic of the encoder and decoders: fp32 (default, the reference's), bf16 "
                        "(faster on CPUs with AMX / AVX512-BF16 and on GPUs; nuclei agree with fp32 at "
                        "mSA >= 0.98, docs/benchmarks.md), fp16 (CUDA only), auto (bf16 where the "
                        "hardware computes it natively, else fp32)")


def check_precision(args: argparse.Namespace) -> None:
    """``--precision`` on ``--device``: a usage error (e.g. fp16 on a CPU) before anything is loaded."""
    from ..precision import resolve_precision
    from ..predictor import resolve_device

    try:
        resolve_precision(args.precision, resolve_device(args.device))
    except ValueError as err:
        raise UsageError(f"--precision: {err}") from None


def load_model_from_args(args: argparse.Namespace, classes: bool = False):
    """The model named by ``--model``/``--checkpoint``/``--decoder`` (+ a semantic decoder when
    ``classes``: ``--semantic-decoder FILE`` or the registry model's own)."""
    from ..predictor import load_model

    name = args.checkpoint or args.model
    if name is None:
        name = registry.DEFAULT_MODEL
        if not getattr(args, "quiet", False):
            print(f"using the embedded model {name} (small, fast on CPU; docs/models.md); "
                  "--model vit_b_histopathology for the published PathoSAM", file=sys.stderr)
    semantic = None
    if classes:
        semantic = getattr(args, "semantic_decoder", None)
        if semantic is None:
            entry = registry.get(name) if registry.is_registered(name) else None
            if entry is None or not entry.semantic_decoder:
                raise UsageError(f"--classes needs a semantic decoder: {name!r} has none registered; "
                                 "pass --semantic-decoder FILE (or use --model vit_b_histopathology)")
            semantic = True
    check_precision(args)
    threads = getattr(args, "threads", None)
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads must be >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)
    return load_model(name, decoder=args.decoder, semantic_decoder=semantic, device=args.device,
                      progress=not getattr(args, "quiet", False), precision=args.precision,
                      class_scheme=getattr(args, "class_scheme", None))


