"""Write the bundled weight files of ``pathosam_small`` from training checkpoints (float16).

    # the SAM + AIS decoder of a joint run -> {model_state, decoder_state}
    python scripts/export_weights.py model RUN/checkpoints/iter_N.pt pathosam/weights/pathosam_small.pt
    # the class head of a semantic run -> the decoder's state dict (reference key names)
    python scripts/export_weights.py semantic RUN/checkpoints/iter_N.pt pathosam/weights/pathosam_small_classes.pt

Prints the file's xxh128 (the registry's hash). Floating-point tensors are stored as float16
(half the size; the model computes in float32 after loading), other tensors as they are.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def _half(state: dict) -> dict:
    return {k: (v.half() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in state.items()}


def main() -> None:
    from pathosam.models.checkpoint import read_checkpoint
    from pathosam.registry import file_hash

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["model", "semantic"])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("out", type=Path)
    args = ap.parse_args()
    if args.what == "semantic":
        ck = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
        if "semantic_decoder_state" not in ck:
            raise SystemExit(f"{args.checkpoint}: not a semantic training checkpoint (no semantic_decoder_state)")
        obj = _half(ck["semantic_decoder_state"])
    else:
        ck = read_checkpoint(args.checkpoint)
        if ck.sam_state is None or ck.decoder_state is None:
            raise SystemExit(f"{args.checkpoint}: needs SAM and AIS decoder weights")
        obj = {"model_state": _half(ck.sam_state), "decoder_state": _half(ck.decoder_state)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, args.out)
    print(f"{args.out}: {args.out.stat().st_size / 2**20:.1f} MB, xxh128:{file_hash(args.out)}")


if __name__ == "__main__":
    main()
