"""pathosam: nucleus segmentation in histopathology images with PathoSAM.

Main entry points: :func:`load_model` and the :class:`PathoSAM` model it returns. The heavy
modules (torch) are imported on first use, so ``pathosam --help`` starts fast.
"""

from __future__ import annotations

import os

# Large torch buffers on transparent huge pages: fewer page faults on the attention-score and
# activation buffers, measured 7-8 % per ViT-B tile (docs/benchmarks.md). torch's allocator reads
# this at its first large allocation (checked: also when torch was imported first); a value set by
# the user is kept.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"
__all__ = [
    "ImageEmbeddings", "PathoSAM", "Segmentation", "ais_from_maps", "load_model", "segment", "segment_nuclei",
    "__version__",
]

_LAZY = {
    "ImageEmbeddings": "embeddings", "PathoSAM": "predictor", "load_model": "predictor", "ais_from_maps": "instances",
    "segment": "automatic", "segment_nuclei": "automatic", "Segmentation": "automatic",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'pathosam' has no attribute {name!r}")
